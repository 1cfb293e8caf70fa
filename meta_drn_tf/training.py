"""The training core, free of flags: `train(RunConfig(...))`.

    from meta_drn_tf.config import RunConfig
    from meta_drn_tf.training import train

    summary = train(RunConfig(model_dir="runs/x", image_size=64, width=0.25, epochs=2))

`Trainer` reads top to bottom: `__init__` sets up the strategy, the data, the
learner and its checkpoints (resuming the latest one); `run` alternates
`train_epoch` and `validate` until the last epoch, then `finish` evaluates the
best checkpoint on the test classes beside a random-initialisation baseline
and exports it. The learning-rate schedules are small objects with two hooks.

Resume: task t of the stream is a pure function of (seed, t), so the data
position is the global step, which the checkpoint holds with the weights, the
optimizer and the schedule state; a run killed at any moment and started again
ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from meta_drn_tf import distribute, hardware, serving, visualize
from meta_drn_tf.config import FLAGS_FILE, RunConfig
from meta_drn_tf.data.episodes import BankTensors, training_tasks
from meta_drn_tf.errors import ConfigError, NonFiniteLoss, Stopped
from meta_drn_tf.evaluation import METRICS, evaluate_bank, evaluate_settings, write_reports
from meta_drn_tf.hardware import bfloat16_is_emulated
from meta_drn_tf.meta.learner import TASK_COUNT_KEY
from meta_drn_tf.runlock import LOCK_FILE, RunLock
from meta_drn_tf.runs import build_learner, load_splits, random_init_learner
from meta_drn_tf.stopping import StopRequest, StopSignal

# Settings that define the network and its weights: a run cannot resume under others.
MODEL_SETTINGS = ("algo", "image_size", "width", "lslr", "per_step_norm")
# Settings whose change makes a resumed run differ from an uninterrupted one.
RUN_SETTINGS = MODEL_SETTINGS + ("data_dir", "shots", "queries", "meta_batch_size", "seed", "tasks_per_epoch",
                                 "synthetic_classes", "synthetic_images", "inner_steps", "inner_lr")


class RunDirectory:
    """Every path of a training run, spelled once."""

    def __init__(self, root: str):
        self.root = root
        self.config = os.path.join(root, FLAGS_FILE)
        self.checkpoints = os.path.join(root, "checkpoints")
        self.best = os.path.join(root, "best")
        self.test = os.path.join(root, "test")
        self.export = os.path.join(root, "export")
        self.best_model = os.path.join(root, "best_model.keras")

    def logs(self, name: str) -> str:
        """TensorBoard event folder `name` ("train", "validation")."""
        return os.path.join(self.root, "logs", name)

    def clear(self) -> None:
        """Deletes the run (for --fresh), keeping the lock file its writer holds; refuses a folder
        that holds files but no run, which is not this program's to delete."""
        if not os.path.isdir(self.root):
            return
        entries = [e for e in os.listdir(self.root) if e != LOCK_FILE]
        if entries and not os.path.exists(self.config):
            raise ConfigError(f"--fresh: --model_dir {self.root} holds files but no training run ({FLAGS_FILE} is "
                              "missing); not deleting them. Give a run's directory or a new one.")
        for entry in entries:
            path = os.path.join(self.root, entry)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)

    def claim(self, config: RunConfig) -> None:
        """Saves `config` here; refuses one whose model-shaping settings differ from the saved run's."""
        if os.path.exists(self.config):
            saved = RunConfig.load(self.root)
            # LSLR rates and per-step norms have one entry per inner step.
            shaping = MODEL_SETTINGS + (("inner_steps",) if saved.lslr or saved.per_step_norm else ())
            changed = [k for k in shaping if getattr(saved, k) != getattr(config, k)]
            if changed:
                raise ConfigError(
                    f"--model_dir {self.root} holds a run with "
                    + ", ".join(f"--{k}={getattr(saved, k)}" for k in changed)
                    + " but this command has " + ", ".join(f"--{k}={getattr(config, k)}" for k in changed)
                    + ". Use another --model_dir, the run's flags, or --fresh to delete it and start afresh.")
            for k in RUN_SETTINGS:
                if getattr(saved, k) != getattr(config, k) and k not in shaping:
                    logging.warning("--%s changed from %r to %r: the resumed run will differ from the original",
                                    k, getattr(saved, k), getattr(config, k))
        config.save(self.root)


