"""What is done with what training produces: actions, each small and alone (in the manner of orbit).

An action is a callable on one output: a step action on a logged meta-step's `StepOutput`, an
epoch action on a validated epoch's `EpochOutput`, an end action on the trained learner (returning
what it adds to the run's final summary). The `Controller` calls the lists it is given in order;
a new hook is one more callable in a list (`train(config, epoch_actions=[...])`).

- `TrainingScalars` (step): a meta-step's figures into TensorBoard (and LSLR / Meta-SGD rates).
- `ValidationReport` (epoch): validation's line, scalars and a grid of adapted tasks in TensorBoard.
- `Flush` (epoch): a TensorBoard writer's buffer to its file.
- `BestMetric` decides whether an epoch is the best so far; `SaveBest` (epoch) checkpoints it.
- `FinalTest` (end): the best checkpoint on the test classes beside a random-initialisation baseline.
- `Export` (end): a TF Serving SavedModel of the best checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import tensorflow as tf

from meta_drn_tf.data.bank import ImageBank
from meta_drn_tf.data.benchmarks import Benchmark
from meta_drn_tf.meta import MetaLearner
from meta_drn_tf.network.config import NetworkConfig
from meta_drn_tf.results import visualize
from meta_drn_tf.results.metrics import THRESHOLDS
from meta_drn_tf.serving import saved_model
from meta_drn_tf.training.benchmark_evaluation import evaluate_field_settings
from meta_drn_tf.training.benchmark_evaluation import write_reports as field_reports
from meta_drn_tf.training.checkpoints import Checkpoints
from meta_drn_tf.training.evaluation import METRICS, SUMMED_METRICS, evaluate_settings, write_reports


@dataclasses.dataclass(frozen=True)
class StepOutput:
    """A logged meta-step, as its actions see it (the last step of a window of fetched logs).

    Attributes:
        global_step: meta-steps done so far.
        loss, grad_norm: the step's meta-loss and meta-gradient norm.
        meta_lr: the meta learning rate it used.
        step_time: seconds per step over the window; tasks_per_s: tasks a second over it.
        bad_batches: non-finite steps skipped so far (`--skip_nonfinite`).
        overflows: float16 loss-scale overflows so far in this process; loss_scale: the step's.
    """

    global_step: int
    loss: float
    grad_norm: float
    meta_lr: float
    step_time: float
    tasks_per_s: float
    bad_batches: int = 0
    overflows: int = 0
    loss_scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class EpochOutput:
    """A validated epoch, as its actions see it.

    Attributes:
        global_step: meta-steps done so far.
        epoch: the epoch just finished (1-based).
        summary: validation's summary (`EvalResult.summary`: "soft_iou", "iou@0.5", "loss", ...).
        kept: a few adapted validation tasks with their predictions (for pictures).
        improved: whether it is the best epoch so far (`BestMetric`).
    """

    global_step: int
    epoch: int
    summary: dict
    kept: list
    improved: bool


StepAction = Callable[[StepOutput], None]
EpochAction = Callable[[EpochOutput], None]


def tensorboard_tag(metric: str) -> str:
    """TensorBoard's name of an evaluation metric: IoU means over classes are mIoU."""
    return "m" + metric if metric.startswith("iou@") else metric


class TrainingScalars:
    """Step action: a meta-step's figures into TensorBoard's "train" run."""

    def __init__(self, writer, learner):
        self.writer, self.learner = writer, learner

    def __call__(self, output: StepOutput) -> None:
        with self.writer.as_default(step=output.global_step):
            for name, value in (("loss", output.loss), ("grad_norm", output.grad_norm), ("meta_lr", output.meta_lr),
                                ("step_time_s", output.step_time), ("tasks_per_s", output.tasks_per_s),
                                ("bad_batches", output.bad_batches)):
                tf.summary.scalar(name, value)
            if self.learner.config.precision == "float16":
                tf.summary.scalar("float16/loss_scale", output.loss_scale)
                tf.summary.scalar("float16/overflows", output.overflows)
            self._learned_rates()

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
    """Epoch action: prints validation's figures and writes them, with a picture of adapted tasks, to
    TensorBoard."""

    def __init__(self, writer):
        self.writer = writer

    def __call__(self, output: EpochOutput) -> None:
        summary = output.summary
        bad = summary.get("non_finite_queries", 0)
        shown = ("loss",) + METRICS + (f"fb_iou@{THRESHOLDS[0]}",)
        print("  validation: " + "  ".join(f"{tensorboard_tag(m)} {summary[m]:.4f}" for m in shown)
              + (f"  ({bad} queries with non-finite predictions, scored 0)" if bad else ""))
        with self.writer.as_default(step=output.global_step):
            for metric in ("loss",) + METRICS + SUMMED_METRICS:  # the paper's scores, then the field's
                tf.summary.scalar(tensorboard_tag(metric), summary[metric])
            tf.summary.scalar("non_finite_queries", bad)
            tf.summary.scalar("epoch", output.epoch)
            tf.summary.image("tasks", visualize.episode_grid(output.kept)[None], max_outputs=1,
                             description="support (green mask) | queries: prediction (red, IoU) and truth (blue)")
        self.writer.flush()


