"""The four meta-learning algorithms of the paper (§III), as per-task gradients.

Each algorithm turns one task into the gradient it hands the meta-optimizer,
aligned with `learner.meta_variables`:

- MAML: adapt with inner SGD on the support, differentiate the query loss at
  the adapted weights through the inner loop (second order, eq. 1-2). The
  MAML++ options (learned per-step rates, multi-step loss, per-step norms,
  derivative-order annealing) change the objective and the phase, which
  `MetaLearner.query_objective` and `MetaLearner.phase` implement.
- FOMAML: the same with the inner gradients treated as constants, which makes
  the meta-gradient the query-loss gradient at the adapted weights.
- Meta-SGD: MAML with a learned inner rate for every weight, meta-trained with
  θ (eq. 3).
- Reptile: k inner steps on all the task's images; θ - θ' is the gradient
  (eq. 4-5 with an Adam-style meta-optimizer).
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

import tensorflow as tf

if TYPE_CHECKING:
    from meta_drn_tf.meta.learner import MetaConfig, MetaLearner, Phase

Task = dict[str, tf.Tensor]  # support_images, support_masks, query_images, query_masks


class Algorithm(abc.ABC):
    """A meta-learning algorithm: one task in, the gradient for the meta-optimizer out."""

    default_inner_steps: int = 1
    second_order: bool = False

    def create_extra_variables(self, adapted: list[tf.Variable], config: MetaConfig) -> list[tf.Variable]:
        """Meta-learned variables besides the model's (Meta-SGD's rates for the `adapted` weights)."""
        return []

    @abc.abstractmethod
    def task_gradients(self, learner: MetaLearner, task: Task, phase: Phase | None = None,
                       loss_weights: tf.Tensor | None = None) -> tuple[list[tf.Tensor], tf.Tensor]:
        """Gradients aligned with `learner.meta_variables`, and the task's loss.

        `phase` (default: the learner's at epoch 0) says whether the
        meta-gradient is second order and whether the objective is the
        multi-step loss (weighted by `loss_weights`).
        """


class MAML(Algorithm):
    """Second-order MAML (first order while `phase.second_order` is off: MAML++'s annealing)."""

    second_order = True

    def task_gradients(self, learner, task, phase=None, loss_weights=None):
        phase = phase or learner.phase(epoch=0)
        if learner.config.memory_saving:
            return self._memory_saving_gradients(learner, task, phase)
        with tf.GradientTape() as tape:
            objective, loss = learner.query_objective(task, phase, loss_weights)
        return learner.gradients(tape, objective, learner.meta_variables), loss

    def _memory_saving_gradients(self, learner, task, phase):
        """The chain rule in two parts: the queries' gradient at the adapted weights, one query at a
        time, then one backward pass through the inner loop seeded with it."""
        steps = learner.config.inner_steps
        with tf.GradientTape() as tape:
            theta = learner.initial_weights()
            fast, _ = learner.inner_loop(theta, task["support_images"], task["support_masks"], steps,
                                         phase.second_order)
            weights = learner.weights_at(theta, fast, steps - 1)
        # Seeded with float16's scaled gradients, unscaled at the end: seeded with unscaled ones, the
        # backward pass through the inner loop underflows (its second-order part became zero).
        query_grads, loss = learner.query_gradient(weights, task["query_images"], task["query_masks"],
                                                   phase.second_order, unscale=False)
        grads = tape.gradient(weights, learner.meta_variables, output_gradients=query_grads,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return learner.unscaled(grads), loss


class FOMAML(MAML):
    """First-order MAML: no backpropagation through the inner loop."""

    second_order = False

    def task_gradients(self, learner, task, phase=None, loss_weights=None):
        phase = phase or learner.phase(epoch=0)
        if learner.extra_variables or phase.multi_step_loss:
            # Learned rates, per-step norms and earlier steps' query losses reach the
            # meta-variables through the inner loop: differentiate it, first order.
            return super().task_gradients(learner, task, phase, loss_weights)
        theta = learner.initial_weights()
        steps = learner.config.inner_steps
        fast, _ = learner.inner_loop(theta, task["support_images"], task["support_masks"], steps, False)
        weights = learner.weights_at(theta, fast, steps - 1)
        # d fast / d theta is the identity once the inner gradients are constants.
        if learner.config.memory_saving:
            return learner.query_gradient(weights, task["query_images"], task["query_masks"])
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(weights)
            loss = learner.loss(weights, task["query_images"], task["query_masks"])
        return learner.gradients(tape, loss, weights), loss


class MetaSGD(MAML):
    """Meta-SGD: per-weight inner rates α, initialised to inner_lr, learned with θ."""

    def create_extra_variables(self, adapted, config):
        return [
            tf.Variable(tf.fill(v.shape, tf.constant(config.inner_lr, v.dtype)),
                        name="alpha_" + v.path.replace("/", "_"), trainable=True)
            for v in adapted
        ]


class Reptile(Algorithm):
    """Reptile: θ - θ' after k inner steps is the meta-gradient."""

    default_inner_steps = 5

    def task_gradients(self, learner, task, phase=None, loss_weights=None):
        images = tf.concat([task["support_images"], task["query_images"]], 0)
        masks = tf.concat([task["support_masks"], task["query_masks"]], 0)
        theta = learner.initial_weights()
        # The loss logged is the last inner step's: no extra forward pass. Reptile adapts
        # every weight (MetaConfig refuses the options that would freeze some).
        fast, loss = learner.inner_loop(theta, images, masks, learner.config.inner_steps, second_order=False)
        return [t - f for t, f in zip(theta, fast)], loss


ALGORITHMS: dict[str, type[Algorithm]] = {"maml": MAML, "fomaml": FOMAML, "metasgd": MetaSGD, "reptile": Reptile}
