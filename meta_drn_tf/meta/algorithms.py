"""The four meta-learning algorithms of the paper (§III), as per-task gradients.

Each algorithm turns one task into the gradient it hands the meta-optimizer,
aligned with `learner.meta_variables`:

- MAML: adapt with inner SGD on the support, differentiate the query loss at
  the adapted weights through the inner loop (second order, eq. 1-2).
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

import keras
import tensorflow as tf

if TYPE_CHECKING:
    from meta_drn_tf.meta.learner import MetaConfig, MetaLearner

Task = dict[str, tf.Tensor]  # support_images, support_masks, query_images, query_masks


class Algorithm(abc.ABC):
    """A meta-learning algorithm: one task in, the gradient for the meta-optimizer out."""

    default_inner_steps: int = 1

    def create_extra_variables(self, model: keras.Model, config: MetaConfig) -> list[tf.Variable]:
        """Meta-learned variables besides the model's (Meta-SGD's rates); checkpointed and exported."""
        return []

    @abc.abstractmethod
    def task_gradients(self, learner: MetaLearner, task: Task) -> tuple[list[tf.Tensor], tf.Tensor]:
        """Gradients aligned with `learner.meta_variables`, and the task's loss."""


class MAML(Algorithm):
    """Second-order MAML."""

    second_order = True

    def task_gradients(self, learner, task):
        with tf.GradientTape() as tape:
            theta = learner.initial_weights()
            fast, _ = learner.inner_loop(theta, task["support_images"], task["support_masks"],
                                      learner.config.inner_steps, learner.inner_rates(), second_order=self.second_order)
            loss = learner.loss(fast, task["query_images"], task["query_masks"])
        return learner.gradients(tape, loss, learner.meta_variables), loss


class FOMAML(MAML):
    """First-order MAML: no backpropagation through the inner loop."""

    second_order = False

    def task_gradients(self, learner, task):
        fast, _ = learner.inner_loop(learner.initial_weights(), task["support_images"], task["support_masks"],
                                  learner.config.inner_steps, learner.inner_rates(), second_order=False)
        # d fast / d theta is the identity once the inner gradients are constants.
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(fast)
            loss = learner.loss(fast, task["query_images"], task["query_masks"])
        return learner.gradients(tape, loss, fast), loss


class MetaSGD(MAML):
    """Meta-SGD: per-weight inner rates α, initialised to inner_lr, learned with θ."""

    def create_extra_variables(self, model, config):
        return [
            tf.Variable(tf.fill(v.shape, tf.constant(config.inner_lr, v.dtype)),
                        name="alpha_" + v.path.replace("/", "_"), trainable=True)
            for v in model.trainable_variables
        ]


class Reptile(Algorithm):
    """Reptile: θ - θ' after k inner steps is the meta-gradient."""

    default_inner_steps = 5

    def task_gradients(self, learner, task):
        images = tf.concat([task["support_images"], task["query_images"]], 0)
        masks = tf.concat([task["support_masks"], task["query_masks"]], 0)
        theta = learner.initial_weights()
        # The loss logged is the last inner step's: no extra forward pass.
        fast, loss = learner.inner_loop(theta, images, masks, learner.config.inner_steps,
                                        learner.inner_rates(), second_order=False)
        return [t - f for t, f in zip(theta, fast)], loss


ALGORITHMS: dict[str, type[Algorithm]] = {"maml": MAML, "fomaml": FOMAML, "metasgd": MetaSGD, "reptile": Reptile}
