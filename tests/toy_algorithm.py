"""An algorithm added the way a user would: one file, nothing else touched.

"Joint training" (transfer learning's baseline in the meta-learning papers): the meta-gradient
is the loss gradient on all of a task's images at the initial weights, with no inner loop. It
registers itself on import as `MetaConfig(algorithm="joint")`.
"""

import tensorflow as tf

from meta_drn_tf.meta.algorithm import Algorithm, register


@register("joint")
class JointTraining(Algorithm):
    def task_gradients(self, learner, task, phase=None, loss_weights=None):
        images = tf.concat([task["support_images"], task["query_images"]], 0)
        masks = tf.concat([task["support_masks"], task["query_masks"]], 0)
        weights = learner.initial_weights()
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(weights)
            loss = learner.loss(weights, images, masks)
        return learner.gradients(tape, loss, weights), loss
