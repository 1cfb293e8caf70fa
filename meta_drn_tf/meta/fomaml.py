"""First-order MAML: the inner gradients are constants, so the meta-gradient is the query-loss
gradient at the adapted weights (no backpropagation through the inner loop)."""

from __future__ import annotations

import tensorflow as tf

from meta_drn_tf.meta.algorithm import register
from meta_drn_tf.meta.maml import MAML
from meta_drn_tf.meta.memory_saving import query_gradient


@register("fomaml")
class FOMAML(MAML):
    """First-order MAML: no backpropagation through the inner loop."""

    second_order = False

    def task_gradients(self, learner, task, phase=None, loss_weights=None):
        phase = phase or self.phase(learner.config, 0)
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
            return query_gradient(learner, weights, task["query_images"], task["query_masks"])
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(weights)
            loss = learner.loss(weights, task["query_images"], task["query_masks"])
        return learner.gradients(tape, loss, weights), loss
