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

Inside `meta_train_step` the tasks of a meta-batch go through a `tf.while_loop`
and their meta-gradients are accumulated: one after the other by default, so
peak memory does not grow with the meta-batch size, or `parallel_tasks` at once
where the device has the memory. Under a `tf.distribute` strategy every replica
does this for its share of the tasks (shares may differ by one: a replica's
batch carries its task count); gradients are divided by the *global* number of
tasks and summed across replicas, which gives the same update as one device.

Which forms the network's convolutions and norms take is a `kernels.KernelPolicy`,
chosen from `MetaConfig.kernels`, the device the learner runs on, the precision,
the memory mode and whether a step is second order (`Adapter.kernel_policy`), and handed
to the layers with every call.

BatchNorm: the network normalises with per-image statistics
(`InstanceNorm`), so adaptation, meta-training and serving behave the same
and a query's mask never depends on the other images of its batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras
import tensorflow as tf

from meta_drn_tf import hardware, kernels
from meta_drn_tf.config import ADAPT_LAYERS, algorithm_problems
from meta_drn_tf.meta.adamw import FusedAdamW
from meta_drn_tf.meta.algorithm import Phase, algorithm_class
from meta_drn_tf.metrics import THRESHOLDS, bce_loss, binary_iou, full_precision, soft_iou
from meta_drn_tf.model import group_of

PRECISION_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
TASK_KEYS = ("support_images", "support_masks", "query_images", "query_masks")
# A replica's meta-batch may carry how many of its tasks are real (the rest pad an uneven split).
TASK_COUNT_KEY = "tasks"


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """Algorithm settings.

    Attributes:
        algorithm: "maml", "fomaml", "metasgd" or "reptile".
        inner_lr: α, the inner-loop SGD rate (Meta-SGD and LSLR: the initial
            value of the learned rates).
        inner_steps: inner SGD steps in training; None means the algorithm's
            default (the paper's: 1; Reptile 5) and reads back as that number.
        meta_lr: β, the meta-optimizer's (AdamW) learning rate.
        weight_decay: AdamW's decoupled weight decay.
        precision: "float32", "bfloat16" or "float16" (with dynamic loss
            scaling). Losses, fast-weight updates and meta-updates stay float32.
        jit_compile: compile the meta-train step with XLA.
        lslr: MAML++'s learned rate per weight tensor and inner step.
        multi_step_loss_epochs: MAML++'s multi-step loss for the first E epochs.
        first_order_epochs: MAML++'s derivative-order annealing: first-order
            meta-gradients for the first E epochs (MAML, Meta-SGD).
        per_step_norm: MAML++'s normalization γ/β per inner step, meta-learned.
        adapt_layers: what the inner loop updates: "all", "head" (the dilated
            head at the input) or "upsample" (the output layer, ANIL).
        memory_saving: backpropagate the queries one at a time to the adapted
            weights, then once through the inner loop (the same gradient); under
            the cpu kernel policy, also no Winograd convolutions.
        kernels: the kernel policy's family: "auto" (cpu on a CPU, stock on an
            accelerator), "stock" (TensorFlow's own ops) or "cpu" (`kernels.py`).
        parallel_tasks: tasks of a replica's meta-batch processed at once; None:
            1 on a CPU, the whole meta-batch on an accelerator.
    """

    algorithm: str = "maml"
    inner_lr: float = 1e-3
    inner_steps: int | None = None
    meta_lr: float = 1e-3
    weight_decay: float = 1e-2
    precision: str = "float32"
    jit_compile: bool = False
    lslr: bool = False
    multi_step_loss_epochs: int = 0
    first_order_epochs: int = 0
    per_step_norm: bool = False
    adapt_layers: str = "all"
    memory_saving: bool = False
    kernels: str = "auto"
    parallel_tasks: int | None = None

    def __post_init__(self):
        algorithm = algorithm_class(self.algorithm)  # a ValueError naming the registered ones
        if self.precision not in PRECISION_POLICIES:
            raise ValueError(f"precision must be one of {sorted(PRECISION_POLICIES)}, got {self.precision!r}")
        if self.adapt_layers not in ADAPT_LAYERS:
            raise ValueError(f"adapt_layers must be one of {ADAPT_LAYERS}, got {self.adapt_layers!r}")
        if self.kernels not in kernels.KERNEL_CHOICES:
            raise ValueError(f"kernels must be one of {kernels.KERNEL_CHOICES}, got {self.kernels!r}")
        if self.parallel_tasks is not None and self.parallel_tasks < 1:
            raise ValueError(f"parallel_tasks must be >= 1 (or None: auto), got {self.parallel_tasks}")
        if self.inner_steps is None:
            object.__setattr__(self, "inner_steps", algorithm.default_inner_steps)
        if self.inner_steps < 1:
            raise ValueError(f"inner_steps must be >= 1, got {self.inner_steps}")
        problems = list(algorithm_problems(self.algorithm, self.lslr, self.multi_step_loss_epochs,
                                           self.first_order_epochs, self.per_step_norm, self.adapt_layers,
                                           self.memory_saving))
        if problems:
            raise ValueError("; ".join(f"{name}: {why}" for name, why in problems))

    @property
    def dtype_policy(self) -> str:
        return PRECISION_POLICIES[self.precision]


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


