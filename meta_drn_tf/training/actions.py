"""What the controller does with what training and validation produce: each action small and alone.

- `TrainingScalars`: a meta-step's figures into TensorBoard (and LSLR / Meta-SGD rates).
- `ValidationReport`: validation's line, scalars and a grid of adapted tasks in TensorBoard.
- `KeepBest`: the best validation soft IoU (the paper's monitor) and its checkpoint.
- `FinalTest`: the best checkpoint on the test classes beside a random-initialisation baseline.
- `Export`: a TF Serving SavedModel of the best checkpoint.
"""

from __future__ import annotations

import tensorflow as tf

from meta_drn_tf import visualize
from meta_drn_tf.data.bank import ImageBank
from meta_drn_tf.meta import MetaLearner
from meta_drn_tf.serving import saved_model
from meta_drn_tf.training.checkpoints import Checkpoints, TrainState
from meta_drn_tf.training.evaluation import METRICS, evaluate_settings, write_reports


def tensorboard_tag(metric: str) -> str:
    """TensorBoard's name of an evaluation metric: IoU means over classes are mIoU."""
    return "m" + metric if metric.startswith("iou@") else metric


class TrainingScalars:
    """Writes a meta-step's figures to TensorBoard's "train" run."""

    def __init__(self, writer, learner, meta_batch_size: int):
        self.writer, self.learner, self.meta_batch_size = writer, learner, meta_batch_size

    def __call__(self, step: int, loss: float, grad_norm: float, lr: float, step_time: float,
                 bad_batches: int, overflows: int = 0, loss_scale: float = 1.0) -> None:
        """`overflows`: float16 loss-scale overflows so far in this process; `loss_scale`: the last step's."""
        with self.writer.as_default(step=step):
            for name, value in (("loss", loss), ("grad_norm", grad_norm), ("meta_lr", lr),
                                ("step_time_s", step_time), ("tasks_per_s", self.meta_batch_size / step_time),
                                ("bad_batches", bad_batches)):
                tf.summary.scalar(name, value)
            if self.learner.config.precision == "float16":
                tf.summary.scalar("float16/loss_scale", loss_scale)
                tf.summary.scalar("float16/overflows", overflows)
            self._learned_rates()

    def flush(self) -> None:
        """Writes what is buffered to the event file (at validation: TensorBoard shows the epoch whole)."""
        self.writer.flush()

    def _learned_rates(self) -> None:
        learner = self.learner
        # LSLR: one curve per weight tensor and inner step.
        weights = learner.model.trainable_variables
        for i, rates in zip(learner.adapted, learner.step_rates):
            for s, rate in enumerate(rates.numpy()):
                tf.summary.scalar(f"inner_lr/{weights[i].path}/step{s + 1}", float(rate))
        if learner.alphas:
            alpha = tf.concat([tf.reshape(a, [-1]) for a in learner.alphas], 0)
            tf.summary.scalar("alpha/mean", float(tf.reduce_mean(alpha)))
            tf.summary.scalar("alpha/abs_mean", float(tf.reduce_mean(tf.abs(alpha))))
            tf.summary.scalar("alpha/min", float(tf.reduce_min(alpha)))
            tf.summary.scalar("alpha/max", float(tf.reduce_max(alpha)))
            tf.summary.histogram("alpha/values", alpha)


class ValidationReport:
    """Prints validation's figures and writes them, with a picture of adapted tasks, to TensorBoard."""

    def __init__(self, writer):
        self.writer = writer

    def __call__(self, step: int, epoch: int, summary: dict, kept: list) -> None:
        bad = summary.get("non_finite_queries", 0)
        print("  validation: " + "  ".join(f"{tensorboard_tag(m)} {summary[m]:.4f}" for m in ("loss",) + METRICS)
              + (f"  ({bad} queries with non-finite predictions, scored 0)" if bad else ""))
        with self.writer.as_default(step=step):
            for metric in ("loss",) + METRICS:
                tf.summary.scalar(tensorboard_tag(metric), summary[metric])
            tf.summary.scalar("non_finite_queries", bad)
            tf.summary.scalar("epoch", epoch)
            tf.summary.image("tasks", visualize.episode_grid(kept)[None], max_outputs=1,
                             description="support (green mask) | queries: prediction (red, IoU) and truth (blue)")
        self.writer.flush()


class KeepBest:
    """Tracks the best validation soft IoU in the state; `save` checkpoints it into the best series."""

    def __init__(self, state: TrainState, checkpoints: Checkpoints):
        self.state, self.checkpoints = state, checkpoints

    def observe(self, summary: dict) -> bool:
        """Whether `summary` improves on the best so far (which it then becomes)."""
        soft = summary["soft_iou"]
        if soft > float(self.state.best) + 1e-6:
            self.state.best.assign(soft)
            return True
        return False

    def save(self) -> str:
        return self.checkpoints.save("best", "best")


class FinalTest:
    """The learner on the test classes, beside the same adaptation from a random initialisation.

    Args:
        bank: the test classes.
        out_dir: where table.md, per_class.csv and summary.json go.
        shots: support images per episode.
        inner_steps: test-time inner steps (None: training's).
        baseline: the random-initialisation learner, or None for no baseline row.
    """

    def __init__(self, bank: ImageBank, out_dir: str, shots: int, inner_steps: int | None,
                 baseline: MetaLearner | None = None):
        self.bank, self.out_dir, self.shots = bank, out_dir, shots
        self.inner_steps, self.baseline = inner_steps, baseline

    def __call__(self, learner) -> dict:
        results = evaluate_settings(learner, self.baseline, self.bank, [self.shots], progress=True,
                                    inner_steps=self.inner_steps)
        rows = list(write_reports(results, self.out_dir).values())
        final = {"test": rows[0]}
        if self.baseline is not None:
            final["test_random_init"] = rows[1]
        print(f"test: mIoU@0.5 {final['test']['iou@0.5']:.4f}  mIoU@0.35 {final['test']['iou@0.35']:.4f} "
              f"(reports in {self.out_dir})")
        return final


class Export:
    """A TF Serving SavedModel of the learner in the next free version folder of `export_dir`."""

    def __init__(self, export_dir: str, image_size: int, width: float, inner_steps: int | None, kernels: str):
        self.export_dir, self.image_size, self.width = export_dir, image_size, width
        self.inner_steps, self.kernels = inner_steps, kernels

    def __call__(self, learner) -> dict:
        path = saved_model.export(learner, self.export_dir, self.image_size, self.width,
                                  inner_steps=self.inner_steps, kernels=self.kernels)
        print(f"SavedModel: {path}")
        return {"export": path}
