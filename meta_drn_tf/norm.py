"""Instance normalization (optionally followed by LeakyReLU) with a hand-written gradient.

Differentiating the composite `(x - mean) * rsqrt(var + eps) * gamma + beta`
op by op keeps four full-size tensors per layer alive for the backward pass
(x - mean, the normalized x, the normalized output, the activation) and runs
about fifteen elementwise passes over them. The closed form

    dx = gamma * r * (dy - mean(dy) - xhat * mean(dy * xhat)),   r = rsqrt(var + eps)

needs only the layer's input and output (expanded as below, the only
full-size tensors its own gradient reads are x and dy). It is written in
differentiable ops that recompute the statistics from the input, so the
second-order terms MAML and Meta-SGD differentiate are exact (inside a
`tf.custom_gradient` the forward pass is not recorded on outer tapes: a
statistic reused from it would be a constant to them). In a `tf.function`
graph the recomputed statistics are the same ops on the same input as the
forward pass's, which Grappler's common-subexpression elimination merges.
"""

from __future__ import annotations

import functools

import tensorflow as tf


def instance_norm(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, epsilon: float,
                  leaky_slope: float | None = None) -> tf.Tensor:
    """Per-image, per-channel normalization, scale and shift, then LeakyReLU if `leaky_slope` is set.

    Args:
        x: `(batch, H, W, C)` in the statistics dtype (float32 or float64).
        gamma, beta: `(C,)`, same dtype.
        epsilon: added to the variance.
        leaky_slope: the LeakyReLU slope for negative inputs (> 0), or None for no activation.

    Returns:
        `(batch, H, W, C)`.
    """
    if leaky_slope is not None and leaky_slope <= 0:
        raise ValueError(f"leaky_slope must be positive (the gradient reads the output's sign), got {leaky_slope}")
    return _norm_with_closed_form_gradient(float(epsilon), leaky_slope)(x, gamma, beta)


def _statistics(x: tf.Tensor, epsilon: float) -> tuple[tf.Tensor, tf.Tensor]:
    mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    variance = tf.reduce_mean(tf.math.squared_difference(x, mean), axis=[1, 2], keepdims=True)
    return mean, tf.math.rsqrt(variance + epsilon)


@functools.cache
def _norm_with_closed_form_gradient(epsilon: float, leaky_slope: float | None):
    @tf.custom_gradient
    def norm(x, gamma, beta):
        mean, inv_std = _statistics(x, epsilon)
        scale = inv_std * gamma
        y = x * scale + (beta - mean * scale)
        if leaky_slope is not None:
            y = tf.nn.leaky_relu(y, leaky_slope)

        def grad(dy):
            if leaky_slope is not None:
                # The activation's output has its input's sign (slope > 0), so it can stand for it.
                dy = tf.raw_ops.LeakyReluGrad(gradients=dy, features=y, alpha=leaky_slope)
            mean, inv_std = _statistics(x, epsilon)
            pixels = tf.cast(tf.shape(x)[1] * tf.shape(x)[2], x.dtype)
            # dx = gamma r (dy - mean(dy) - x_hat mean(dy x_hat)) with x_hat = r (x - mean), expanded
            # into dy * a + x * b + c with per-image, per-channel a, b, c: no full-size tensor but dy
            # and x is made, so none is kept for the second-order terms but those two.
            sum_dy = tf.reduce_sum(dy, axis=[1, 2], keepdims=True)
            sum_dy_x_hat = inv_std * (tf.reduce_sum(dy * x, axis=[1, 2], keepdims=True) - mean * sum_dy)
            a = gamma * inv_std
            b = -a * inv_std * sum_dy_x_hat / pixels
            c = a * (inv_std * mean * sum_dy_x_hat - sum_dy) / pixels
            dx = dy * a + (x * b + c)
            return dx, tf.reduce_sum(sum_dy_x_hat, axis=[0, 1, 2]), tf.reduce_sum(sum_dy, axis=[0, 1, 2])

        return y, grad

    return norm
