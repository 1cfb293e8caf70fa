"""`Controller`: the training loop's cadence, in the manner of tensorflow/models' orbit.

The controller owns *when*: epochs of meta-steps, the window of steps whose logs
are fetched together, mid-epoch and end-of-epoch checkpoints, validation, and
stopping on a signal. The task (`MetaTrainingTask`) supplies *what*: the
batches, the meta-train step and validation. What is done with their results
are actions (`training.actions`): callables on each logged step's `StepOutput`
and each epoch's `EpochOutput`, given as lists.

Resume: the checkpoint holds the weights, the optimizer, the schedule state and
the global step, which is also the data position; a run killed at any moment
and started again ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from meta_drn_tf.errors import NonFiniteLoss, Stopped
from meta_drn_tf.progress import bar as progress_bar
from meta_drn_tf.runs.config import TrainerConfig
from meta_drn_tf.training.actions import BestMetric, EpochAction, EpochOutput, StepAction, StepOutput
from meta_drn_tf.training.checkpoints import Checkpoints
from meta_drn_tf.training.schedules import Schedule
from meta_drn_tf.training.stopping import StopRequest, StopSignal
from meta_drn_tf.training.task import MetaTrainingTask

# Step logs a task's learner may leave out (one without float16 loss scaling), and their values then.
OPTIONAL_LOGS = {"overflow": 0.0, "loss_scale": 1.0}


class Controller:
    """Runs a task's epochs to `config.epochs`, validating and checkpointing after each.

    Args:
        task: the steps.
        checkpoints: the run's checkpoints and the state they save.
        schedule: the meta learning rate's schedule.
        config: the cadence (epochs, log and save intervals) and the non-finite-loss policy.
        stops: the signal handlers in force; the loop stops cleanly when they record a signal.
        best: the test of a best epoch (its state is the checkpointed `TrainState.best`).
        step_actions: called in order with each logged step's `StepOutput`.
        epoch_actions: called in order with each validated epoch's `EpochOutput`, after the state
            has moved to the next epoch and before the epoch's checkpoint (so `SaveBest`'s
            checkpoint resumes at the next epoch).
    """

    def __init__(self, task: MetaTrainingTask, checkpoints: Checkpoints, schedule: Schedule, config: TrainerConfig,
                 stops: StopRequest, *, best: BestMetric = BestMetric(), step_actions: Sequence[StepAction] = (),
                 epoch_actions: Sequence[EpochAction] = ()):
        self.task, self.checkpoints, self.state = task, checkpoints, checkpoints.state
        self.schedule, self.config, self.stops = schedule, config, stops
        self.best, self.step_actions, self.epoch_actions = best, list(step_actions), list(epoch_actions)
        self.learning_rate = task.learner.optimizer.learning_rate
        self.steps_per_epoch = task.steps_per_epoch
        self.preemption = None
        self.phase = None
        self.last_save = time.time()
        self._window, self._window_start, self._bar = [], time.time(), None  # steps whose logs are not fetched
        self.overflows = 0  # float16 loss-scale overflows in this process (skipped steps, the scale halved)

    def handle_preemption(self, strategy: tf.distribute.Strategy) -> None:
        """Multi-worker runs: TensorFlow's PreemptionCheckpointHandler takes SIGTERM over.

        SIGTERM on any worker makes every worker stop after the same meta-step, save (the chief
        into the run, the others into their scratch folders) and raise `errors.Stopped`.
        """
        resolver = getattr(strategy, "cluster_resolver", None)
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or not (
                resolver and resolver.cluster_spec().jobs):
            return

        def exit_fn():
            raise Stopped(self.stopped_message("SIGTERM"), preempted=True)

        termination = tf.distribute.experimental.TerminationConfig(exit_fn=exit_fn, save_fn=self.save_stopped)
        # Every worker restored the chief's checkpoint first, so all have the same step count.
        self.preemption = tf.distribute.experimental.PreemptionCheckpointHandler(
            resolver, self.checkpoints.latest, termination_config=termination)

    def run(self) -> None:
        """Trains the remaining epochs. A SIGTERM or SIGINT ends it after the meta-step in progress,
        or at once during validation, with a checkpoint of where it stands: `errors.Stopped`."""
        while int(self.state.epoch) < self.config.epochs:
            self.train_epoch()
            self.stop_if_requested()
            try:
                with self.stops.interruptible():
                    summary, kept = self.task.validate()
            except StopSignal:  # validation changes no state: the trained epoch is saved as it is
                self.stop_if_requested()
            self.end_epoch(summary, kept)
            self.stop_if_requested()

    # ----- stopping ------------------------------------------------------------------------
    def stop_if_requested(self) -> None:
        """After a signal: the pending logs checked, a checkpoint saved, `errors.Stopped` raised."""
        if not self.stops.requested:
            return
        self.save_stopped()
        raise Stopped(self.stopped_message(signal.Signals(self.stops.signum).name), self.stops.preempted)

    def save_stopped(self) -> None:
        self._fetch_logs()
        self.checkpoints.save("latest", "stopped")

    def stopped_message(self, signal_name: str) -> str:
        return (f"{signal_name}: stopped at epoch {int(self.state.epoch) + 1}, step {int(self.state.step)} of "
                f"{self.steps_per_epoch}, and saved {self.checkpoints.latest.latest_checkpoint}. Run the same "
                "command again to resume.")

    # ----- an epoch ------------------------------------------------------------------------
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
        self._bar = progress_bar(self.steps_per_epoch, stateful_metrics=["tasks/s", "meta_lr"],
                                        unit_name="step")
        if int(self.state.step):
            self._bar.update(int(self.state.step))
        self._window, self._window_start = [], time.time()
        for batch in self.task.batches(int(self.state.global_step), self.steps_per_epoch - int(self.state.step)):
            if self.stops.requested:
                return
            self.schedule.before_step(self.learning_rate, int(self.state.global_step))
            step = self.task.train_step
            self._window.append(self.preemption.run(step, batch, epoch) if self.preemption else step(batch, epoch))
            self.state.step.assign_add(1)
            self.state.global_step.assign_add(1)
            at_end = int(self.state.step) == self.steps_per_epoch
            if at_end or int(self.state.global_step) % self.config.log_every_steps == 0:
                self._fetch_logs()
            else:
                self._bar.update(int(self.state.step))
            self._maybe_save_mid_epoch()

    def end_epoch(self, summary: dict, kept: list) -> None:
        """Tests for a best epoch, steps the schedule, runs the epoch actions, checkpoints the epoch."""
        improved = self.best.improves(summary, float(self.state.best))
        if improved:
            self.state.best.assign(summary[self.best.metric])
            self.state.wait.assign(0)
        else:
            self.state.wait.assign_add(1)
        self.state.epoch.assign_add(1)
        self.state.step.assign(0)
        output = EpochOutput(int(self.state.global_step), int(self.state.epoch), summary, kept, improved)
        for action in self.epoch_actions:
            action(output)
        # After the actions, so that validation's line comes before a plateau's note.
        if not improved and self.schedule.after_validation(self.learning_rate, int(self.state.wait)):
            self.state.wait.assign(0)
        self.checkpoints.save("latest", "end of epoch")
        self.last_save = time.time()

    # ----- within an epoch -----------------------------------------------------------------
    def _fetch_logs(self) -> None:
        """The pending steps' logs in one fetch: finiteness checked step by step, the bar and
        TensorBoard updated with the last step's figures."""
        if not self._window:
            return
        window, self._window = self._window, []
        fetched = {k: np.asarray(tf.stack([logs.get(k, OPTIONAL_LOGS.get(k)) for logs in window]))
                   for k in ("loss", "grad_norm", "finite", *OPTIONAL_LOGS)}
        now = time.time()
        step_time, self._window_start = (now - self._window_start) / len(window), now
        first_step = int(self.state.step) - len(window)
        for i in np.flatnonzero(fetched["finite"] < 0.5):
            if fetched["overflow"][i] > 0.5:
                self._overflow(first_step + int(i), float(fetched["loss_scale"][i]))
            else:
                self._non_finite(first_step + int(i))
        output = StepOutput(int(self.state.global_step), float(fetched["loss"][-1]), float(fetched["grad_norm"][-1]),
                            float(self.learning_rate.numpy()), step_time, self.config.meta_batch_size / step_time,
                            int(self.state.bad_batches), self.overflows, float(fetched["loss_scale"][-1]))
        self._bar.update(int(self.state.step), [("loss", output.loss), ("tasks/s", output.tasks_per_s),
                                                ("meta_lr", output.meta_lr)])
        for action in self.step_actions:
            action(output)

    def _announce_phase(self, epoch: int) -> None:
        """Says what the meta-step computes at the start and whenever MAML++'s annealing switches it."""
        phase = self.task.learner.phase(epoch)
        if phase != self.phase:
            self.phase = phase
            print(f"  meta-gradient: {'second' if phase.second_order else 'first'} order; meta-loss: "
                  + ("weighted query losses of every inner step" if phase.multi_step_loss else "final query loss"))

    def _non_finite(self, step: int) -> None:
        """A non-finite meta-step at (0-based) `step` of this epoch: its update was skipped in the graph."""
        self.state.bad_batches.assign_add(1)
        if not self.config.skip_nonfinite:
            raise NonFiniteLoss(
                f"non-finite loss at epoch {int(self.state.epoch) + 1}, step {step + 1}; its update was not "
                f"applied and nothing was saved. Last good checkpoint: {self.checkpoints.latest.latest_checkpoint}. "
                "Lower --meta_lr/--inner_lr, or pass --skip_nonfinite to skip such batches.")
        logging.warning("skipped a meta-batch with a non-finite loss (%d so far)", int(self.state.bad_batches))

    def _overflow(self, step: int, scale: float) -> None:
        """A float16 step at (0-based) `step` of this epoch overflowed at loss scale `scale`: dynamic loss
        scaling's normal event (Keras's LossScaleOptimizer's too). The graph skipped its update and halved
        the scale; training goes on."""
        self.overflows += 1
        logging.info("float16 overflow at epoch %d, step %d (loss scale %g): update skipped, scale halved to %g "
                     "(%d overflows so far)", int(self.state.epoch) + 1, step + 1, scale, max(scale / 2, 1.0),
                     self.overflows)

    def _maybe_save_mid_epoch(self) -> None:
        every = self.config.save_every_steps
        due = (every and int(self.state.global_step) % every == 0) or \
            time.time() - self.last_save > 60 * self.config.save_every_minutes
        if due and int(self.state.step) < self.steps_per_epoch:
            self._fetch_logs()  # every saved step checked first
            self.checkpoints.save("latest", "mid-epoch")
            self.last_save = time.time()
