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
convolution, so every order of differentiation gets the faster form. The
kernel gradient is TensorFlow's, and its own gradients (second order) are
forward convolutions as well: <dK, g> = <conv(x, g), dy>.
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
        def grad(dy):
            return conv(dy, _flip(kernel)), kernel_gradient(x, dy, kernel)

        return convolve(x, kernel), grad

    def kernel_gradient(x, dy, kernel):
        """d<conv(x, kernel), dy>/d kernel, TensorFlow's kernel; differentiable through `conv` again."""

        @tf.custom_gradient
        def gradient(x, dy):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                placeholder = tf.zeros_like(kernel)
                tape.watch(placeholder)
                y = convolve(x, placeholder)  # only its gradient graph is used (pruned in tf.function)
            # <dK, g> = <conv(x, g), dy>: its gradients are two forward convolutions.
            return tape.gradient(y, placeholder, output_gradients=dy), lambda g: (conv(dy, _flip(g)), conv(x, g))

        return gradient(x, dy)

    return conv
