"""Instance normalization (optionally followed by LeakyReLU) with a hand-written gradient.

Differentiating the composite `(x - mean) * rsqrt(var + eps) * gamma + beta`
op by op keeps four full-size tensors per layer alive for the backward pass
(x - mean, the normalized x, the normalized output, the activation) and runs
about fifteen elementwise passes over them. The closed form

    dx = gamma * r * (dy - mean(dy) - xhat * mean(dy * xhat)),   r = rsqrt(var + eps)

needs only the layer's input and output. The gradient has a closed-form
gradient too (the second-order terms of MAML and Meta-SGD): autodiff of it
would broadcast small per-channel terms to full size as soon as they are
known - for every layer at once, at the start of the second-order pass - and
keep them until the rest arrives (a large share of a 224x224 MAML
step's memory peak). Both are written in differentiable ops that recompute the statistics
from the inputs, so every order of gradient is exact (inside a
`tf.custom_gradient` the forward pass is not recorded on outer tapes: a
statistic reused from it would be a constant to them). In a `tf.function`
graph the recomputed statistics are the same ops on the same inputs as the
forward pass's, which Grappler's common-subexpression elimination merges.

Under a bfloat16 (or float16) policy the statistics are float32, and the
function keeps its bfloat16 input and output for the backward pass, not float32
copies of them: each gradient casts them again, after its own cotangent exists,
so that no float32 copy made in the forward pass lives until then (each takes
twice the bytes of the bfloat16 activation it copies); the per-channel
statistics are still the forward pass's.

First-order meta-steps (FOMAML, Reptile, adaptation and evaluation) need no
gradient of the gradient: under the cpu kernel policy (`KernelPolicy.fused_norm`)
the norm runs TensorFlow's fused batch-norm kernels instead, per image (faster
on CPUs, with values and gradients equal within float tolerance: see
docs/performance.md). Should their gradient be differentiated again, its gradient is the
closed form's. The stock policy keeps the closed form, which needs no layout
transposes.
"""

from __future__ import annotations

import functools

import tensorflow as tf

from meta_drn_tf.network.kernels import STOCK, KernelPolicy


def instance_norm(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, epsilon: float,
                  leaky_slope: float | None = None, policy: KernelPolicy = STOCK) -> tf.Tensor:
    """Per-image, per-channel normalization, scale and shift, then LeakyReLU if `leaky_slope` is set.

    Args:
        x: `(batch, H, W, C)`, float of any width.
        gamma, beta: `(C,)`, in the statistics' dtype (float32 or float64): x is normalized in it.
        epsilon: added to the variance.
        leaky_slope: the LeakyReLU slope for negative inputs (> 0), or None for no activation.
        policy: with `fused_norm` (the cpu policy's first-order steps), TensorFlow's fused
            batch-norm kernels, per image; with `lite_forms` (TFLite files), the composite in
            plain ops; otherwise the closed form (elementwise ops and per-image reductions, no
            layout change: what GPUs and XLA fuse).

    Returns:
        `(batch, H, W, C)`, x's dtype.
    """
    if leaky_slope is not None and leaky_slope <= 0:
        raise ValueError(f"leaky_slope must be positive (the gradient reads the output's sign), got {leaky_slope}")
    if policy.lite_forms:
        return _lite_norm(x, gamma, beta, float(epsilon), leaky_slope)
    if policy.fused_norm and x.dtype in FUSED_DTYPES and gamma.dtype == tf.float32:
        return _fused_norm(float(epsilon), leaky_slope)(x, gamma, beta)
    return _norm_with_closed_form_gradient(float(epsilon), leaky_slope)(x, gamma, beta)


def _statistics(x: tf.Tensor, epsilon: float) -> tuple[tf.Tensor, tf.Tensor]:
    mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    variance = tf.reduce_mean(tf.math.squared_difference(x, mean), axis=[1, 2], keepdims=True)
    return mean, tf.math.rsqrt(variance + epsilon)


def _lite_norm(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, epsilon: float,
               leaky_slope: float | None) -> tf.Tensor:
    """The norm for TFLite files: the centred input's square is a MUL of it with itself (TFLite's
    SQUARED_DIFFERENCE has no int16 kernel), and the output is formed from the centred input, so
    that no two large terms cancel where activations are integers."""
    centred = tf.cast(x, gamma.dtype) - tf.reduce_mean(tf.cast(x, gamma.dtype), axis=[1, 2], keepdims=True)
    variance = tf.reduce_mean(centred * centred, axis=[1, 2], keepdims=True)
    y = centred * (tf.math.rsqrt(variance + epsilon) * gamma) + beta
    if leaky_slope is not None:
        y = tf.nn.leaky_relu(y, leaky_slope)
    return tf.cast(y, x.dtype)


def _activation_gradient(dy: tf.Tensor, y: tf.Tensor, leaky_slope: float | None) -> tf.Tensor:
    if leaky_slope is None:
        return dy
    # The activation's output has its input's sign (slope > 0), so it can stand for it;
    # the sign is constant almost everywhere, so y needs no gradient.
    return tf.raw_ops.LeakyReluGrad(gradients=dy, features=y, alpha=leaky_slope)


