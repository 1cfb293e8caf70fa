"""`Adapter`: adapt a Keras model to a support set and predict - θ, the learned rates, the inner loop.

    adapter = Adapter(build_meta_drn(NetworkConfig(224)), MetaConfig(algorithm="maml"))
    fast = adapter.adapt(support_images, support_masks)
    probabilities = adapter.predict(fast, query_images)

The adaptation side alone, without a meta-optimizer: what an export serves and
what an algorithm sees of the learner (`algorithm.AdapterInterface`). Three
jobs: the weights (θ, the adapted subset, per-step tables), float16's loss
scale on gradients, and the inner loop. Scoring adapted queries is the
evaluation protocol's (`training.evaluation.EpisodeScorer`); gradients one query
at a time are `memory_saving.query_gradient`'s.

Fast weights are plain tensors passed through Keras 3 `stateless_call`; the
model's variables are never assigned during adaptation, so second-order
gradients flow through the inner loop (nested GradientTapes).

Which forms the network's convolutions and norms take is a `kernels.KernelPolicy`,
chosen from `MetaConfig.kernels`, the device the adapter runs on, the precision,
the memory mode and whether a step is second order (`Adapter.kernel_policy`), and
handed to the layers with every call.

BatchNorm: the network normalises with per-image statistics
(`InstanceNorm`), so adaptation, meta-training and serving behave the same
and a query's mask never depends on the other images of its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from meta_drn_tf import hardware
from meta_drn_tf.meta.algorithm import algorithm_class
from meta_drn_tf.meta.config import MetaConfig
from meta_drn_tf.network import kernels
from meta_drn_tf.network.model import group_of
from meta_drn_tf.results.metrics import bce_loss, full_precision

TASK_KEYS = ("support_images", "support_masks", "query_images", "query_masks")


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
    """A Keras segmentation model and its inner loop: adapt to a support set, predict.

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
                 **kernel_tuning: float):
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

    @property
    def parallel_tasks(self) -> int | None:
        """Tasks (of a meta-batch, or evaluation episodes) processed at once: the setting, or on auto (None) 1 on a
        CPU and the whole meta-batch on an accelerator (None: however many the batch holds)."""
        if self.config.parallel_tasks is not None:
            return self.config.parallel_tasks
        return 1 if self.device == "cpu" else None

    @property
    def meta_variables(self) -> list[tf.Variable]:
        """What meta-training learns: θ and the extras (Meta-SGD's α, LSLR rates, per-step norms)."""
        return list(self.model.trainable_variables) + self.extra_variables

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
