"""A stride-1 "same" convolution whose input gradient is a forward convolution.

For stride 1, "same" padding and an odd kernel, the gradient of a
convolution with respect to its input is the same convolution of the output
gradient with the kernel flipped in space and its channel axes swapped.
TensorFlow's CPU kernels run that forward convolution 1.5-3x faster than
`Conv2DBackpropInput` (at 56x56, 512 -> 512 channels: 100 vs 151 ms at
dilation 1, 99 vs 171 ms at dilation 2, 110 vs 354 ms at dilation 4, where
the dilated backward pass works on the space-to-batch layout), and a MAML
step computes such gradients several times per convolution (inner gradient,
then its second-order terms). The gradient is itself built from this
convolution, so every order of differentiation gets the faster form. On CPUs
the kernel gradient is one matrix product per kernel tap (faster than
TensorFlow's `Conv2DBackpropFilter` there; on GPUs it is TensorFlow's), and its
own gradients (second order) are forward convolutions: <dK, g> = <conv(x, g), dy>.
"""

from __future__ import annotations

import functools

import tensorflow as tf


def same_conv2d(inputs: tf.Tensor, kernel: tf.Tensor, dilation: int = 1) -> tf.Tensor:
    """`tf.nn.convolution(inputs, kernel, padding="SAME", dilations=dilation)` at stride 1.

    Args:
        inputs: `(batch, H, W, C_in)`.
        kernel: `(k, k, C_in, C_out)` with k odd.
        dilation: the dilation rate.

    Returns:
        `(batch, H, W, C_out)`.
    """
    if kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise ValueError(f"same_conv2d needs an odd kernel size, got {kernel.shape[:2]}")
    return _conv_with_forward_input_gradient(int(dilation))(inputs, kernel)


def _flip(kernel: tf.Tensor) -> tf.Tensor:
    """The kernel of the input gradient: flipped in space, input and output channels swapped."""
    return tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])


@functools.cache
def _conv_with_forward_input_gradient(dilation: int):
    def convolve(x, kernel):
        return tf.nn.convolution(x, kernel, padding="SAME", dilations=dilation, data_format="NHWC")

    @tf.custom_gradient
    def conv(x, kernel):
        return convolve(x, kernel), lambda dy: backward(x, dy, kernel)

    @tf.custom_gradient
    def backward(x, dy, kernel):
        """conv's gradients (dx, dK) as one function, so that its own gradient sees both cotangents."""

        def second_order(g_dx, g_dk):
            # g_dk (from the fast weights' cotangents) is known when the second-order pass starts;
            # conv(x, g_dk) and conv_flipped(dy, g_dk) wait for g_dx, which arrives when the pass
            # reaches this layer: otherwise every layer's full-size terms are made at the start
            # and kept until then.
            with tf.control_dependencies([g_dx]):
                g_x = conv_flipped(dy, g_dk)
                g_dy = conv(g_dx, kernel) + conv(x, g_dk)
            return g_x, g_dy, flipped_kernel_gradient(dy, g_dx, kernel.shape)

        return (conv_flipped(dy, kernel), kernel_gradient(x, dy, kernel.shape)), second_order

    @tf.custom_gradient
    def conv_flipped(x, kernel):
        """conv(x, _flip(kernel)), the input gradient, as a function of the unflipped kernel: its
        own gradients (second order) need `kernel` itself, which the weights keep alive anyway,
        where a flipped copy would be kept for them and flipped back."""

        def grad(dy):
            return conv(dy, kernel), flipped_kernel_gradient(x, dy, kernel.shape)

        # Not before x exists: the kernels are there from the start of a step, and every layer's
        # flipped copy would be made then and kept until the backward pass reaches the layer.
        with tf.control_dependencies([x]):
            flipped = _flip(kernel)
        return convolve(x, flipped), grad

    def flipped_kernel_gradient(x, dy, kernel_shape):
        """d<conv(x, _flip(kernel)), dy>/d kernel, which is kernel_gradient(dy, x): both are
        sum_p x[p + s] dy[p] over the pixels p and a tap's shift s, with x and dy's roles swapped
        and s negated (zero padding makes the two sums run over the same pairs), so no flip of a
        kernel-sized result is needed."""
        return kernel_gradient(dy, x, kernel_shape)

    def kernel_gradient(x, dy, kernel_shape):
        """d<conv(x, kernel), dy>/d kernel for a kernel of `kernel_shape`; differentiable through `conv`."""

        @tf.custom_gradient
        def gradient(x, dy):
            if kernel_gradient_by_taps(x.shape, kernel_shape):
                value = _kernel_gradient_by_taps(x, dy, kernel_shape, dilation)
            else:
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    placeholder = tf.zeros(kernel_shape, x.dtype)
                    tape.watch(placeholder)
                    y = convolve(x, placeholder)  # only its gradient graph is used (pruned in tf.function)
                value = tape.gradient(y, placeholder, output_gradients=dy)
            # <dK, g> = <conv(x, g), dy>: its gradients are two forward convolutions.
            return value, lambda g: (conv_flipped(dy, g), conv(x, g))

        return gradient(x, dy)

    return conv


