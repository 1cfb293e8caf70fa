"""`Adapter` and `MetaLearner`: adapt a Keras model to a support set, predict; meta-train it.

    learner = MetaLearner(build_meta_drn(224), MetaConfig(algorithm="maml"))
    fast = learner.adapt(support_images, support_masks)
    probabilities = learner.predict(fast, query_images)
    logs = learner.meta_train_step(task_batch)

`Adapter` is the adaptation side alone - θ, Meta-SGD's learned rates α and
the inner loop, no optimizer - which is what an export serves; `MetaLearner`
adds the meta-optimizer and the compiled meta-train step.

Fast weights are plain tensors passed through Keras 3 `stateless_call`; the
model's variables are never assigned during adaptation, so second-order
gradients flow through the inner loop (nested GradientTapes).

Inside `meta_train_step` the tasks of a meta-batch are processed one after the
other (a `tf.while_loop` with `parallel_iterations=1`) and their meta-gradients
accumulated, so peak memory does not grow with the meta-batch size. Under a
`tf.distribute` strategy every replica does this for its share of the tasks;
gradients are divided by the *global* meta-batch size and summed across
replicas by the optimizer, which gives the same update as one device.

BatchNorm: the network normalises with per-image statistics
(`InstanceNorm`), so adaptation, meta-training and serving behave the same
and a query's mask never depends on the other images of its batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras
import tensorflow as tf

from meta_drn_tf.meta import algorithms
from meta_drn_tf.metrics import THRESHOLDS, bce_loss, binary_iou, full_precision, soft_iou

PRECISION_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
TASK_KEYS = ("support_images", "support_masks", "query_images", "query_masks")


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """Algorithm settings.

    Attributes:
        algorithm: "maml", "fomaml", "metasgd" or "reptile".
        inner_lr: α, the inner-loop SGD rate (Meta-SGD: the initial value of
            its learned per-weight rates).
        inner_steps: inner SGD steps; None means the algorithm's default (the
            paper's: 1; Reptile 5) and reads back as that number.
        meta_lr: β, the meta-optimizer's (AdamW) learning rate.
        weight_decay: AdamW's decoupled weight decay.
        precision: "float32", "bfloat16" or "float16" (with dynamic loss
            scaling). Losses, fast-weight updates and meta-updates stay float32.
        jit_compile: compile the meta-train step with XLA.
    """

    algorithm: str = "maml"
    inner_lr: float = 1e-3
    inner_steps: int | None = None
    meta_lr: float = 1e-3
    weight_decay: float = 1e-2
    precision: str = "float32"
    jit_compile: bool = False

    def __post_init__(self):
        if self.algorithm not in algorithms.ALGORITHMS:
            raise ValueError(f"algorithm must be one of {sorted(algorithms.ALGORITHMS)}, got {self.algorithm!r}")
        if self.precision not in PRECISION_POLICIES:
            raise ValueError(f"precision must be one of {sorted(PRECISION_POLICIES)}, got {self.precision!r}")
        if self.inner_steps is None:
            object.__setattr__(self, "inner_steps", algorithms.ALGORITHMS[self.algorithm].default_inner_steps)
        if self.inner_steps < 1:
            raise ValueError(f"inner_steps must be >= 1, got {self.inner_steps}")

    @property
    def dtype_policy(self) -> str:
        return PRECISION_POLICIES[self.precision]


class Adapter(tf.Module):
    """A Keras segmentation model and its inner loop: adapt to a support set, predict, evaluate.

    Holds θ (the model's weights) and Meta-SGD's learned rates α; no optimizer.

    Args:
        model: maps images `(n, H, W, 3)` to foreground logits `(n, H, W, 1)`;
            build it with `dtype=config.dtype_policy` for mixed precision.
        config: the algorithm settings.
    """

    def __init__(self, model: keras.Model, config: MetaConfig = MetaConfig()):
        super().__init__(name="meta_learner")
        self.model = model
        self.config = config
        self.algorithm = algorithms.ALGORITHMS[config.algorithm]()
        self.alphas = self.algorithm.create_extra_variables(model, config)
        self.loss_scale = tf.Variable(
            2.0**15 if config.precision == "float16" else 1.0, trainable=False, name="loss_scale"
        )
        self._eval_fn = tf.function(self._evaluate_batch, reduce_retracing=True)

    # ----- weights -------------------------------------------------------
    def initial_weights(self) -> list[tf.Tensor]:
        """θ as tensors (the meta-learned initialisation)."""
        return [tf.convert_to_tensor(v) for v in self.model.trainable_variables]

    def inner_rates(self, inner_lr: float | None = None) -> list[tf.Tensor | float]:
        """The inner-loop rate of each weight: α (or `inner_lr` if given), or Meta-SGD's learned tensors."""
        if self.alphas:
            return [tf.convert_to_tensor(a) for a in self.alphas]
        return [self.config.inner_lr if inner_lr is None else inner_lr] * len(self.model.trainable_variables)

    # ----- forward, loss, adaptation ---------------------------------------
    def logits(self, weights: Sequence[tf.Tensor], images: tf.Tensor) -> tf.Tensor:
        """Foreground logits of `images` under `weights` (float32)."""
        non_trainable = [tf.convert_to_tensor(v) for v in self.model.non_trainable_variables]
        logits, _ = self.model.stateless_call(list(weights), non_trainable, images, training=False)
        return full_precision(logits)

    def loss(self, weights: Sequence[tf.Tensor], images: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
        return bce_loss(self.logits(weights, images), masks)

    def gradients(self, tape: tf.GradientTape, loss: tf.Tensor, sources) -> list[tf.Tensor]:
        """d loss / d sources, with the float16 loss scale applied and removed."""
        if self.config.precision != "float16":
            return tape.gradient(loss, sources)
        # Seeding backprop with the scale is scaling the loss, after the fact.
        scale = tf.cast(self.loss_scale, loss.dtype)
        return [g / tf.cast(scale, g.dtype) for g in tape.gradient(loss, sources, output_gradients=scale)]

    def inner_loop(
        self,
        weights: Sequence[tf.Tensor],
        images: tf.Tensor,
        masks: tf.Tensor,
        inner_steps: int,
        rates: Sequence[tf.Tensor | float],
        second_order: bool,
    ) -> tuple[list[tf.Tensor], tf.Tensor]:
        """`inner_steps` SGD steps from `weights` on (images, masks): w <- w - rate * dL/dw.

        With `second_order` the inner gradients stay differentiable (for an
        enclosing tape); otherwise they are constants (first-order methods).
        Returns the adapted weights and the loss of the last step (before it).
        """
        weights = list(weights)
        for _ in range(inner_steps):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(weights)
                loss = self.loss(weights, images, masks)
            grads = self.gradients(tape, loss, weights)
            if not second_order:
                grads = [tf.stop_gradient(g) for g in grads]
            weights = [w - r * g for w, r, g in zip(weights, rates, grads)]
        return weights, loss

    def adapt(
        self,
        support_images: tf.Tensor,
        support_masks: tf.Tensor,
        inner_steps: int | None = None,
        inner_lr: float | None = None,
    ) -> list[tf.Tensor]:
        """Fast weights adapted to a support set `(k, H, W, 3)`, `(k, H, W, 1)`.

        Args:
            inner_steps: inner steps (default: the training setting).
            inner_lr: inner rate (default: α; Meta-SGD always uses its learned rates).
        """
        return self.inner_loop(self.initial_weights(), support_images, support_masks,
                               inner_steps or self.config.inner_steps, self.inner_rates(inner_lr),
                               second_order=False)[0]

    def predict(self, fast_weights: Sequence[tf.Tensor], images: tf.Tensor) -> tf.Tensor:
        """Foreground probabilities `(n, H, W, 1)` of `images` under `fast_weights`."""
        return tf.sigmoid(self.logits(fast_weights, images))

    # ----- evaluation ----------------------------------------------------
    def evaluate_step(self, task_batch, inner_steps: int | None = None,
                      inner_lr: float | None = None) -> dict[str, tf.Tensor]:
        """Adapts to each task's support and scores its queries.

        Returns per-task `loss` `(B,)` and per-query `soft_iou`, `iou@0.5`,
        `iou@0.35` `(B, q)`, plus `probabilities` `(B, q, H, W, 1)`.
        """
        batch = {k: tf.convert_to_tensor(task_batch[k], tf.float32) for k in TASK_KEYS}
        return self._eval_fn(batch, tf.constant(inner_steps or self.config.inner_steps), self.inner_rates(inner_lr))

    def _evaluate_batch(self, batch, inner_steps, rates):
        theta = self.initial_weights()

        def one_task(task):
            support_images, support_masks, query_images, query_masks = task
            # The inner-step count is a tensor so one trace serves any count.
            fast = tf.while_loop(
                lambda i, w: i < inner_steps,
                lambda i, w: (i + 1, self.inner_loop(w, support_images, support_masks, 1, rates, False)[0]),
                (tf.constant(0), theta),
            )[1]
            logits = self.logits(fast, query_images)
            probabilities = tf.sigmoid(logits)
            scores = [soft_iou(probabilities, query_masks)]
            scores += [binary_iou(probabilities, query_masks, t) for t in THRESHOLDS]
            return bce_loss(logits, query_masks), tf.stack(scores), probabilities

        loss, scores, probabilities = tf.map_fn(
            one_task,
            tuple(batch[k] for k in TASK_KEYS),
            fn_output_signature=(tf.float32, tf.float32, tf.float32),
            parallel_iterations=1,
        )
        logs = {"loss": loss, "soft_iou": scores[:, 0], "probabilities": probabilities}
        for j, t in enumerate(THRESHOLDS):
            logs[f"iou@{t}"] = scores[:, j + 1]
        return logs


class MetaLearner(Adapter):
    """An `Adapter` plus a meta-optimizer and the compiled meta-train step.

    Args:
        model: as for `Adapter`.
        config: the algorithm settings.
        optimizer: the meta-optimizer; default AdamW(config.meta_lr).
        strategy: a tf.distribute strategy whose scope holds the model's
            variables (default: the current one).
    """

    def __init__(
        self,
        model: keras.Model,
        config: MetaConfig = MetaConfig(),
        optimizer: keras.optimizers.Optimizer | None = None,
        strategy: tf.distribute.Strategy | None = None,
    ):
        strategy = strategy or tf.distribute.get_strategy()
        with strategy.scope():
            super().__init__(model, config)
            self.strategy = strategy
            self.optimizer = optimizer or keras.optimizers.AdamW(
                learning_rate=config.meta_lr, weight_decay=config.weight_decay
            )
            self.good_steps = tf.Variable(0, trainable=False, dtype=tf.int64, name="good_steps")
            if self.alphas and hasattr(self.optimizer, "exclude_from_weight_decay"):
                # Decay would pull Meta-SGD's learned rates towards zero.
                self.optimizer.exclude_from_weight_decay(var_list=self.alphas)
            self.optimizer.build(self.meta_variables)
        self.trace_count = 0
        self._train_fn = tf.function(self._distributed_train_step, jit_compile=config.jit_compile)

    @property
    def meta_variables(self) -> list[tf.Variable]:
        """What the meta-optimizer updates: θ (and Meta-SGD's α)."""
        return list(self.model.trainable_variables) + list(self.alphas)

    # ----- meta-training -------------------------------------------------
    def meta_train_step(self, task_batch) -> dict[str, tf.Tensor]:
        """One meta-update from a meta-batch of tasks (a dict of `(B, ...)` tensors,
        or a distributed dataset element under a strategy). Returns logs:
        "loss" (mean query loss after adaptation; Reptile: its inner-loop loss),
        "grad_norm", and "finite" (False: the update was skipped)."""
        return self._train_fn(task_batch)

    def _distributed_train_step(self, task_batch):
        grads, logs = self.strategy.run(self._replica_gradients, args=(task_batch,))
        # After the all-reduce every replica holds the same gradients: apply one
        # copy in cross-replica context (a synchronisation inside a conditional
        # in replica context is not supported by tf.distribute).
        grads = [self.strategy.experimental_local_results(g)[0] for g in grads]
        logs = {k: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in logs.items()}
        tf.cond(logs["finite"] > 0.5, lambda: self._apply(grads), lambda: self._skip())
        return logs

    def _replica_gradients(self, task_batch):
        self.trace_count += 1  # Python side effect: runs once per trace
        context = tf.distribute.get_replica_context()
        local_tasks = tf.shape(task_batch["support_images"])[0]

        def one_task(i, accumulated, loss_sum):
            task = {k: task_batch[k][i] for k in TASK_KEYS}
            grads, loss = self.algorithm.task_gradients(self, task)
            return i + 1, [a + g for a, g in zip(accumulated, grads)], loss_sum + loss

        zeros = [tf.zeros(v.shape, v.dtype) for v in self.meta_variables]
        loss_dtype = tf.float64 if self.meta_variables[0].dtype == tf.float64 else tf.float32
        _, summed, loss_sum = tf.while_loop(
            lambda i, *_: i < local_tasks, one_task, (tf.constant(0), zeros, tf.constant(0.0, loss_dtype)),
            parallel_iterations=1,  # one task at a time: memory does not grow with the meta-batch
        )
        # The mean over the global meta-batch: divide by it, sum over replicas.
        global_tasks = local_tasks * context.num_replicas_in_sync
        grads = [g / tf.cast(global_tasks, g.dtype) for g in summed]
        if context.num_replicas_in_sync > 1:
            grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        bad = tf.add_n([tf.reduce_sum(tf.cast(~tf.math.is_finite(g), tf.float32)) for g in grads])
        bad = bad + context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(~tf.math.is_finite(loss_sum), tf.float32))
        grad_norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.cast(g, tf.float32) ** 2) for g in grads]))
        return grads, {
            "loss": tf.cast(loss_sum, tf.float32) / tf.cast(local_tasks, tf.float32),
            "grad_norm": grad_norm,
            "finite": tf.cast(bad == 0, tf.float32),
        }

    def _apply(self, grads):
        self.optimizer.apply(grads, self.meta_variables)
        if self.config.precision == "float16":  # dynamic loss scaling: grow after 2000 good steps
            self.good_steps.assign_add(1)
            grow = self.good_steps >= 2000
            self.loss_scale.assign(tf.where(grow, self.loss_scale * 2.0, self.loss_scale))
            self.good_steps.assign(tf.where(grow, tf.zeros_like(self.good_steps), self.good_steps))
        return tf.constant(True)

    def _skip(self):
        if self.config.precision == "float16":
            self.loss_scale.assign(tf.maximum(self.loss_scale / 2.0, 1.0))
            self.good_steps.assign(0)
        return tf.constant(False)