class TrainState(tf.Module):
    """Where training stands; checkpointed with the learner."""

    def __init__(self):
        super().__init__(name="train_state")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.best = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_val_soft_iou")
        self.wait = tf.Variable(0, dtype=tf.int64, trainable=False, name="plateau_wait")
        self.bad_batches = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_batches")


# ----- learning-rate schedules ---------------------------------------------------------------
class Schedule:
    """The meta learning rate over training: `before_step` and `after_validation` hooks."""

    def before_step(self, learning_rate: tf.Variable, global_step: int) -> None:
        """Called before every meta-step."""

    def after_validation(self, learning_rate: tf.Variable, epochs_without_improvement: int) -> bool:
        """Called after every validation; True when it changed the rate (the wait count restarts)."""
        return False


class Plateau(Schedule):
    """Multiply by `factor` when validation has not improved for more than `patience` epochs."""

    def __init__(self, patience: int, factor: float):
        self.patience, self.factor = patience, factor

    def after_validation(self, learning_rate, epochs_without_improvement):
        if epochs_without_improvement <= self.patience:
            return False
        learning_rate.assign(float(learning_rate.numpy()) * self.factor)
        print(f"  validation soft IoU has not improved for {self.patience} epochs: "
              f"meta_lr -> {float(learning_rate.numpy()):.3g}")
        return True


class Linear(Schedule):
    """From `start` to `end` linearly over `total_steps` meta-steps (Reptile's schedule in the paper)."""

    def __init__(self, start: float, end: float, total_steps: int):
        self.start, self.end, self.total_steps = start, end, max(1, total_steps)

    def before_step(self, learning_rate, global_step):
        learning_rate.assign(self.start + (self.end - self.start) * min(1.0, global_step / self.total_steps))


class Cosine(Linear):
    """From `start` to `end` along a half cosine over `total_steps` meta-steps (MAML++)."""

    def before_step(self, learning_rate, global_step):
        progress = min(1.0, global_step / self.total_steps)
        learning_rate.assign(self.end + 0.5 * (self.start - self.end) * (1 + math.cos(math.pi * progress)))


def make_schedule(config: RunConfig, total_steps: int) -> Schedule:
    """The schedule `config.lr_schedule` names."""
    if config.lr_schedule == "plateau":
        return Plateau(config.lr_patience, config.lr_factor)
    if config.lr_schedule == "linear":
        return Linear(config.meta_lr, config.min_meta_lr, total_steps)
    if config.lr_schedule == "cosine":
        return Cosine(config.meta_lr, config.min_meta_lr, total_steps)
    return Schedule()


def tensorboard_tag(metric: str) -> str:
    """TensorBoard's name of an evaluation metric: IoU means over classes are mIoU."""
    return "m" + metric if metric.startswith("iou@") else metric


