"""Draw the paper's Fig. 4 for a trained run: support with its mask in green, each
query with the predicted mask in red and its IoU.

    python tools/draw_fig4.py --model_dir=runs/quickstart --out=fig4.png [--data_dir=...] [--split=test|all]
        [--classes_file=FILE] [--classes=5] [--queries=4]
"""

from __future__ import annotations

from absl import flags

from meta_drn_tf import cli

flags.DEFINE_string("model_dir", None, "A training run's directory.", required=True)
flags.DEFINE_string("out", "fig4.png", "PNG to write.")
flags.DEFINE_string("data_dir", None, "Dataset (default: the run's).")
flags.DEFINE_enum("split", "test", ["train", "val", "test", "all"], "Which classes (all: every class).")
flags.DEFINE_string("classes_file", None, "Draw the classes listed in this file (one a line) instead of --split.")
flags.DEFINE_integer("classes", 5, "Rows (one class each).")
flags.DEFINE_integer("queries", 4, "Queries per row.")
flags.DEFINE_float("threshold", 0.5, "Mask threshold.")
FLAGS = flags.FLAGS
cli.check_paths(model_dir="folder", out="new_file", data_dir="folder", classes_file="file")
flags.register_validator("classes", lambda n: n >= 1, message="must be at least 1")
flags.register_validator("queries", lambda n: n >= 1, message="must be at least 1")
flags.register_validator("threshold", lambda t: 0 < t < 1, message="must lie strictly between 0 and 1")


def main(argv):
    del argv
    from meta_drn_tf.data import load_split
    from meta_drn_tf.results import visualize
    from meta_drn_tf.runs import learners
    from meta_drn_tf.training.evaluation import evaluate_bank

    learner, config = learners.restore_learner(FLAGS.model_dir, data_dir=FLAGS.data_dir)
    bank = load_split(config.data, FLAGS.split, config.network.image_size, seed=config.seed, progress=False,
                      classes_file=FLAGS.classes_file)
    bank = bank.subset(bank.class_names[: FLAGS.classes])
    # The first evaluation episode of each class: its first labelled image is the support.
    _, episodes = evaluate_bank(learner, bank, config.data.shots, inner_steps=config.trainer.eval_inner_steps,
                                episodes_per_class=1, keep_predictions=FLAGS.classes)
    visualize.save_png(FLAGS.out, visualize.episode_grid(episodes, FLAGS.queries, truth=False,
                                                         threshold=FLAGS.threshold))
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    cli.run(main)