# Below this many FLOPs per tap (rows x C_in x C_out x 2), one TensorFlow op beats nine small
# products and their copies: per-op overhead dominates at the tests' and the quickstart's sizes.
MIN_TAP_FLOPS = 2**24
# From this ratio of the unshifted side's channels to the shifted side's, the shifted copies are
# stacked into one product (512 -> 16 at 56x56: 6.5 ms instead of 29-31; 16 -> 64, ratio 4: 6 instead of 4).
SIDE_BY_SIDE_CHANNEL_RATIO = 8


def kernel_gradient_by_taps(input_shape: tf.TensorShape, kernel_shape: tf.TensorShape) -> bool:
    """Whether the kernel gradient is computed tap by tap: on CPUs, for large enough layers
    (every layer of the full-width network at 224x224). With a GPU, cuDNN's kernel gradient is
    one launch where the taps would be nine matrix products and eight copies."""
    if tf.config.list_logical_devices("GPU"):
        return False
    rows = input_shape[0:3].num_elements()  # None while the batch or image size is unknown
    return rows is not None and 2 * rows * kernel_shape[2] * kernel_shape[3] >= MIN_TAP_FLOPS


def _kernel_gradient_by_taps(x: tf.Tensor, dy: tf.Tensor, kernel_shape, dilation: int) -> tf.Tensor:
    """dK[i, j] = X(i, j)^T dY, with X(i, j) the padded input shifted by tap (i, j), pixels as rows.

    One plain matrix product per kernel tap instead of `Conv2DBackpropFilter`: 15-45%
    faster at dilation 1 with 512 channels on this CPU, as fast elsewhere, and no
    space-to-batch layout for dilated kernels (docs/performance.md). Of x and dy, the
    one with fewer channels is the one shifted (copied): dY shifted the opposite way
    gives the same sums. It is shifted channels first, so that each shifted copy is
    X(i, j)^T itself, the left operand as the CPU's matrix product reads it fastest
    (4-15% faster than `transpose_a` at 512 channels). Where the other side has many
    times more channels (the 512 -> 16 output convolution), the copies are stacked into
    one matrix and the product is one: nine products of 16 columns each run at a tenth
    of the CPU's rate.
    """
    k_h, k_w, c_in, c_out = kernel_shape
    shift_x = c_in <= c_out
    moving, fixed = (x, dy) if shift_x else (dy, x)
    height, width = tf.shape(x)[1], tf.shape(x)[2]
    pad_h, pad_w = dilation * (k_h // 2), dilation * (k_w // 2)
    # Not before dy exists: a copy of x that depends on x alone would be made during the
    # forward pass and kept, for every layer, until the backward pass reaches it.
    with tf.control_dependencies([dy]):
        padded = tf.pad(moving, [[0, 0], [pad_h, pad_h], [pad_w, pad_w], [0, 0]])
        channels_first = tf.transpose(padded, [3, 0, 1, 2])  # (C, batch, H + 2 pad_h, W + 2 pad_w)
    shifted = []
    for i in range(k_h):
        for j in range(k_w):
            top, left = (i, j) if shift_x else (k_h - 1 - i, k_w - 1 - j)
            top, left = top * dilation, left * dilation
            window = channels_first[:, :, top : top + height, left : left + width]
            shifted.append(tf.reshape(window, [moving.shape[-1], -1]))  # X(i, j)^T: channels x pixels
    fixed_rows = tf.reshape(fixed, [-1, fixed.shape[-1]])
    if fixed.shape[-1] >= SIDE_BY_SIDE_CHANNEL_RATIO * moving.shape[-1]:
        product = tf.matmul(tf.concat(shifted, axis=0), fixed_rows)
    else:
        product = tf.stack([tf.matmul(tap, fixed_rows) for tap in shifted])
    product = tf.reshape(product, [k_h, k_w, moving.shape[-1], fixed.shape[-1]])
    return product if shift_x else tf.transpose(product, [0, 1, 3, 2])