def _gradient_terms(dy_out, x, y, gamma, after, epsilon: float, leaky_slope: float | None) -> tuple:
    """What the norm's gradient is made of, from the inputs alone: the second-order terms recompute
    it so that they too are exact to every order (Grappler merges the repeated ops). Inputs
    narrower than the statistics are cast to it once `after` exists, for the full-size
    terms: ops of their own, which Grappler cannot merge with the forward pass's casts
    (whose results would then be kept until here); the statistics are the forward pass's."""
    mean, inv_std = _statistics(tf.cast(x, gamma.dtype), epsilon)
    with tf.control_dependencies([after] if x.dtype != gamma.dtype else []):
        dy_out, x, y_ = (tf.cast(t, gamma.dtype) for t in (dy_out, x, y))
    dy = _activation_gradient(dy_out, y_, leaky_slope)
    pixels = tf.cast(tf.shape(x)[1] * tf.shape(x)[2], x.dtype)
    # dx = gamma r (dy - mean(dy) - x_hat mean(dy x_hat)) with x_hat = r (x - mean), expanded
    # into dy * a + x * b + c with per-image, per-channel a, b, c.
    sum_dy = tf.reduce_sum(dy, axis=[1, 2], keepdims=True)
    centred_sum = tf.reduce_sum(dy * x, axis=[1, 2], keepdims=True) - mean * sum_dy
    sum_dy_x_hat = inv_std * centred_sum
    a = gamma * inv_std
    b = -a * inv_std * sum_dy_x_hat / pixels
    c = a * (inv_std * mean * sum_dy_x_hat - sum_dy) / pixels
    return dy, x, y_, mean, inv_std, pixels, sum_dy, centred_sum, sum_dy_x_hat, a, b, c


def _second_order_gradients(g_dx, g_dgamma, g_dbeta, terms: tuple, gamma, leaky_slope: float | None, dtype):
    """The cotangents of (dy_out, x, gamma) from those of the gradient (dx, dgamma, dbeta): reverse
    mode through `_gradient_terms`' lines, per image and channel, then two full-size outputs. Every
    full-size op reads g_dx, so none runs before it exists (autodiff's broadcasts of the small terms
    would all be made, and kept, at once)."""
    dy, x_, y_, mean, inv_std, pixels, sum_dy, centred_sum, sum_dy_x_hat, a, b, _ = terms
    g_dx = tf.cast(g_dx, gamma.dtype)
    # g_<name>: the cotangent of <name>; a, b, c first, then what they are made of.
    g_a = tf.reduce_sum(g_dx * dy, axis=[1, 2], keepdims=True)
    g_b = tf.reduce_sum(g_dx * x_, axis=[1, 2], keepdims=True)
    g_c = tf.reduce_sum(g_dx, axis=[1, 2], keepdims=True)
    g_a += (-g_b * inv_std * sum_dy_x_hat + g_c * (inv_std * mean * sum_dy_x_hat - sum_dy)) / pixels
    g_sum_dy_x_hat = g_dgamma + a * inv_std * (g_c * mean - g_b) / pixels
    g_sum_dy = g_dbeta - g_c * a / pixels - g_sum_dy_x_hat * inv_std * mean
    g_sum_dy_x = g_sum_dy_x_hat * inv_std
    g_mean = g_c * a * inv_std * sum_dy_x_hat / pixels - g_sum_dy_x_hat * inv_std * sum_dy
    g_inv_std = (a * sum_dy_x_hat * (g_c * mean - g_b) / pixels + g_a * gamma
                 + g_sum_dy_x_hat * centred_sum)
    g_variance = -0.5 * inv_std**3 * g_inv_std
    g_dy = _activation_gradient(g_dx * a + (x_ * g_sum_dy_x + g_sum_dy), y_, leaky_slope)
    g_x = g_dx * b + (dy * g_sum_dy_x + (x_ * (2.0 * g_variance / pixels)
                                         + (g_mean - 2.0 * g_variance * mean) / pixels))
    return tf.cast(g_dy, dtype), tf.cast(g_x, dtype), tf.reduce_sum(g_a * inv_std, axis=[0, 1, 2])


