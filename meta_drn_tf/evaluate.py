"""Evaluate a trained run like the paper's Table I.

    python -m meta_drn_tf.evaluate --model_dir=runs/maml [--data_dir=/data/fss1000] [--split=test] [--shots=1]

Adapts on each support with the trained inner loop (or --inner_steps /
--inner_lr for a different test-time loop), predicts the queries and reports
mIoU at thresholds 0.5 and 0.35 and the soft IoU, each with a 95% confidence
interval, beside a baseline row: the same adaptation from a randomly
initialised network. Writes table.md, per_class.csv and summary.json.
"""

from __future__ import annotations

import os

from absl import app, flags, logging

flags.DEFINE_string("model_dir", None, "A training run's directory.", required=True)
flags.DEFINE_string("data_dir", None, "Dataset (default: the run's; empty string: the synthetic dataset).")
flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Which classes to evaluate on.")
flags.DEFINE_integer("shots", None, "Support images per episode (default: the run's).")
flags.DEFINE_integer("inner_steps", None, "Test-time inner steps (default: the run's).")
flags.DEFINE_float("inner_lr", None, "Test-time inner rate (default: the run's; Meta-SGD uses its learned rates).")
flags.DEFINE_integer("episodes", 0, "Evaluate at most this many episodes, evenly spread (0: all).")
flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint of the run.")
flags.DEFINE_bool("baseline", True, "Also evaluate the same adaptation from a random initialisation.")
flags.DEFINE_string("out_dir", None, "Where the reports go (default: MODEL_DIR/eval_<split>).")

FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from meta_drn_tf import runs
    from meta_drn_tf.evaluation import evaluate_bank, write_reports

    learner, cfg = runs.restore_learner(FLAGS.model_dir, FLAGS.checkpoint, data_dir=FLAGS.data_dir, shots=FLAGS.shots)
    bank = runs.load(cfg, FLAGS.split)
    steps = FLAGS.inner_steps or cfg.get("eval_inner_steps")
    limit = FLAGS.episodes or None
    print(f"Evaluating {cfg['algo']} on {bank.num_classes} {FLAGS.split} classes")
    result, _ = evaluate_bank(learner, bank, cfg["shots"], limit, steps, FLAGS.inner_lr, progress=True)
    baseline = None
    if FLAGS.baseline:
        print("Baseline: the same adaptation from a random initialisation")
        random_learner = runs.build_learner({**cfg, "seed": cfg["seed"] + 1})
        baseline, _ = evaluate_bank(random_learner, bank, cfg["shots"], limit, steps, FLAGS.inner_lr, progress=True)
    out_dir = FLAGS.out_dir or os.path.join(FLAGS.model_dir, f"eval_{FLAGS.split}")
    write_reports(result, baseline, out_dir, title=f"Meta-DRN, {cfg['algo']}")
    print(f"Reports in {out_dir}")


if __name__ == "__main__":
    app.run(main)
