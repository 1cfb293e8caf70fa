"""The training core, free of flags: `train(RunConfig.from_flags(...))`.

    from meta_drn_tf.runs.config import RunConfig
    from meta_drn_tf.training.trainer import train

    summary = train(RunConfig.from_flags(model_dir="runs/x", image_size=64, width=0.25, epochs=2))

`Trainer` assembles a run: the strategy, the data, the learner and its
checkpoints (resuming the latest one), the `Controller` that owns the loop and
the actions it calls; at the end, `finish` tests the best checkpoint beside a
random-initialisation baseline and exports it (`training.actions`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import keras
import tensorflow as tf
from absl import logging

from meta_drn_tf import hardware
from meta_drn_tf.data import benchmark_splits, load_splits
from meta_drn_tf.errors import ConfigError, Stopped
from meta_drn_tf.runs.config import RunConfig
from meta_drn_tf.runs.directory import RunDirectory
from meta_drn_tf.runs.learners import build_learner, random_init_learner
from meta_drn_tf.runs.runlock import RunLock
from meta_drn_tf.training import distribute
from meta_drn_tf.training.actions import (
    EpochAction,
    Export,
    FinalTest,
    Flush,
    SaveBest,
    StepAction,
    TrainingScalars,
    ValidationReport,
)
from meta_drn_tf.training.checkpoints import Checkpoints, TrainState
from meta_drn_tf.training.controller import Controller
from meta_drn_tf.training.schedules import make_schedule
from meta_drn_tf.training.stopping import StopRequest, StopSignal
from meta_drn_tf.training.task import MetaTrainingTask


class Trainer:
    """Meta-trains, validates, checkpoints and finally tests and exports one run (`train` makes one).

    Args:
        config: the run.
        stops: the signal handlers in force; the loop stops cleanly when they record a signal.
        resources: where the trainer registers what must be released when training ends, however
            it ends: the run directory's lock, a worker's scratch folders.
        step_actions, epoch_actions: actions called after the run's own (`training.actions`).
    """

    def __init__(self, config: RunConfig, stops: StopRequest, resources: contextlib.ExitStack, *,
                 step_actions: Sequence[StepAction] = (), epoch_actions: Sequence[EpochAction] = ()):
        self.config, self.stops = config, stops
        self.extra_actions = list(step_actions), list(epoch_actions)
        config.check_paths()  # before any work
        self.dirs = RunDirectory(config.model_dir)
        self.strategy = self._start_strategy(resources)
        self.banks = self._load_data()
        self.learner = build_learner(config, self.strategy)
        self.task = MetaTrainingTask(config, self.learner, self.strategy, self.banks["train"], self.banks["val"])
        print(f"train: {self.banks['train'].num_classes} classes, validation: {self.banks['val'].num_classes} "
              f"classes; {self.task.steps_per_epoch} meta-steps of {config.trainer.meta_batch_size} tasks per "
              f"epoch on {self.strategy.num_replicas_in_sync} replica(s)")
        self.checkpoints = self._checkpoints(resources)
        self.controller = self._controller()

    def _start_strategy(self, resources: contextlib.ExitStack) -> tf.distribute.Strategy:
        config, runtime = self.config, self.config.runtime
        if runtime.deterministic:
            tf.config.experimental.enable_op_determinism()
        problem = hardware.precision_problem(config.meta.precision)
        if problem:  # before the run's folder is touched
            raise ConfigError(f"--precision={config.meta.precision}: {problem}")
        hardware.use_tf32(runtime.tf32)
        distribute.split_cpu(runtime.cpu_devices)
        strategy = distribute.make_strategy(runtime.strategy, runtime.collective_timeout_s)
        self.chief = distribute.is_chief(strategy)
        self._check_gpu()
        if self.chief:  # the one writer; other workers write nothing into the run
            # Before the lock file lands among someone's photos.
            self.dirs.refuse_foreign(fresh=config.trainer.fresh)
            resources.enter_context(RunLock(self.dirs.root))
            if config.trainer.fresh:
                self.dirs.clear()
            self.dirs.claim(config)
        if config.meta.precision == "bfloat16" and hardware.bfloat16_is_emulated():
            logging.warning("--precision=bfloat16 on a CPU without AVX512-BF16/AMX: TensorFlow emulates it, "
                            "many times slower than float32 (docs/performance.md). Use float32.")
        return strategy

    def _check_gpu(self) -> None:
        """Says when CUDA is installed but no GPU is usable (an error with --require_gpu)."""
        problem = hardware.gpu_problem()
        if self.config.runtime.require_gpu and not tf.config.list_physical_devices("GPU"):
            why = problem or "no CUDA libraries are installed: pip install -e '.[and-cuda]'"
            raise ConfigError(f"--require_gpu: no usable GPU ({why}); training would run on the CPU")
        if problem:
            logging.warning("%s: training runs on the CPU (pass --require_gpu to stop instead)", problem)

    def _load_data(self) -> dict:
        # Every split the run will read, decoded now: a bad file stops the run before training, not after.
        test = self.config.trainer.test_at_end and self.chief
        splits = ("train", "val", "test") if test else ("train", "val")
        if self.config.data.dataset != "fss1000":  # indexed now, read one task at a time while training
            return benchmark_splits(self.config.data, splits)
        return load_splits(self.config.data, splits, self.config.network.image_size, seed=self.config.seed)

    def _checkpoints(self, resources: contextlib.ExitStack) -> Checkpoints:
        """The run's checkpoints, with the latest one restored (resume)."""
        # On the host: the loop reads and bumps these every step, and reading a GPU variable would
        # wait for the step in flight (a host sync per step).
        with tf.device("/CPU:0"):
            state = TrainState()
        checkpoints = Checkpoints(self.learner, state, self.dirs.checkpoints, self.dirs.best_checkpoints,
                                  self.chief, resources)
        resumed = checkpoints.resume()
        if resumed:
            print(f"Resuming {resumed}: epoch {int(state.epoch) + 1}, "
                  f"step {int(state.step)} of {self.task.steps_per_epoch}")
        return checkpoints

    def _controller(self) -> Controller:
        config = self.config
        schedule = make_schedule(config.trainer, config.meta.meta_lr, self.task.steps_per_epoch * config.trainer.epochs)
        writer, val_writer = self._summary_writer("train"), self._summary_writer("validation")
        step_actions, epoch_actions = self.extra_actions
        controller = Controller(self.task, self.checkpoints, schedule, config.trainer, self.stops,
                                step_actions=[TrainingScalars(writer, self.learner), *step_actions],
                                epoch_actions=[ValidationReport(val_writer), Flush(writer), SaveBest(self.checkpoints),
                                               *epoch_actions])
        controller.handle_preemption(self.strategy)
        return controller

    def _summary_writer(self, name: str):
        if not self.chief:
            return tf.summary.create_noop_writer()
        return tf.summary.create_file_writer(self.dirs.logs(name))

    def run(self) -> dict:
        """Trains the remaining epochs, then `finish`; returns the final summary (empty on workers)."""
        self.controller.run()
        if not self.chief:
            return {}
        try:
            with self.stops.interruptible():
                return self.finish()
        except StopSignal as stop:  # the training itself is saved: only the test and export are lost
            raise Stopped(f"{stop}: stopped during the final test and export; the training is complete "
                          f"({self.checkpoints.latest.latest_checkpoint}). Run the same command again to redo "
                          "them.", self.stops.preempted) from None

    def finish(self) -> dict:
        """The best checkpoint: saved as .keras, then the end actions (test with baseline, export)."""
        state = self.checkpoints.state
        final = {"best_val_soft_iou": float(state.best), "epochs": int(state.epoch),
                 "checkpoint": self.checkpoints.best.latest_checkpoint}
        self.checkpoints.restore_best()
        keras.saving.save_model(self.learner.model, self.dirs.best_model)
        for action in self._end_actions():
            final.update(action(self.learner))
        return final

    def _end_actions(self) -> list:
        config, trainer = self.config, self.config.trainer
        actions = []
        if trainer.test_at_end:
            baseline = random_init_learner(config) if trainer.baseline_at_end else None
            actions.append(FinalTest(self.banks["test"], self.dirs.test, config.data.shots, trainer.eval_inner_steps,
                                     baseline, image_size=config.network.image_size, seed=config.seed))
        if trainer.export_at_end:
            actions.append(Export(self.dirs.export, config.network, trainer.eval_inner_steps,
                                  "cpu" if config.meta.kernels == "cpu" else "stock"))
        return actions


def train(config: RunConfig, *, step_actions: Sequence[StepAction] = (),
          epoch_actions: Sequence[EpochAction] = ()) -> dict:
    """Runs (or resumes) the training `config` describes; returns the final summary.

    Holds the run directory's lock (`runlock.RunLock`) throughout, and stops cleanly on SIGTERM
    and SIGINT (`Controller.run`; from the main thread only, where Python allows signal handlers).
    `step_actions` and `epoch_actions` are called after the run's own (`training.actions`).
    """
    with contextlib.ExitStack() as resources:
        stops = resources.enter_context(StopRequest())
        try:
            with stops.interruptible():
                trainer = Trainer(config, stops, resources, step_actions=step_actions,
                                  epoch_actions=epoch_actions)
        except StopSignal as stop:
            raise Stopped(f"{stop}: stopped while starting, before any training; nothing to save",
                          stops.preempted) from None
        return trainer.run()
