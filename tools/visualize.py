"""Draw the paper's Fig. 4 for a trained run: support with its mask in green, each
query with the predicted mask in red and its IoU.

    python tools/visualize.py --model_dir=runs/quickstart --out=fig4.png [--data_dir=...] [--split=test|all]
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


def main(argv):
    del argv
    import numpy as np

    from meta_drn_tf import runs, visualize
    from meta_drn_tf.metrics import binary_iou

    learner, cfg = runs.restore_learner(FLAGS.model_dir, data_dir=FLAGS.data_dir)
    bank = runs.load(cfg, FLAGS.split, progress=False, classes_file=FLAGS.classes_file)
    rows = []
    for c in range(min(FLAGS.classes, bank.num_classes)):
        n = int(bank.counts[c])
        support = int(np.flatnonzero(bank.nonempty[c])[0])
        queries = [i for i in range(n) if i != support][: FLAGS.queries]
        images = bank.images[c].astype(np.float32) / 255.0
        masks = bank.masks[c, ..., None].astype(np.float32)
        fast = learner.adapt(images[[support]], masks[[support]], steps=cfg.get("eval_inner_steps"))
        probabilities = learner.predict(fast, images[queries]).numpy()
        ious = binary_iou(probabilities, masks[queries], FLAGS.threshold).numpy()
        rows.append(visualize.task_row(images[support], masks[support], images[queries], probabilities, ious,
                                       title=bank.class_names[c], threshold=FLAGS.threshold))
    visualize.save_png(FLAGS.out, visualize.grid(rows))
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    cli.run(main)
