"""Reptile (§III, eq. 4-5): k inner steps on all the task's images; θ - θ' is the meta-gradient
(the paper's meta-optimizer is Adam-style)."""

from __future__ import annotations

import tensorflow as tf

from meta_drn_tf.meta.algorithm import Algorithm, register


@register("reptile")
class Reptile(Algorithm):
    """Reptile: θ - θ' after k inner steps is the meta-gradient."""

    query_meta_gradient = False

    default_inner_steps = 5

    def task_gradients(self, learner, task, phase=None, loss_weights=None):
        images = tf.concat([task["support_images"], task["query_images"]], 0)
        masks = tf.concat([task["support_masks"], task["query_masks"]], 0)
        theta = learner.initial_weights()
        # The loss logged is the last inner step's: no extra forward pass. Reptile adapts
        # every weight (MetaConfig refuses the options that would freeze some).
        fast, loss = learner.inner_loop(theta, images, masks, learner.config.inner_steps, second_order=False)
        return [t - f for t, f in zip(theta, fast)], loss