@functools.cache
def _norm_with_closed_form_gradient(epsilon: float, leaky_slope: float | None):
    @tf.custom_gradient
    def norm(x, gamma, beta):
        x_in_stats_dtype = tf.cast(x, gamma.dtype)
        mean, inv_std = _statistics(x_in_stats_dtype, epsilon)
        scale = inv_std * gamma
        y = x_in_stats_dtype * scale + (beta - mean * scale)
        if leaky_slope is not None:
            y = tf.nn.leaky_relu(y, leaky_slope)
        y = tf.cast(y, x.dtype)

        @tf.custom_gradient
        def backward(dy_out, x, gamma):
            """(dx, dgamma, dbeta) from the output's gradient `dy_out`, with its own closed-form
            gradient (the second-order terms of MAML and Meta-SGD)."""
            dy, x_, _, _, _, _, sum_dy, _, sum_dy_x_hat, a, b, c = _gradient_terms(
                dy_out, x, y, gamma, dy_out, epsilon, leaky_slope)
            dx = tf.cast(dy * a + (x_ * b + c), x.dtype)
            gradients = dx, tf.reduce_sum(sum_dy_x_hat, axis=[0, 1, 2]), tf.reduce_sum(sum_dy, axis=[0, 1, 2])

            def second_order(g_dx, g_dgamma, g_dbeta):
                terms = _gradient_terms(dy_out, x, y, gamma, g_dx, epsilon, leaky_slope)
                return _second_order_gradients(g_dx, g_dgamma, g_dbeta, terms, gamma, leaky_slope, x.dtype)

            return gradients, second_order

        return y, lambda dy: backward(dy, x, gamma)

    return norm


# What TensorFlow's fused batch norm takes as x (its statistics, gamma and beta are float32).
FUSED_DTYPES = (tf.float16, tf.bfloat16, tf.float32)


def _images_side_by_side(t: tf.Tensor) -> tf.Tensor:
    """`(batch, H, W, C)` -> `(1, H, W, batch·C)`: a batch norm of it is an instance norm of t."""
    if t.shape[0] == 1:
        return t
    shape = tf.shape(t)
    return tf.reshape(tf.transpose(t, [1, 2, 0, 3]), [1, shape[1], shape[2], -1])


def _images_one_by_one(t: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """The inverse of `_images_side_by_side(like)`, for t of its shape."""
    if like.shape[0] == 1:
        return t
    # The static shape too: with an unknown batch (a SavedModel's), the reshape would lose all of it,
    # and the layers after it the forms that need it (Winograd, taps).
    return tf.ensure_shape(tf.transpose(tf.reshape(t, tf.gather(tf.shape(like), [1, 2, 0, 3])), [2, 0, 1, 3]),
                           like.shape)


@functools.cache
def _fused_norm(epsilon: float, leaky_slope: float | None):
    """`instance_norm` by `FusedBatchNormV3` on the images side by side: one pass for the
    statistics, one to normalize, one kernel for the gradient (where the closed form runs about
    fifteen elementwise ops). Keeps the same tensors for the gradient: the input, the output
    and per-channel statistics."""

    @tf.custom_gradient
    def norm(x, gamma, beta):
        batch = tf.shape(x)[0]
        scale, offset = (gamma, beta) if x.shape[0] == 1 else (tf.tile(gamma, [batch]), tf.tile(beta, [batch]))
        empty = tf.zeros([0], tf.float32)
        y, _, _, saved_mean, saved_inv_std, reserved = tf.raw_ops.FusedBatchNormV3(
            x=_images_side_by_side(x), scale=scale, offset=offset, mean=empty, variance=empty, epsilon=epsilon,
            is_training=True)
        if leaky_slope is not None:
            y = tf.nn.leaky_relu(y, leaky_slope)

        @tf.custom_gradient
        def backward(dy, x, gamma):
            """(dx, dgamma, dbeta) from the output's gradient `dy`."""
            dy_side_by_side = _images_side_by_side(dy)
            if leaky_slope is not None:  # the output has the activation's input's sign (slope > 0)
                dy_side_by_side = tf.raw_ops.LeakyReluGrad(gradients=dy_side_by_side, features=y, alpha=leaky_slope)
            dx, dgamma, dbeta, _, _ = tf.raw_ops.FusedBatchNormGradV3(
                y_backprop=dy_side_by_side, x=_images_side_by_side(x), scale=scale, reserve_space_1=saved_mean,
                reserve_space_2=saved_inv_std, reserve_space_3=reserved, epsilon=epsilon, is_training=True)
            if x.shape[0] != 1:  # each image's terms, side by side
                dgamma, dbeta = (tf.ensure_shape(tf.reduce_sum(tf.reshape(d, [batch, -1]), 0), gamma.shape)
                                 for d in (dgamma, dbeta))

            def second_order(*cotangents):
                # Not what first-order steps run (nor TensorFlow's FusedBatchNormGradV3 gradient): the
                # closed form's, which is exact to every order, should a caller differentiate again.
                sources = [dy, x, gamma]
                with tf.GradientTape() as tape:
                    tape.watch(sources)
                    with tf.GradientTape() as inner:
                        inner.watch([x, gamma, beta])
                        output = _norm_with_closed_form_gradient(epsilon, leaky_slope)(x, gamma, beta)
                    exact = inner.gradient(output, [x, gamma, beta], output_gradients=dy)
                return tape.gradient(exact, sources, output_gradients=list(cotangents),
                                     unconnected_gradients=tf.UnconnectedGradients.ZERO)

            return (_images_one_by_one(dx, x), dgamma, dbeta), second_order

        return _images_one_by_one(y, x), lambda dy: backward(dy, x, gamma)

    return norm
