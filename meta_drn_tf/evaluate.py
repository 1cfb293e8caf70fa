"""Evaluate a trained run like the paper's Table I, or the way the field reports its benchmarks.

    python -m meta_drn_tf.evaluate --model_dir=runs/maml [--data_dir=/data/fss1000] [--split=test|all]
        [--classes_file=FILE] [--shots=1,5] [--inner_steps=5 --inner_lr=1e-2]
    python -m meta_drn_tf.evaluate --model_dir=runs/maml --protocol=paper,hsnet      # both tables
    python -m meta_drn_tf.evaluate --model_dir=runs/maml --dataset=pascal5i --fold=0 --data_dir=/data/VOC2012

Adapts on each support with the trained inner loop (or --inner_steps /
--inner_lr for a different test-time loop) and predicts the queries. The
paper's protocol (`paper`) scores every image of a split (or of --dataset)
as the support once and reports mIoU at thresholds 0.5 and 0.35 and the soft
IoU, each with a 95% confidence interval (table.md, per_class.csv,
summary.json). The field's (`hsnet`: HSNet, VAT, DCAMA, Matcher, PATNet)
draws seeded random episodes of --dataset and reports mIoU as summed
intersection over summed union per class and FB-IoU, ± the standard deviation
over --runs seeds (table_hsnet.md, per_class_hsnet.csv, summary_hsnet.json).
Each --shots value is one row, beside a baseline row (the same adaptation from
a randomly initialised network) and the copied example mask's.
"""

from __future__ import annotations

import hashlib
import os

from absl import flags

