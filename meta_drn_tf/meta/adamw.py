"""The meta-optimizer: Keras's AdamW with each weight's Adam update in one TensorFlow kernel."""

from __future__ import annotations

import keras
import tensorflow as tf


def _handle(variable) -> tf.Tensor:
    """The resource handle of a Keras or TensorFlow variable (a replica's own under tf.distribute)."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle


@keras.saving.register_keras_serializable(package="meta_drn_tf")
class FusedAdamW(keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` whose Adam update of a weight is one `ResourceApplyAdam` kernel.

    The arithmetic is Keras's: m += (g - m)(1 - β1), v += (g² - v)(1 - β2),
    w -= lr·sqrt(1 - β2ᵗ)/(1 - β1ᵗ)·m/(sqrt(v) + ε), after the same decoupled weight decay; but
    in one pass over w, m, v and g, where Keras's runs about eight elementwise ops per weight,
    each a pass over weight-sized tensors (a visible share of a first-order meta-step on a
    CPU; docs/performance.md). The optimizer's variables, config and checkpoints are
    AdamW's. AMSGrad and sparse gradients take Keras's own update.

    Args: those of `keras.optimizers.AdamW`.
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        index = self._get_variable_index(variable)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable), m=_handle(self._momentums[index]), v=_handle(self._velocities[index]),
            beta1_power=beta_1**step, beta2_power=beta_2**step, lr=tf.cast(learning_rate, dtype),
            beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))
