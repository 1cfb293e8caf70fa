"""`MetaLearner`: an `Adapter` with a meta-optimizer and the compiled meta-train step.

    learner = MetaLearner(build_meta_drn(NetworkConfig(224)), MetaConfig(algorithm="maml"))
    logs = learner.meta_train_step(task_batch)

What a task contributes to the meta-gradient is the algorithm's
(`meta.algorithm`); the learner runs it over a meta-batch and applies the update.
Inside `meta_train_step` the tasks of a meta-batch go through a `tf.while_loop`
and their meta-gradients are accumulated: one after the other by default, so
peak memory does not grow with the meta-batch size, or `parallel_tasks` at once
where the device has the memory. Under a `tf.distribute` strategy every replica
does this for its share of the tasks (shares may differ by one: a replica's
batch carries its task count); gradients are divided by the *global* number of
tasks and summed across replicas, which gives the same update as one device.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from meta_drn_tf.meta.adamw import FusedAdamW
from meta_drn_tf.meta.adapter import TASK_KEYS, Adapter
from meta_drn_tf.meta.algorithm import Phase
from meta_drn_tf.meta.config import MetaConfig

# A replica's meta-batch may carry how many of its tasks are real (the rest pad an uneven split).
TASK_COUNT_KEY = "tasks"
# float16's dynamic loss scale: doubled after this many good steps in a row (Keras's LossScaleOptimizer's
# default), halved at an overflow, kept within [1, MAX_LOSS_SCALE] (float16's largest value is 65504,
# so a larger scale only overflows).
LOSS_SCALE_GROWTH_STEPS = 2000
MAX_LOSS_SCALE = 2.0**24


def next_loss_scale(scale: tf.Tensor, good_steps: tf.Tensor, finite: bool) -> tuple[tf.Tensor, tf.Tensor]:
    """float16's dynamic loss scale after a step: (scale, good steps in a row).

    An overflow (`finite` False) halves the scale, down to 1; `LOSS_SCALE_GROWTH_STEPS` good steps
    in a row double it, up to `MAX_LOSS_SCALE`.
    """
    if not finite:
        return tf.maximum(scale / 2.0, 1.0), tf.zeros_like(good_steps)
    good_steps = good_steps + 1
    grow = good_steps >= LOSS_SCALE_GROWTH_STEPS
    return (tf.where(grow, tf.minimum(scale * 2.0, MAX_LOSS_SCALE), scale),
            tf.where(grow, tf.zeros_like(good_steps), good_steps))


def multi_step_loss_weights(epoch: tf.Tensor | float, steps: int, anneal_epochs: int) -> tf.Tensor:
    """MAML++'s weights of the query losses after inner steps 1..N at `epoch` (they sum to 1).

    Uniform 1/N at epoch 0; the non-final weights decay linearly to 0.03/N
    over `anneal_epochs` while the final one takes up the rest.
    """
    epoch = tf.cast(epoch, tf.float32)
    decay, floor = 1.0 / steps / anneal_epochs, 0.03 / steps
    earlier = tf.fill([steps - 1], tf.maximum(1.0 / steps - epoch * decay, floor))
    last = tf.minimum(1.0 / steps + epoch * (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    return tf.concat([earlier, [last]], 0)


class MetaLearner(Adapter):
    """An `Adapter` plus a meta-optimizer and the compiled meta-train step.

    Args:
        model: as for `Adapter`.
        config: the algorithm settings.
        optimizer: the meta-optimizer; default AdamW(config.meta_lr) (`FusedAdamW`: Keras's, faster).
        strategy: a tf.distribute strategy whose scope holds the model's
            variables (default: the current one).
        device: as for `Adapter`.
        **kernel_tuning: as for `Adapter`.
    """

    def __init__(
        self,
        model: keras.Model,
        config: MetaConfig = MetaConfig(),
        optimizer: keras.optimizers.Optimizer | None = None,
        strategy: tf.distribute.Strategy | None = None,
        device: str | None = None,
        **kernel_tuning: float,
    ):
        strategy = strategy or tf.distribute.get_strategy()
        with strategy.scope():
            super().__init__(model, config, device, **kernel_tuning)
            self.strategy = strategy
            self.optimizer = optimizer or FusedAdamW(learning_rate=config.meta_lr, weight_decay=config.weight_decay)
            self.good_steps = tf.Variable(0, trainable=False, dtype=tf.int64, name="good_steps")
            rates = list(self.alphas) + list(self.step_rates)
            if rates and hasattr(self.optimizer, "exclude_from_weight_decay"):
                # Decay would pull learned inner rates towards zero.
                self.optimizer.exclude_from_weight_decay(var_list=rates)
            self.optimizer.build(self.meta_variables)
        self.trace_count = 0
        # XLA compiles what one replica computes, not the step around it: a compiled step that
        # reads every replica's variables fails under MirroredStrategy ("tf.Variable on a
        # different device", XLA's known issues); Keras compiles its replica function too.
        # The steps' loops are tf.while_loop and their branches tf.cond already: AutoGraph would only
        # rewrite the source of every function they call (a fifth of a small run's CPU time).
        self._task_sums = (tf.function(self.task_sums, jit_compile=True, autograph=False) if config.jit_compile
                           else self.task_sums)
        self._train_fn = tf.function(self._distributed_train_step, autograph=False)

    # ----- meta-training -------------------------------------------------
    def phase(self, epoch: int) -> Phase:
        """The meta-step's computation at (0-based) `epoch`: MAML++'s annealing switches."""
        return self.algorithm.phase(self.config, epoch)

    def meta_train_step(self, task_batch, epoch: int = 0) -> dict[str, tf.Tensor]:
        """One meta-update from a meta-batch of tasks (a dict of `(B, ...)` tensors, optionally with
        `"tasks"`: how many of the B are real, the rest padding; or a distributed dataset element
        under a strategy) at 0-based `epoch` (which MAML++'s annealing options read). Returns
        logs: "loss" (mean query loss after adaptation; Reptile: its inner-loop loss),
        "grad_norm", "finite" (False: the update was skipped), "loss_scale" (the scale this
        step used) and "overflow" (float16: a non-finite step with the scale still above 1, a
        normal event of dynamic loss scaling; the scale was halved)."""
        phase = self.phase(epoch)
        # The phase is Python (a new trace when it changes, once per switch); the epoch is a tensor.
        return self._train_fn(task_batch, tf.constant(epoch, tf.float32), phase.second_order, phase.multi_step_loss)

    def concrete_train_step(self, task_batch_spec: dict[str, tf.TensorSpec], epoch: int = 0):
        """The traced meta-train step for batches like `task_batch_spec` at `epoch` (graphs, op counts)."""
        phase = self.phase(epoch)
        return self._train_fn.get_concrete_function(task_batch_spec, tf.TensorSpec([], tf.float32),
                                                    phase.second_order, phase.multi_step_loss)

    def _distributed_train_step(self, task_batch, epoch, second_order, multi_step_loss):
        grads, logs = self.strategy.run(self._replica_gradients, args=(task_batch, epoch, second_order,
                                                                      multi_step_loss))
        # After the all-reduce every replica holds the same gradients: apply one
        # copy in cross-replica context (a synchronisation inside a conditional
        # in replica context is not supported by tf.distribute).
        grads = [self.strategy.experimental_local_results(g)[0] for g in grads]
        logs = {k: self.strategy.experimental_local_results(v)[0] for k, v in logs.items()}
        logs["loss_scale"] = self.loss_scale.read_value()  # before this step changes it
        bad = logs["finite"] < 0.5
        logs["overflow"] = tf.cast(bad & (logs["loss_scale"] > 1.0), tf.float32) \
            if self.config.precision == "float16" else tf.constant(0.0)
        tf.cond(bad, lambda: self._skip(), lambda: self._apply(grads))
        return logs

    def _replica_gradients(self, task_batch, epoch, second_order, multi_step_loss):
        """This replica's share of the meta-gradient, all-reduced: every replica returns the same."""
        self.trace_count += 1  # Python side effect: runs once per trace
        context = tf.distribute.get_replica_context()
        batch = {k: task_batch[k] for k in TASK_KEYS}
        tasks = task_batch.get(TASK_COUNT_KEY, tf.shape(batch["support_images"])[0])
        summed, loss_sum = self._task_sums(batch, tf.cast(tasks, tf.int32), epoch, second_order, multi_step_loss)
        # The mean over the meta-batch's real tasks, wherever they ran: sums first, then one division.
        totals = [tf.cast(tasks, tf.float32), tf.cast(loss_sum, tf.float32)]
        if context.num_replicas_in_sync > 1:
            summed, totals = context.all_reduce(tf.distribute.ReduceOp.SUM, [summed, totals])
        global_tasks, loss_total = totals
        grads = [g / tf.cast(global_tasks, g.dtype) for g in summed]
        bad = tf.add_n([tf.reduce_sum(tf.cast(~tf.math.is_finite(g), tf.float32)) for g in grads])
        bad += tf.cast(~tf.math.is_finite(loss_total), tf.float32)
        grad_norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.cast(g, tf.float32) ** 2) for g in grads]))
        finite = tf.cast(bad == 0, tf.float32)
        return grads, {"loss": loss_total / global_tasks, "grad_norm": grad_norm, "finite": finite}

    def task_sums(self, batch, tasks, epoch, second_order: bool, multi_step_loss: bool):
        """The meta-gradients of the first `tasks` tasks of `batch`, summed, and their losses' sum: what
        `jit_compile` compiles with XLA (one replica's part of the meta-step; the optimizer is outside)."""
        phase = Phase(second_order, multi_step_loss)
        loss_weights = (multi_step_loss_weights(epoch, self.config.inner_steps, self.config.multi_step_loss_epochs)
                        if multi_step_loss else None)

        def one_task(i, accumulated, loss_sum):
            task = {k: batch[k][i] for k in TASK_KEYS}
            grads, loss = self.algorithm.task_gradients(self, task, phase, loss_weights)
            return i + 1, [a + g for a, g in zip(accumulated, grads)], loss_sum + loss

        zeros = [tf.zeros(v.shape, v.dtype) for v in self.meta_variables]
        loss_dtype = tf.float64 if self.meta_variables[0].dtype == tf.float64 else tf.float32
        # One task at a time by default: memory does not grow with the meta-batch.
        parallel = self.parallel_tasks or batch["support_images"].shape[0] or 10
        _, summed, loss_sum = tf.while_loop(lambda i, *_: i < tasks, one_task,
                                            (tf.constant(0), zeros, tf.constant(0.0, loss_dtype)),
                                            parallel_iterations=parallel)
        return summed, loss_sum

    def _apply(self, grads):
        self.optimizer.apply(grads, self.meta_variables)
        self._update_loss_scale(finite=True)
        return tf.constant(True)

    def _skip(self):
        self._update_loss_scale(finite=False)
        return tf.constant(False)

    def _update_loss_scale(self, finite: bool) -> None:
        if self.config.precision == "float16":
            scale, good = next_loss_scale(self.loss_scale, self.good_steps, finite)
            self.loss_scale.assign(scale)
            self.good_steps.assign(good)
