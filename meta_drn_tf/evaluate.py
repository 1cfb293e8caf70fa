"""Evaluate a trained run like the paper's Table I.

    python -m meta_drn_tf.evaluate --model_dir=runs/maml [--data_dir=/data/fss1000] [--split=test|all]
        [--classes_file=FILE] [--shots=1,5] [--inner_steps=5 --inner_lr=1e-2]

Adapts on each support with the trained inner loop (or --inner_steps /
--inner_lr for a different test-time loop), predicts the queries and reports
mIoU at thresholds 0.5 and 0.35 and the soft IoU, each with a 95% confidence
interval: one row per --shots value, each beside a baseline row (the same
adaptation from a randomly initialised network). Writes table.md,
per_class.csv and summary.json.
"""

from __future__ import annotations

import hashlib
import os

from absl import flags

from meta_drn_tf import cli
from meta_drn_tf.cli import shared_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The flags of `python -m meta_drn_tf.evaluate`."""

    flags.DEFINE_string("model_dir", None, "A training run's directory.", required=True)
    flags.DEFINE_string("data_dir", None, "Dataset (default: the run's; empty string: the synthetic dataset).")
    flags.DEFINE_enum("split", "test", ["train", "val", "test", "all"],
                      "Which classes to evaluate on (all: every class).")
    flags.DEFINE_string("classes_file", None,
                        "Evaluate the classes listed in this file (one a line) instead of --split.")
    flags.DEFINE_list("shots", None, "Support images per episode; several (e.g. 1,5) give one row each "
                      "(default: the run's). Every row uses the classes with at least max(shots) + 1 images.")
    flags.DEFINE_integer("inner_steps", None, "Test-time inner steps (default: the run's).")
    flags.DEFINE_float("inner_lr", None, "Test-time inner rate (default: the run's; Meta-SGD uses its learned rates).")
    flags.DEFINE_integer("episodes", 0, "Evaluate at most this many episodes per row, evenly spread (0: all).")
    shared_flags.define_checkpoint()
    flags.DEFINE_bool("baseline", True, "Also evaluate the same adaptation from a random initialisation.")
    shared_flags.define_kernels(default=None)
    shared_flags.define_tf32()
    flags.adopt_module_key_flags(shared_flags)  # listed by --help as this command's own
    flags.DEFINE_string("out_dir", None, "Where the reports go (default: MODEL_DIR/eval_<split or classes file name>, "
                        "and with --data_dir one folder per data folder: ..._<its name>-<hash of its path>).")

    cli.check_paths(model_dir="folder", data_dir="folder", classes_file="file", out_dir="new_folder")
    flags.register_validator("episodes", lambda n: n >= 0, message="must be 0 (all) or more")
    flags.register_validator("inner_steps", lambda n: n is None or n >= 1, message="must be at least 1")
    flags.register_validator("inner_lr", lambda r: r is None or r > 0, message="must be positive")
    flags.register_validator("shots", lambda v: v is None or (v and all(k.isdigit() and int(k) >= 1 for k in v)),
                             message="give positive integers, e.g. --shots=1 or --shots=1,5")


def default_out_dir(model_dir: str, which: str, data_dir: str | None) -> str:
    """MODEL_DIR/eval_<which> for the run's own data; with another `data_dir` ("": the synthetic set),
    a folder of that data folder's own, so that evaluating two never overwrites one's reports."""
    if data_dir is None:
        return os.path.join(model_dir, f"eval_{which}")
    if not data_dir:
        return os.path.join(model_dir, f"eval_{which}_synthetic")
    path = os.path.abspath(data_dir)
    digest = hashlib.sha1(path.encode()).hexdigest()[:6]
    return os.path.join(model_dir, f"eval_{which}_{os.path.basename(path.rstrip(os.sep)) or 'root'}-{digest}")


def main(argv):
    del argv
    from meta_drn_tf.data import load_split
    from meta_drn_tf.runs import learners
    from meta_drn_tf.training.evaluation import evaluate_settings, write_reports

    learner, config = learners.restore_learner(FLAGS.model_dir, FLAGS.checkpoint, data_dir=FLAGS.data_dir,
                                           kernels=FLAGS.kernels)
    shots = [int(k) for k in FLAGS.shots] if FLAGS.shots else [config.data.shots]
    bank = load_split(config.data, FLAGS.split, config.network.image_size, seed=config.seed,
                      classes_file=FLAGS.classes_file, min_images=max(shots) + 1)
    which = os.path.splitext(os.path.basename(FLAGS.classes_file))[0] if FLAGS.classes_file else FLAGS.split
    print(f"Evaluating {config.meta.algorithm} on {bank.num_classes} classes ({which}), "
          + ", ".join(f"{k}-shot" for k in shots))
    baseline = learners.random_init_learner(config) if FLAGS.baseline else None
    results = evaluate_settings(learner, baseline, bank, shots, progress=True, limit=FLAGS.episodes or None,
                                inner_steps=FLAGS.inner_steps or config.trainer.eval_inner_steps,
                                inner_lr=FLAGS.inner_lr)
    out_dir = FLAGS.out_dir or default_out_dir(FLAGS.model_dir, which, FLAGS.data_dir)
    write_reports(results, out_dir)
    print(f"Reports in {out_dir}")


if __name__ == "__main__":
    cli.run(main, define_flags)
