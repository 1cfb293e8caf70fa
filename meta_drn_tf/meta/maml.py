"""MAML (§III, eq. 1-2), with the MAML++ options that change its objective.

Adapt with inner SGD on the support, then differentiate the query loss at the
adapted weights through the inner loop (second order; first order while
MAML++'s derivative-order annealing says so). With the multi-step loss the
objective weighs the query loss after every inner step (`query_objective`).
"""

from __future__ import annotations

import tensorflow as tf

from meta_drn_tf.meta.algorithm import AdapterInterface, Algorithm, Phase, Task, register
from meta_drn_tf.meta.memory_saving import query_gradient


def query_objective(learner: AdapterInterface, task: Task, phase: Phase, loss_weights: tf.Tensor | None = None):
    """The meta-objective of one task: the query loss after adapting to its support.

    With `phase.multi_step_loss`, the `loss_weights`-weighted sum of the query
    losses after every inner step (MAML++). Returns (objective, final query loss).
    """
    theta = learner.initial_weights()
    query_losses = []

    def score_query(step, fast):
        if phase.multi_step_loss:
            query_losses.append(learner.loss(learner.weights_at(theta, fast, step), task["query_images"],
                                             task["query_masks"], phase.second_order))

    steps = learner.config.inner_steps
    fast, _ = learner.inner_loop(theta, task["support_images"], task["support_masks"], steps,
                                 phase.second_order, after_step=score_query)
    if not phase.multi_step_loss:
        final = learner.loss(learner.weights_at(theta, fast, steps - 1), task["query_images"], task["query_masks"],
                             phase.second_order)
        return final, final
    weights = tf.unstack(tf.cast(loss_weights, query_losses[-1].dtype))
    return tf.add_n([w * q for w, q in zip(weights, query_losses)]), query_losses[-1]


@register("maml")
class MAML(Algorithm):
    """Second-order MAML (first order while `phase.second_order` is off: MAML++'s annealing)."""

    second_order = True

    def task_gradients(self, learner, task, phase=None, loss_weights=None):
        phase = phase or self.phase(learner.config, 0)
        if learner.config.memory_saving:
            return self._memory_saving_gradients(learner, task, phase)
        with tf.GradientTape() as tape:
            objective, loss = query_objective(learner, task, phase, loss_weights)
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
        query_grads, loss = query_gradient(learner, weights, task["query_images"], task["query_masks"],
                                           phase.second_order, unscale=False)
        grads = tape.gradient(weights, learner.meta_variables, output_gradients=query_grads,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return learner.unscaled(grads), loss