# ----- the trainer ---------------------------------------------------------------------------
class Trainer:
    """Meta-trains, validates, checkpoints and finally tests and exports one run (`train` makes one).

    Args:
        config: the run.
        stops: the signal handlers in force; the loop stops cleanly when they record a signal.
        resources: where the trainer registers what must be released when training ends, however
            it ends: the run directory's lock, a worker's scratch folders.
    """

    def __init__(self, config: RunConfig, stops: StopRequest, resources: contextlib.ExitStack):
        self.config = config
        config.check_paths()  # before any work
        self.dirs = RunDirectory(config.model_dir)
        self.stops = stops
        self.resources = resources  # the run's lock and scratch folders, released when training ends
        self._start_strategy()
        self._load_data()
        self.learner = build_learner(config, self.strategy)
        self.schedule = make_schedule(config, self.steps_per_epoch * config.epochs)
        self._start_checkpoints()
        self.writer, self.val_writer = self._summary_writer("train"), self._summary_writer("validation")
        self.bank_tensors = BankTensors(self.train_bank)
        self.last_save = time.time()
        self.phase = None
        self._window, self._bar = [], None  # the meta-steps whose logs are not fetched yet

    def _start_strategy(self) -> None:
        config = self.config
        if config.deterministic:
            tf.config.experimental.enable_op_determinism()
        distribute.split_cpu(config.cpu_devices)
        self.strategy = distribute.make_strategy(config.strategy, config.collective_timeout_s)
        self.chief = distribute.is_chief(self.strategy)
        self.per_replica = distribute.tasks_per_replica(config.meta_batch_size, self.strategy)
        self._check_gpu()
        if self.chief:  # the one writer; other workers write nothing into the run
            self.resources.enter_context(RunLock(self.dirs.root))
            if config.fresh:
                self.dirs.clear()
            self.dirs.claim(config)
        if config.precision == "bfloat16" and bfloat16_is_emulated():
            logging.warning("--precision=bfloat16 on a CPU without AVX512-BF16/AMX: TensorFlow emulates it, "
                            "about 15x slower than float32 here (see README, Benchmarks). Use float32.")

    def _check_gpu(self) -> None:
        """Says when CUDA is installed but no GPU is usable (an error with --require_gpu)."""
        problem = hardware.gpu_problem()
        if self.config.require_gpu and not tf.config.list_physical_devices("GPU"):
            why = problem or "no CUDA libraries are installed: pip install -e '.[and-cuda]'"
            raise ConfigError(f"--require_gpu: no usable GPU ({why}); training would run on the CPU")
        if problem:
            logging.warning("%s: training runs on the CPU (pass --require_gpu to stop instead)", problem)

    def _load_data(self) -> None:
        config = self.config
        # Every split the run will read, decoded now: a bad file stops the run before training, not after.
        self.banks = load_splits(config, ("train", "val", "test") if config.test_at_end and self.chief
                                 else ("train", "val"))
        self.train_bank, self.val_bank = self.banks["train"], self.banks["val"]
        tasks_per_epoch = config.tasks_per_epoch or int(self.train_bank.counts.sum())
        self.steps_per_epoch = max(1, tasks_per_epoch // config.meta_batch_size)
        print(f"train: {self.train_bank.num_classes} classes, validation: {self.val_bank.num_classes} classes; "
              f"{self.steps_per_epoch} meta-steps of {config.meta_batch_size} tasks per epoch "
              f"on {self.strategy.num_replicas_in_sync} replica(s)")

    def _start_checkpoints(self) -> None:
        # On the host: the loop reads and bumps these every step, and reading a GPU variable would
        # wait for the step in flight (a host sync per step).
        with tf.device("/CPU:0"):
            self.state = TrainState()
        self.checkpoint = tf.train.Checkpoint(learner=self.learner, state=self.state)
        # Non-chief workers write their (required) share of a save to a scratch dir.
        self.scratch = None if self.chief else tempfile.mkdtemp(prefix="worker_ckpt_")
        if self.scratch:
            for scratch in (self.scratch, self.scratch + "_best"):
                self.resources.callback(shutil.rmtree, scratch, ignore_errors=True)
        latest_dir = self.dirs.checkpoints if self.chief else self.scratch
        best_dir = self.dirs.best if self.chief else self.scratch + "_best"
        self.latest = tf.train.CheckpointManager(self.checkpoint, latest_dir, max_to_keep=2)
        self.best = tf.train.CheckpointManager(self.checkpoint, best_dir, max_to_keep=1, checkpoint_name="best")
        # Every worker resumes from the chief's checkpoint (shared storage across machines).
        resume_from = tf.train.latest_checkpoint(self.dirs.checkpoints)
        if resume_from:
            self.checkpoint.restore(resume_from).assert_existing_objects_matched()
            print(f"Resuming {resume_from}: epoch {int(self.state.epoch) + 1}, "
                  f"step {int(self.state.step)} of {self.steps_per_epoch}")
        self.preemption = self._preemption_handler()

    def _preemption_handler(self):
        """Multi-worker runs: TensorFlow's PreemptionCheckpointHandler, which takes SIGTERM over.

        SIGTERM on any worker makes every worker stop after the same meta-step, save (the chief
        into the run, the others into their scratch folders) and exit with EXIT_PREEMPTED.
        """
        resolver = getattr(self.strategy, "cluster_resolver", None)
        if not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy) or not (
                resolver and resolver.cluster_spec().jobs):
            return None

        def exit_fn():
            raise Stopped(self._stopped_message("SIGTERM"), preempted=True)

        termination = tf.distribute.experimental.TerminationConfig(exit_fn=exit_fn, save_fn=self._save_stopped)
        # Restoring the chief's checkpoint first (above) gives every worker the same step count.
        return tf.distribute.experimental.PreemptionCheckpointHandler(resolver, self.latest,
                                                                      termination_config=termination)

    def _summary_writer(self, name: str):
        if not self.chief:
            return tf.summary.create_noop_writer()
        return tf.summary.create_file_writer(self.dirs.logs(name))

    def save(self, manager: tf.train.CheckpointManager, why: str) -> str:
        """A checkpoint of the current state; never of non-finite weights."""
        if not all(np.isfinite(v.numpy()).all() for v in self.learner.meta_variables):
            raise NonFiniteLoss(f"weights are not finite; not saving ({why}). "
                                f"Last good checkpoint: {self.latest.latest_checkpoint}")
        return manager.save(checkpoint_number=int(self.state.global_step))

    # ----- training ------------------------------------------------------------------------
    def run(self) -> dict:
        """Trains the remaining epochs, then `finish`; returns the final summary (empty on workers).

        A SIGTERM or SIGINT (`self.stops`) ends it after the meta-step in progress, or at once during
        validation, with a checkpoint of where it stands: `errors.Stopped`.
        """
        while int(self.state.epoch) < self.config.epochs:
            self.train_epoch()
            self._stop_if_requested()
            try:
                with self.stops.interruptible():
                    summary = self.validate()
            except StopSignal:  # validation changes no state: the trained epoch is saved as it is
                self._stop_if_requested()
            self.end_epoch(summary)
            self._stop_if_requested()
        if not self.chief:
            return {}
        try:
            with self.stops.interruptible():
                return self.finish()
        except StopSignal as stop:  # the training itself is saved: only the test and export are lost
            raise Stopped(f"{stop}: stopped during the final test and export; the training is complete "
                          f"({self.latest.latest_checkpoint}). Run the same command again to redo them.",
                          self.stops.preempted) from None

    def _stop_if_requested(self) -> None:
        """After a signal: the pending logs checked, a checkpoint saved, `errors.Stopped` raised."""
        if not self.stops.requested:
            return
        self._save_stopped()
        raise Stopped(self._stopped_message(signal.Signals(self.stops.signum).name), self.stops.preempted)

    def _save_stopped(self) -> None:
        self._fetch_logs(self._bar)
        self.save(self.latest, "stopped")

    def _stopped_message(self, signal_name: str) -> str:
        return (f"{signal_name}: stopped at epoch {int(self.state.epoch) + 1}, step {int(self.state.step)} of "
                f"{self.steps_per_epoch}, and saved {self.latest.latest_checkpoint}. Run the same command again "
                "to resume.")

    def _batches(self):
        """The distributed meta-batches of the rest of this epoch."""
        config, per_replica = self.config, self.per_replica
        start_step, remaining = int(self.state.global_step), self.steps_per_epoch - int(self.state.step)

        def dataset_fn(context: tf.distribute.InputContext):
            local_replicas = context.num_replicas_in_sync // context.num_input_pipelines
            ids, counts = distribute.replica_task_ids(start_step, remaining, config.meta_batch_size,
                                                      context.num_replicas_in_sync, local_replicas,
                                                      context.input_pipeline_id)
            tasks = training_tasks(self.bank_tensors, config.shots, config.queries, seed=config.seed, task_ids=ids)
            batches = tf.data.Dataset.zip(tasks.batch(per_replica, drop_remainder=True), counts)
            return batches.map(lambda batch, count: {**batch, TASK_COUNT_KEY: count}).prefetch(tf.data.AUTOTUNE)

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def train_epoch(self) -> None:
        """The meta-steps left in the current epoch, with a progress bar and mid-epoch checkpoints.

        The step's logs stay on the device until every `log_every_steps` steps (and before a
        checkpoint): then the window's logs come back in one fetch, which checks every step's
        finiteness, updates the bar's figures and writes TensorBoard's scalars. A device that
        runs ahead of the host is never stopped to read one step's loss.
        """
        epoch = int(self.state.epoch)
        print(f"Epoch {epoch + 1}/{self.config.epochs}")
        self._announce_phase(epoch)
        bar = keras.utils.Progbar(self.steps_per_epoch, stateful_metrics=["tasks/s", "meta_lr"], unit_name="step")
        self._bar = bar
        if int(self.state.step):
            bar.update(int(self.state.step))
        self._window, self._window_start = [], time.time()
        for batch in self._batches():
            if self.stops.requested:
                return
            self.schedule.before_step(self.learner.optimizer.learning_rate, int(self.state.global_step))
            step = self.learner.meta_train_step
            self._window.append(self.preemption.run(step, batch, epoch) if self.preemption else step(batch, epoch))
            self.state.step.assign_add(1)
            self.state.global_step.assign_add(1)
            at_end = int(self.state.step) == self.steps_per_epoch
            if at_end or int(self.state.global_step) % self.config.log_every_steps == 0:
                self._fetch_logs(bar)
            else:
                bar.update(int(self.state.step))
            self._maybe_save_mid_epoch(bar)

    def _fetch_logs(self, bar: keras.utils.Progbar) -> None:
        """The pending steps' logs in one fetch: finiteness checked step by step, the bar and
        TensorBoard updated with the last step's figures."""
        if not self._window:
            return
        window, self._window = self._window, []
        fetched = {k: np.asarray(tf.stack([logs[k] for logs in window])) for k in ("loss", "grad_norm", "finite")}
        now = time.time()
        step_time, self._window_start = (now - self._window_start) / len(window), now
        first_step = int(self.state.step) - len(window)
        for i in np.flatnonzero(fetched["finite"] < 0.5):
            self._non_finite(first_step + int(i))
        lr = float(self.learner.optimizer.learning_rate.numpy())
        loss = float(fetched["loss"][-1])
        bar.update(int(self.state.step), [("loss", loss), ("tasks/s", self.config.meta_batch_size / step_time),
                                          ("meta_lr", lr)])
        self._log_step(loss, float(fetched["grad_norm"][-1]), lr, step_time)

    def _announce_phase(self, epoch: int) -> None:
        """Says what the meta-step computes at the start and whenever MAML++'s annealing switches it."""
        phase = self.learner.phase(epoch)
        if phase != self.phase:
            self.phase = phase
            print(f"  meta-gradient: {'second' if phase.second_order else 'first'} order; meta-loss: "
                  + ("weighted query losses of every inner step" if phase.multi_step_loss else "final query loss"))

    def _non_finite(self, step: int) -> None:
        """A non-finite meta-step at (0-based) `step` of this epoch: its update was skipped in the graph."""
        self.state.bad_batches.assign_add(1)
        if not self.config.skip_nonfinite:
            raise NonFiniteLoss(
                f"non-finite loss at epoch {int(self.state.epoch) + 1}, step {step + 1}; its update "
                f"was not applied and nothing was saved. Last good checkpoint: {self.latest.latest_checkpoint}. "
                "Lower --meta_lr/--inner_lr, or pass --skip_nonfinite to skip such batches.")
        logging.warning("skipped a meta-batch with a non-finite loss (%d so far)", int(self.state.bad_batches))

    def _log_step(self, loss: float, grad_norm: float, lr: float, step_time: float) -> None:
        step = int(self.state.global_step)
        with self.writer.as_default(step=step):
            tf.summary.scalar("loss", loss)
            tf.summary.scalar("grad_norm", grad_norm)
            tf.summary.scalar("meta_lr", lr)
            tf.summary.scalar("step_time_s", step_time)
            tf.summary.scalar("tasks_per_s", self.config.meta_batch_size / step_time)
            tf.summary.scalar("bad_batches", int(self.state.bad_batches))
            # LSLR: one curve per weight tensor and inner step.
            weights = self.learner.model.trainable_variables
            for i, rates in zip(self.learner.adapted, self.learner.step_rates):
                for s, rate in enumerate(rates.numpy()):
                    tf.summary.scalar(f"inner_lr/{weights[i].path}/step{s + 1}", float(rate))
            if self.learner.alphas:
                alpha = tf.concat([tf.reshape(a, [-1]) for a in self.learner.alphas], 0)
                tf.summary.scalar("alpha/mean", float(tf.reduce_mean(alpha)))
                tf.summary.scalar("alpha/abs_mean", float(tf.reduce_mean(tf.abs(alpha))))
                tf.summary.scalar("alpha/min", float(tf.reduce_min(alpha)))
                tf.summary.scalar("alpha/max", float(tf.reduce_max(alpha)))
                tf.summary.histogram("alpha/values", alpha)

    def _maybe_save_mid_epoch(self, bar: keras.utils.Progbar) -> None:
        every = self.config.save_every_steps
        due = (every and int(self.state.global_step) % every == 0) or \
            time.time() - self.last_save > 60 * self.config.save_every_minutes
        if due and int(self.state.step) < self.steps_per_epoch:
            self._fetch_logs(bar)  # every saved step checked first
            self.save(self.latest, "mid-epoch")
            self.last_save = time.time()

    # ----- validation ----------------------------------------------------------------------
    def validate(self) -> dict:
        """The evaluation protocol on the validation classes; TensorBoard scalars and a picture."""
        result, kept = evaluate_bank(self.learner, self.val_bank, self.config.shots, self.config.val_episodes or None,
                                     inner_steps=self.config.eval_inner_steps, keep_predictions=4)
        summary = result.summary()
        print("  validation: " + "  ".join(f"{tensorboard_tag(m)} {summary[m]:.4f}" for m in ("loss",) + METRICS))
        with self.val_writer.as_default(step=int(self.state.global_step)):
            for metric in ("loss",) + METRICS:
                tf.summary.scalar(tensorboard_tag(metric), summary[metric])
            tf.summary.scalar("epoch", int(self.state.epoch) + 1)
            tf.summary.image("tasks", visualize.episode_grid(kept)[None], max_outputs=1,
                             description="support (green mask) | queries: prediction (red, IoU) and truth (blue)")
        self.writer.flush(), self.val_writer.flush()
        return summary

    def end_epoch(self, summary: dict) -> None:
        """Tracks the best validation soft IoU (the paper's monitor), steps the schedule, checkpoints."""
        soft = summary["soft_iou"]
        improved = soft > float(self.state.best) + 1e-6
        if improved:
            self.state.best.assign(soft)
            self.state.wait.assign(0)
        else:
            self.state.wait.assign_add(1)
            if self.schedule.after_validation(self.learner.optimizer.learning_rate, int(self.state.wait)):
                self.state.wait.assign(0)
        self.state.epoch.assign_add(1)
        self.state.step.assign(0)
        if improved:
            self.save(self.best, "best")
        self.save(self.latest, "end of epoch")
        self.last_save = time.time()

    # ----- the end -------------------------------------------------------------------------
    def finish(self) -> dict:
        """The best checkpoint: saved as .keras, tested beside a random-init baseline, exported."""
        config = self.config
        final = {"best_val_soft_iou": float(self.state.best), "epochs": int(self.state.epoch),
                 "checkpoint": self.best.latest_checkpoint}
        self.checkpoint.restore(self.best.latest_checkpoint or self.latest.latest_checkpoint)
        keras.saving.save_model(self.learner.model, self.dirs.best_model)
        if config.test_at_end:
            baseline = random_init_learner(config) if config.baseline_at_end else None
            results = evaluate_settings(self.learner, baseline, self.banks["test"], [config.shots], progress=True,
                                        inner_steps=config.eval_inner_steps)
            rows = list(write_reports(results, self.dirs.test).values())
            final["test"] = rows[0]
            if baseline is not None:
                final["test_random_init"] = rows[1]
            print(f"test: mIoU@0.5 {final['test']['iou@0.5']:.4f}  mIoU@0.35 {final['test']['iou@0.35']:.4f} "
                  f"(reports in {self.dirs.test})")
        if config.export_at_end:
            final["export"] = serving.export(self.learner, self.dirs.export, config.image_size, config.width,
                                             inner_steps=config.eval_inner_steps,
                                             kernels="cpu" if config.kernels == "cpu" else "stock")
            print(f"SavedModel: {final['export']}")
        return final


def train(config: RunConfig) -> dict:
    """Runs (or resumes) the training `config` describes; returns the final summary.

    Holds the run directory's lock (`runlock.RunLock`) throughout, and stops cleanly on SIGTERM
    and SIGINT (`Trainer.run`; from the main thread only, where Python allows signal handlers).
    """
    with contextlib.ExitStack() as resources:
        stops = resources.enter_context(StopRequest())
        try:
            with stops.interruptible():
                trainer = Trainer(config, stops, resources)
        except StopSignal as stop:
            raise Stopped(f"{stop}: stopped while starting, before any training; nothing to save",
                          stops.preempted) from None
        return trainer.run()