class Flush:
    """Epoch action: writes what `writer` buffered to its event file (TensorBoard shows the epoch whole)."""

    def __init__(self, writer):
        self.writer = writer

    def __call__(self, output: EpochOutput) -> None:
        self.writer.flush()


@dataclasses.dataclass(frozen=True)
class BestMetric:
    """The test of a best epoch: validation's `metric` (the paper's monitor, soft IoU) higher than the
    best so far by more than `min_delta` (rounding is no improvement)."""

    metric: str = "soft_iou"
    min_delta: float = 1e-6

    def improves(self, summary: dict, best: float) -> bool:
        return summary[self.metric] > best + self.min_delta


class SaveBest:
    """Epoch action: the commit of a best epoch, a checkpoint in the run's best series."""

    def __init__(self, checkpoints: Checkpoints):
        self.checkpoints = checkpoints

    def __call__(self, output: EpochOutput) -> None:
        if output.improved:
            self.checkpoints.save("best", "best")


class FinalTest:
    """End action: the learner on the test classes, beside the same adaptation from a random initialisation.

    Args:
        bank: the test classes: an ImageBank (the paper's protocol), or a Benchmark (PASCAL-5i, COCO-20i:
            the field's protocol, its seeded episodes from `seed`).
        out_dir: where the reports go (table.md, ...; table_hsnet.md, ... for a Benchmark).
        shots: support images per episode.
        inner_steps: test-time inner steps (None: training's).
        baseline: the random-initialisation learner, or None for no baseline row.
        image_size: the network's input size (a Benchmark's photos are resized to it).
        seed: the first seed of a Benchmark's episodes.
    """

    def __init__(self, bank: ImageBank | Benchmark, out_dir: str, shots: int, inner_steps: int | None,
                 baseline: MetaLearner | None = None, image_size: int = 224, seed: int = 0):
        self.bank, self.out_dir, self.shots = bank, out_dir, shots
        self.inner_steps, self.baseline = inner_steps, baseline
        self.image_size, self.seed = image_size, seed

    def __call__(self, learner) -> dict:
        if isinstance(self.bank, Benchmark):
            return self._field(learner)
        results = evaluate_settings(learner, self.baseline, self.bank, [self.shots], progress=True,
                                    inner_steps=self.inner_steps)
        final = self._final(list(write_reports(results, self.out_dir).values()))
        print(f"test: mIoU@0.5 {final['test']['iou@0.5']:.4f}  mIoU@0.35 {final['test']['iou@0.35']:.4f} "
              f"(reports in {self.out_dir})")
        return final

    def _field(self, learner) -> dict:
        rows, results = evaluate_field_settings(learner, self.baseline, self.bank, [self.shots], self.image_size,
                                                list(range(self.seed, self.seed + self.bank.seeds)),
                                                inner_steps=self.inner_steps, progress=True)
        field_reports(self.bank.name, rows, results, self.out_dir)
        final = self._final(list(rows.values()))
        print(f"test ({self.bank.name}, the field's protocol): mIoU@0.5 {final['test']['miou@0.5']:.4f}  "
              f"FB-IoU@0.5 {final['test']['fb_iou@0.5']:.4f} (reports in {self.out_dir})")
        return final

    def _final(self, rows: list[dict]) -> dict:
        """The final summary's entries: the learner's test row, and the baseline's after it."""
        return {"test": rows[0], **({"test_random_init": rows[1]} if self.baseline is not None else {})}


class Export:
    """End action: a TF Serving SavedModel of the learner in the next free version folder of `export_dir`."""

    def __init__(self, export_dir: str, network: NetworkConfig, inner_steps: int | None, kernels: str):
        self.export_dir, self.network = export_dir, network
        self.inner_steps, self.kernels = inner_steps, kernels

    def __call__(self, learner) -> dict:
        path = saved_model.export(learner, self.export_dir, self.network, inner_steps=self.inner_steps,
                                  kernels=self.kernels)
        print(f"SavedModel: {path}")
        return {"export": path}