def adapted_indices(model: keras.Model, config: MetaConfig) -> list[int]:
    """Indices into `model.trainable_variables` of the weights the inner loop updates."""
    chosen = []
    for i, v in enumerate(model.trainable_variables):
        layer = v.path.split("/")[0]
        if config.adapt_layers != "all" and group_of(layer) != config.adapt_layers:
            continue
        if config.per_step_norm and _is_norm(v):  # MAML++: per-step γ/β are meta-learned only
            continue
        chosen.append(i)
    if not chosen:
        raise ValueError(f"adapt_layers={config.adapt_layers!r} selects no weights of {model.name}")
    return chosen


def _is_norm(variable) -> bool:
    return variable.path.rsplit("/", 1)[-1] in ("gamma", "beta")


def _variable_name(prefix: str, variable) -> str:
    return prefix + variable.path.replace("/", "_")


class Adapter(tf.Module):
    """A Keras segmentation model and its inner loop: adapt to a support set, predict, evaluate.

    Holds θ (the model's weights) and the meta-learned extras of the
    configured options - Meta-SGD's rates `alphas`, LSLR's `step_rates`,
    per-step normalization `step_norms` - but no optimizer.

    The inner loop updates the *adapted* weights only (`adapted`: all, or one
    layer group), as a list of tensors ("fast" weights); `weights_at` puts
    them back among the others to run the model.

    Args:
        model: maps images `(n, H, W, 3)` to foreground logits `(n, H, W, 1)`;
            build it with `dtype=config.dtype_policy` for mixed precision.
        config: the algorithm settings.
        device: where its functions run ("cpu", "gpu", "tpu", or "any": a
            device-neutral export); default: this process's accelerator, else "cpu".
        **kernel_tuning: `kernels.KernelPolicy` fields that replace the chosen
            ones (thresholds; for tools and tests).
    """

    def __init__(self, model: keras.Model, config: MetaConfig = MetaConfig(), device: str | None = None,
                 **kernel_tuning):
        super().__init__(name="meta_learner")
        self.model = model
        self.config = config
        self.device = device or hardware.compute_device()
        self._kernel_tuning = kernel_tuning
        # Read once, where the learner is made, not while its functions are traced.
        self._onednn = self.device == "cpu" and hardware.onednn_kernels() == "on"
        self.algorithm = algorithm_class(config.algorithm)()
        weights = model.trainable_variables
        self.adapted = adapted_indices(model, config)
        adapted = [weights[i] for i in self.adapted]
        self.alphas = self.algorithm.create_extra_variables(adapted, config)
        steps = config.inner_steps
        self.step_rates = [tf.Variable(tf.fill([steps], tf.constant(config.inner_lr, v.dtype)),
                                       name=_variable_name("lslr_", v)) for v in adapted] if config.lslr else []
        # Per-step γ/β for steps 1..N-1; step N (and any later) uses the model's own, so the
        # saved .keras model is the network as the final step (and the query pass) sees it.
        self.norm_indices = [i for i, v in enumerate(weights) if _is_norm(v)] if config.per_step_norm else []
        self.step_norms = [tf.Variable(tf.tile(weights[i][None], [steps - 1] + [1] * len(weights[i].shape)),
                                       name=_variable_name("step_norm_", weights[i])) for i in self.norm_indices]
        self.loss_scale = tf.Variable(
            2.0**15 if config.precision == "float16" else 1.0, trainable=False, name="loss_scale"
        )
        self._eval_fn = tf.function(self._evaluate_batch, reduce_retracing=True)

    @property
    def parallel_tasks(self) -> int | None:
        """Tasks (of a meta-batch, or evaluation episodes) processed at once: the setting, or on auto (None) 1 on a
        CPU and the whole meta-batch on an accelerator (None: however many the batch holds)."""
        if self.config.parallel_tasks is not None:
            return self.config.parallel_tasks
        return 1 if self.device == "cpu" else None

    @property
    def extra_variables(self) -> list[tf.Variable]:
        """Meta-learned variables besides the model's (checkpointed, exported)."""
        return list(self.alphas) + list(self.step_rates) + list(self.step_norms)

    @property
    def learned_rates(self) -> str | None:
        """How the inner rates are learned ("Meta-SGD", "LSLR"), or None when fixed."""
        return "Meta-SGD" if self.alphas else "LSLR" if self.step_rates else None

    # ----- weights -------------------------------------------------------
    def initial_weights(self) -> list[tf.Tensor]:
        """θ as tensors (the meta-learned initialisation)."""
        return [tf.convert_to_tensor(v) for v in self.model.trainable_variables]

    def weights_at(self, theta: Sequence[tf.Tensor], fast: Sequence[tf.Tensor], step) -> list[tf.Tensor]:
        """The model's weights during inner step `step` (0-based; int or tensor): the fast
        (adapted) weights among θ, with that step's normalization γ/β under per-step norm."""
        weights = list(theta)
        for i, w in zip(self.adapted, fast):
            weights[i] = w
        for i, table in zip(self.norm_indices, self.step_norms):
            weights[i] = self._per_step(tf.concat([tf.convert_to_tensor(table), weights[i][None]], 0), step)
        return weights

    def _per_step(self, table: tf.Tensor, step) -> tf.Tensor:
        """Row `step` of a per-step table; steps past the trained count reuse the last row."""
        last = self.config.inner_steps - 1
        if isinstance(step, int):
            return table[min(step, last)]
        return tf.gather(table, tf.minimum(step, last))

    def rates_at(self, step, inner_lr: tf.Tensor | float | None = None) -> list[tf.Tensor | float]:
        """The inner rate of each adapted weight at `step`: learned (Meta-SGD, LSLR) or `inner_lr` (default α)."""
        if self.alphas:
            return [tf.convert_to_tensor(a) for a in self.alphas]
        if self.step_rates:
            return [self._per_step(tf.convert_to_tensor(r), step) for r in self.step_rates]
        return [self.config.inner_lr if inner_lr is None else inner_lr] * len(self.adapted)

    # ----- forward, loss, adaptation ---------------------------------------
    def kernel_policy(self, second_order: bool = False) -> kernels.KernelPolicy:
        """The kernel policy of this learner's functions; `second_order`: for a step that
        differentiates gradients (the inner gradients of MAML and Meta-SGD, their queries)."""
        config = self.config
        return kernels.choose(config.kernels, self.device, config.precision, second_order, config.memory_saving,
                              self._onednn, **self._kernel_tuning)

    def logits(self, weights: Sequence[tf.Tensor], images: tf.Tensor, second_order: bool = False) -> tf.Tensor:
        """Foreground logits of `images` under `weights` (all of the model's, float32)."""
        non_trainable = [tf.convert_to_tensor(v) for v in self.model.non_trainable_variables]
        logits, _ = self.model.stateless_call(list(weights), non_trainable, images, training=False,
                                              kernels=self.kernel_policy(second_order))
        return full_precision(logits)

    def loss(self, weights: Sequence[tf.Tensor], images: tf.Tensor, masks: tf.Tensor,
             second_order: bool = False) -> tf.Tensor:
        return bce_loss(self.logits(weights, images, second_order), masks)

    def gradients(self, tape: tf.GradientTape, loss: tf.Tensor, sources, unscale: bool = True) -> list[tf.Tensor]:
        """d loss / d sources (zeros where unconnected), with the float16 loss scale applied and, unless
        `unscale` is off (a backward pass still to be seeded with them), removed."""
        zero = tf.UnconnectedGradients.ZERO
        if self.config.precision != "float16":
            return tape.gradient(loss, sources, unconnected_gradients=zero)
        # Seeding backprop with the scale is scaling the loss, after the fact.
        scale = tf.cast(self.loss_scale, loss.dtype)
        grads = tape.gradient(loss, sources, output_gradients=scale, unconnected_gradients=zero)
        return self.unscaled(grads) if unscale else grads

    def unscaled(self, grads: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """Gradients of a float16 step's scaled loss, divided by the loss scale (as they are elsewhere)."""
        if self.config.precision != "float16":
            return list(grads)
        return [g / tf.cast(self.loss_scale, g.dtype) for g in grads]

    def inner_step(self, theta, fast, images, masks, step, second_order: bool, inner_lr=None):
        """One SGD step of the adapted weights on (images, masks): w <- w - rate * dL/dw.

        With `second_order` the gradient stays differentiable (for an
        enclosing tape); otherwise it is a constant (first-order methods).
        Returns the new fast weights and the loss before the step.
        """
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(fast)
            loss = self.loss(self.weights_at(theta, fast, step), images, masks, second_order)
        grads = self.gradients(tape, loss, fast)
        if not second_order:
            grads = [tf.stop_gradient(g) for g in grads]
        fast = [w - tf.cast(r, w.dtype) * g for w, r, g in zip(fast, self.rates_at(step, inner_lr), grads)]
        return fast, loss

    def inner_loop(self, theta, images, masks, inner_steps: int, second_order: bool, inner_lr=None,
                   after_step=None) -> tuple[list[tf.Tensor], tf.Tensor]:
        """`inner_steps` inner steps from θ; `after_step(step, fast)` is called after each.

        Returns the adapted (fast) weights and the loss of the last step (before it).
        """
        fast = [theta[i] for i in self.adapted]
        for step in range(inner_steps):
            fast, loss = self.inner_step(theta, fast, images, masks, step, second_order, inner_lr)
            if after_step is not None:
                after_step(step, fast)
        return fast, loss

    def adapt(
        self,
        support_images: tf.Tensor,
        support_masks: tf.Tensor,
        inner_steps: int | None = None,
        inner_lr: float | None = None,
    ) -> list[tf.Tensor]:
        """All of the model's weights adapted to a support set `(k, H, W, 3)`, `(k, H, W, 1)`.

        Args:
            inner_steps: inner steps (default: the training setting).
            inner_lr: inner rate (default: α; learned rates are always used).
        """
        steps = inner_steps or self.config.inner_steps
        theta = self.initial_weights()
        fast, _ = self.inner_loop(theta, support_images, support_masks, steps, False, inner_lr)
        return self.weights_at(theta, fast, steps - 1)

    def predict(self, fast_weights: Sequence[tf.Tensor], images: tf.Tensor) -> tf.Tensor:
        """Foreground probabilities `(n, H, W, 1)` of `images` under `fast_weights` (from `adapt`)."""
        return tf.sigmoid(self.logits(fast_weights, images))

    # ----- evaluation ----------------------------------------------------
    def evaluate_step(self, task_batch, inner_steps: int | None = None,
                      inner_lr: float | None = None) -> dict[str, tf.Tensor]:
        """Adapts to each task's support and scores its queries.

        Returns per-task `loss` `(B,)` and per-query `soft_iou`, `iou@0.5`,
        `iou@0.35` `(B, q)`, plus `probabilities` `(B, q, H, W, 1)`.
        """
        batch = {k: tf.convert_to_tensor(task_batch[k], tf.float32) for k in TASK_KEYS}
        return self._eval_fn(batch, tf.constant(inner_steps or self.config.inner_steps),
                             tf.constant(inner_lr or self.config.inner_lr, tf.float32))

    def _evaluate_batch(self, batch, inner_steps, inner_lr):
        theta = self.initial_weights()

        def one_task(task):
            support_images, support_masks, query_images, query_masks = task
            # The inner-step count is a tensor so one trace serves any count.
            fast = tf.while_loop(
                lambda i, w: i < inner_steps,
                lambda i, w: (i + 1, self.inner_step(theta, w, support_images, support_masks, i, False, inner_lr)[0]),
                (tf.constant(0), [theta[i] for i in self.adapted]),
            )[1]
            logits = self.logits(self.weights_at(theta, fast, inner_steps - 1), query_images)
            probabilities = tf.sigmoid(logits)
            scores = [soft_iou(probabilities, query_masks)]
            scores += [binary_iou(probabilities, query_masks, t) for t in THRESHOLDS]
            return bce_loss(logits, query_masks), tf.stack(scores), probabilities

        loss, scores, probabilities = tf.map_fn(
            one_task,
            tuple(batch[k] for k in TASK_KEYS),
            fn_output_signature=(tf.float32, tf.float32, tf.float32),
            parallel_iterations=self.parallel_tasks or 10,  # tasks at once: 1 on a CPU
        )
        logs = {"loss": loss, "soft_iou": scores[:, 0], "probabilities": probabilities}
        for j, t in enumerate(THRESHOLDS):
            logs[f"iou@{t}"] = scores[:, j + 1]
        return logs

    def query_gradient(self, weights: Sequence[tf.Tensor], images: tf.Tensor, masks: tf.Tensor,
                       second_order: bool = False, unscale: bool = True) -> tuple[list[tf.Tensor], tf.Tensor]:
        """d(query loss)/d weights and the loss, one query at a time (`memory_saving`).

        The loss is the mean over queries of equal size, so its gradient is the
        mean of the per-query gradients; a `tf.while_loop` computes them in turn,
        holding one query's activations at a time. `second_order`: the kernel
        policy of a second-order step; `unscale=False` keeps float16's loss scale
        in (for a backward pass seeded with them, which would otherwise underflow).
        """
        queries = tf.shape(images)[0]

        def one_query(i, grads, loss):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(weights)
                query_loss = self.loss(weights, images[i : i + 1], masks[i : i + 1], second_order)
            grads = [a + g for a, g in zip(grads, self.gradients(tape, query_loss, weights, unscale))]
            return i + 1, grads, loss + query_loss

        _, grads, loss = tf.while_loop(
            lambda i, *_: i < queries, one_query,
            (tf.constant(0), [tf.zeros_like(w) for w in weights], tf.constant(0.0, weights[0].dtype)),
            parallel_iterations=1,
        )
        count = tf.cast(queries, weights[0].dtype)
        return [g / tf.cast(count, g.dtype) for g in grads], loss / count


class MetaLearner(Adapter):
    """An `Adapter` plus a meta-optimizer and the compiled meta-train step.

    Args:
        model: as for `Adapter`.
        config: the algorithm settings.
        optimizer: the meta-optimizer; default AdamW(config.meta_lr) (`FusedAdamW`: Keras's, faster).
        strategy: a tf.distribute strategy whose scope holds the model's
            variables (default: the current one).
        device, **kernel_tuning: as for `Adapter`.
    """

    def __init__(
        self,
        model: keras.Model,
        config: MetaConfig = MetaConfig(),
        optimizer: keras.optimizers.Optimizer | None = None,
        strategy: tf.distribute.Strategy | None = None,
        device: str | None = None,
        **kernel_tuning,
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
        self._task_sums = tf.function(self._task_sums_fn, jit_compile=True) if config.jit_compile \
            else self._task_sums_fn
        self._train_fn = tf.function(self._distributed_train_step)

    @property
    def meta_variables(self) -> list[tf.Variable]:
        """What the meta-optimizer updates: θ and the extras (Meta-SGD's α, LSLR rates, per-step norms)."""
        return list(self.model.trainable_variables) + self.extra_variables

    # ----- meta-training -------------------------------------------------
    def phase(self, epoch: int) -> Phase:
        """The meta-step's computation at (0-based) `epoch`: MAML++'s annealing switches."""
        config = self.config
        return Phase(second_order=self.algorithm.second_order and epoch >= config.first_order_epochs,
                     multi_step_loss=config.inner_steps > 1 and epoch < config.multi_step_loss_epochs)

    def meta_train_step(self, task_batch, epoch: int = 0) -> dict[str, tf.Tensor]:
        """One meta-update from a meta-batch of tasks (a dict of `(B, ...)` tensors, optionally with
        `"tasks"`: how many of the B are real, the rest padding; or a distributed dataset element
        under a strategy) at 0-based `epoch` (which MAML++'s annealing options read). Returns
        logs: "loss" (mean query loss after adaptation; Reptile: its inner-loop loss),
        "grad_norm", and "finite" (False: the update was skipped)."""
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
        tf.cond(logs["finite"] > 0.5, lambda: self._apply(grads), lambda: self._skip())
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

    def _task_sums_fn(self, batch, tasks, epoch, second_order, multi_step_loss):
        """The meta-gradients of the first `tasks` tasks of `batch`, summed, and their losses' sum."""
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