from meta_drn_tf import cli
from meta_drn_tf.cli import shared_flags
from meta_drn_tf.errors import ConfigError

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The flags of `python -m meta_drn_tf.evaluate`."""
    from meta_drn_tf.data.benchmarks import DATASETS

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
    flags.DEFINE_integer("episodes", 0, "paper: evaluate at most this many episodes per row, evenly spread (0: all); "
                         "hsnet: episodes per seed (0: the field's count for --dataset).")
    flags.DEFINE_list("protocol", None, "paper (Table I, the default for FSS-1000) and/or hsnet (the field's seeded "
                      "episodes, summed-IoU mIoU and FB-IoU; the default for the other data sets).")
    flags.DEFINE_enum("dataset", None, list(DATASETS), "Which benchmark --data_dir holds, in its own layout "
                      "(docs/field.md; default: the run's).")
    flags.DEFINE_integer("fold", None, "pascal5i, coco20i: the fold (0-3) whose classes are evaluated (default: "
                         "the run's).")
    flags.DEFINE_integer("seed", 0, "hsnet: the first seed of the episodes.")
    flags.DEFINE_integer("runs", 0, "hsnet: seeds to average over, from --seed (0: the field's: 5 for deepglobe, "
                         "isic and chest_xray, else 1).")
    flags.DEFINE_bool("original_size", False, "hsnet: score the prediction upsampled to each mask's own size "
                      "(default: at the network's input size).")
    shared_flags.define_checkpoint()
    flags.DEFINE_bool("baseline", True, "Also evaluate the same adaptation from a random initialisation.")
    shared_flags.define_kernels(default=None)
    shared_flags.define_tf32()
    flags.adopt_module_key_flags(shared_flags)  # listed by --help as this command's own
    flags.DEFINE_string("out_dir", None, "Where the reports go (default: MODEL_DIR/eval_<split or classes file name>, "
                        "and with --data_dir one folder per data folder: ..._<its name>-<hash of its path>).")

    cli.check_paths(model_dir="folder", data_dir="folder", classes_file="file", out_dir="new_folder")
    flags.register_validator("episodes", lambda n: n >= 0, message="must be 0 (all) or more")
    flags.register_validator("runs", lambda n: n >= 0, message="must be 0 (the field's) or more")
    flags.register_validator("fold", lambda n: n is None or 0 <= n <= 3, message="folds are 0 to 3")
    flags.register_validator("protocol", lambda v: v is None or (v and set(v) <= {"paper", "hsnet"}),
                             message="give paper, hsnet or paper,hsnet")
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


def _protocols() -> list[str]:
    """--protocol, or its default for --dataset (the paper's for FSS-1000, the field's for the others)."""
    protocols = FLAGS.protocol or (["paper"] if FLAGS.dataset == "fss1000" else ["hsnet"])
    if FLAGS.dataset != "fss1000" and not FLAGS.data_dir:
        raise ConfigError(f"--dataset={FLAGS.dataset} needs --data_dir: where the data set is (docs/field.md)")
    return protocols


def _paper(learner, config, shots: list[int], out_dir: str) -> None:
    from meta_drn_tf.data import load_split
    from meta_drn_tf.data.benchmarks import read_benchmark, subset
    from meta_drn_tf.runs import learners
    from meta_drn_tf.training.evaluation import evaluate_settings, write_reports

    if FLAGS.dataset == "fss1000":
        bank = load_split(config.data, FLAGS.split, config.network.image_size, seed=config.seed,
                          classes_file=FLAGS.classes_file, min_images=max(shots) + 1)
    else:  # read one episode at a time: its queries are the class's other photos
        bank = read_benchmark(FLAGS.dataset, FLAGS.data_dir, FLAGS.fold)
        bank = subset(bank, FLAGS.classes_file) if FLAGS.classes_file else bank
    print(f"Evaluating {config.meta.algorithm} on {bank.num_classes} classes ({_which()}), "
          + ", ".join(f"{k}-shot" for k in shots) + ", the paper's protocol")
    baseline = learners.random_init_learner(config) if FLAGS.baseline else None
    results = evaluate_settings(learner, baseline, bank, shots, progress=True, limit=FLAGS.episodes or None,
                                inner_steps=FLAGS.inner_steps or config.trainer.eval_inner_steps,
                                inner_lr=FLAGS.inner_lr, image_size=config.network.image_size)
    write_reports(results, out_dir)


def _field(learner, config, shots: list[int], out_dir: str) -> None:
    from meta_drn_tf.data.benchmarks import read_benchmark, read_fss1000, subset
    from meta_drn_tf.runs import learners
    from meta_drn_tf.training.benchmark_evaluation import evaluate_field_settings, write_reports

    if FLAGS.dataset == "fss1000":
        root = config.data.data_dir if FLAGS.data_dir is None else FLAGS.data_dir
        if not root:
            raise ConfigError("--protocol=hsnet reads image files: give --data_dir (this run trained on the "
                              "synthetic set, which has none)")
        benchmark = read_fss1000(root, "all" if FLAGS.classes_file else FLAGS.split, config.data.split_files,
                                 config.data.validation_list)
    else:
        benchmark = read_benchmark(FLAGS.dataset, FLAGS.data_dir, FLAGS.fold)
    if FLAGS.classes_file:
        benchmark = subset(benchmark, FLAGS.classes_file)
    seeds = list(range(FLAGS.seed, FLAGS.seed + (FLAGS.runs or benchmark.seeds)))
    print(f"Evaluating {config.meta.algorithm} on {benchmark.name} ({len(benchmark.samples)} classes), "
          + ", ".join(f"{k}-shot" for k in shots) + ", the field's protocol (hsnet)")
    baseline = learners.random_init_learner(config) if FLAGS.baseline else None
    rows, results = evaluate_field_settings(
        learner, baseline, benchmark, shots, config.network.image_size, seeds, episodes=FLAGS.episodes or None,
        original_size=FLAGS.original_size, inner_steps=FLAGS.inner_steps or config.trainer.eval_inner_steps,
        inner_lr=FLAGS.inner_lr, progress=True)
    write_reports(benchmark.name, rows, results, out_dir)


def _which() -> str:
    """What the reports' folder is named after: the class list, the split, or the data set and fold."""
    if FLAGS.classes_file:
        return os.path.splitext(os.path.basename(FLAGS.classes_file))[0]
    if FLAGS.dataset == "fss1000":
        return FLAGS.split
    return f"{FLAGS.dataset}_fold{FLAGS.fold}" if FLAGS.dataset in ("pascal5i", "coco20i") else FLAGS.dataset


def _defaults_from_the_run() -> None:
    """--dataset and --fold default to the run's, and so does --data_dir for a run's own PASCAL-5i or COCO-20i."""
    from meta_drn_tf.runs.config import RunConfig

    data = RunConfig.load(FLAGS.model_dir).data
    FLAGS.dataset = FLAGS.dataset or data.dataset
    FLAGS.fold = data.fold if FLAGS.fold is None else FLAGS.fold
    if FLAGS.dataset != "fss1000" and FLAGS.dataset == data.dataset and FLAGS.data_dir is None:
        FLAGS.data_dir = data.data_dir


def main(argv):
    del argv
    from meta_drn_tf.runs import learners

    _defaults_from_the_run()
    protocols = _protocols()
    data_dir = FLAGS.data_dir if FLAGS.dataset == "fss1000" else None  # the run's own data otherwise
    learner, config = learners.restore_learner(FLAGS.model_dir, FLAGS.checkpoint, data_dir=data_dir,
                                               kernels=FLAGS.kernels)
    shots = [int(k) for k in FLAGS.shots] if FLAGS.shots else [config.data.shots]
    out_dir = FLAGS.out_dir or default_out_dir(FLAGS.model_dir, _which(), FLAGS.data_dir)
    if "paper" in protocols:
        _paper(learner, config, shots, out_dir)
    if "hsnet" in protocols:
        _field(learner, config, shots, out_dir)
    print(f"Reports in {out_dir}")


if __name__ == "__main__":
    cli.run(main, define_flags)
