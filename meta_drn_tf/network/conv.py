"""A stride-1 "same" convolution in the forms a `kernels.KernelPolicy` names.

Under the stock policy it is TensorFlow's own convolution and gradients. Under
the cpu policy, the forms of this module, faster with TensorFlow's CPU kernels
(docs/performance.md measures each):

- For stride 1, "same" padding and an odd kernel, the gradient with respect to
  the input is the same convolution of the output gradient with the kernel
  flipped in space and its channel axes swapped: a forward convolution, which
  TensorFlow's CPU kernels run faster than `Conv2DBackpropInput` (whose dilated
  form works on the space-to-batch layout). The gradient is itself built from
  this convolution, so every order of differentiation gets the faster form.
- The kernel gradient is one matrix product per kernel tap for large enough
  layers, and its own gradients (second order) are forward convolutions:
  <dK, g> = <conv(x, g), dy>.
- Wide 3x3 layers compute the convolution and its kernel gradient by
  Winograd's F(2x2, 3x3): 16 products of a quarter of the pixels where the
  direct forms need 9 of all of them. The policy leaves it out where its
  transforms cost more memory than the step can spare (the memory mode,
  bfloat16 second-order steps).
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from meta_drn_tf.network.kernels import MIN_TAP_FLOPS, STOCK, WINOGRAD_MIN_CHANNEL_PRODUCT, KernelPolicy


def same_conv2d(inputs: tf.Tensor, kernel: tf.Tensor, dilation: int = 1, policy: KernelPolicy = STOCK) -> tf.Tensor:
    """`tf.nn.convolution(inputs, kernel, padding="SAME", dilations=dilation)` at stride 1.

    Args:
        inputs: `(batch, H, W, C_in)`.
        kernel: `(k, k, C_in, C_out)` with k odd.
        dilation: the dilation rate.
        policy: which forms (`kernels.KernelPolicy`): stock, TensorFlow's op and its gradients;
            cpu, the forms of this module.

    Returns:
        `(batch, H, W, C_out)`.
    """
    if kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise ValueError(f"same_conv2d needs an odd kernel size, got {kernel.shape[:2]}")
    dilation = int(dilation)
    if policy.cpu_forms:
        return _convolutions(dilation, policy)(inputs, kernel)
    if dilation == 1 or policy.dilated_gradients_in_one_op:
        # One op whose registered gradients take the dilation (cuDNN, XLA); tf.nn.convolution
        # would go through space-to-batch for a dilated one.
        return tf.raw_ops.Conv2D(input=inputs, filter=kernel, strides=[1, 1, 1, 1], padding="SAME",
                                 dilations=[1, dilation, dilation, 1])
    # TensorFlow's CPU kernels have no dilated gradients: its space-to-batch form runs everywhere.
    return tf.nn.convolution(inputs, kernel, padding="SAME", dilations=dilation)


def _flip(kernel: tf.Tensor) -> tf.Tensor:
    """The kernel of the input gradient: flipped in space, input and output channels swapped."""
    return tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])


def _convolve(x: tf.Tensor, kernel: tf.Tensor, dilation: int, policy: KernelPolicy, flipped: bool = False):
    """conv(x, kernel), or with `flipped` conv(x, _flip(kernel)), forward only, in `policy`'s CPU forms."""
    # The flipped kernel's channel product is the kernel's: the same test for both.
    if winograd_applies(x.shape, kernel.shape, dilation, x.dtype, policy.winograd_min_channel_product):
        return _winograd_conv(x, kernel, dilation, flipped)
    if flipped:
        # Not before x exists: the kernels are there from the start of a step, and every
        # layer's flipped copy would be made then and kept until the backward pass reaches it.
        with tf.control_dependencies([x]):
            kernel = _flip(kernel)
    # Dilated in one op: tf.nn.convolution goes through space-to-batch for dilations (for its
    # own gradient), slower on CPUs (docs/performance.md).
    return tf.raw_ops.Conv2D(input=x, filter=kernel, strides=[1, 1, 1, 1], padding="SAME",
                             dilations=[1, dilation, dilation, 1])


def _kernel_gradient_value(x: tf.Tensor, dy: tf.Tensor, kernel_shape, dilation: int, policy: KernelPolicy):
    """d<conv(x, kernel), dy>/d kernel, first order only, in the fastest form `policy` allows here."""
    if winograd_applies(x.shape, kernel_shape, dilation, x.dtype, policy.winograd_min_channel_product):
        return _winograd_kernel_gradient(x, dy, dilation)
    if taps_pay_off(x.shape, kernel_shape, policy.min_tap_flops):
        return _kernel_gradient_by_taps(x, dy, kernel_shape, dilation)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        placeholder = tf.zeros(kernel_shape, x.dtype)
        tape.watch(placeholder)
        # Only its gradient graph is used (pruned in tf.function): TensorFlow's, through
        # space-to-batch where dilated (its CPU kernel gradient takes no dilations).
        y = tf.nn.convolution(x, placeholder, padding="SAME", dilations=dilation)
    return tape.gradient(y, placeholder, output_gradients=dy)


@functools.cache
def _convolutions(dilation: int, policy: KernelPolicy):
    """conv(x, kernel) with its gradients of every order, for one dilation, in `policy`'s CPU forms:
    its first-order functions use Winograd's F(2x2, 3x3) where `winograd_applies`."""

    @tf.custom_gradient
    def conv(x, kernel):
        return _convolve(x, kernel, dilation, policy), lambda dy: backward(x, dy, kernel)

    @tf.custom_gradient
    def backward(x, dy, kernel):
        """conv's gradients (dx, dK) as one function, so that its own gradient sees both cotangents."""

        def second_order(g_dx, g_dk):
            # g_dk (from the fast weights' cotangents) is known when the second-order pass starts;
            # conv(x, g_dk) and conv_flipped(dy, g_dk) wait for g_dx, which arrives when the pass
            # reaches this layer: otherwise every layer's full-size terms are made at the start
            # and kept until then.
            with tf.control_dependencies([g_dx]):
                g_x, g_dy_by_dx, g_dy_by_dk, g_kernel = _one_after_another(
                    lambda: conv_flipped(dy, g_dk), lambda: conv(g_dx, kernel), lambda: conv(x, g_dk),
                    lambda: flipped_kernel_gradient(dy, g_dx, kernel.shape))
            return g_x, g_dy_by_dx + g_dy_by_dk, g_kernel

        terms = (lambda: conv_flipped(dy, kernel), lambda: kernel_gradient(x, dy, kernel.shape))
        dx, dk = _one_after_another(*terms) if policy.terms_in_turn else [term() for term in terms]
        return (dx, dk), second_order

    @tf.custom_gradient
    def conv_flipped(x, kernel):
        """conv(x, _flip(kernel)), the input gradient, as a function of the unflipped kernel: its
        own gradients (second order) need `kernel` itself, which the weights keep alive anyway,
        where a flipped copy would be kept for them and flipped back."""

        def grad(dy):
            return conv(dy, kernel), flipped_kernel_gradient(x, dy, kernel.shape)

        return _convolve(x, kernel, dilation, policy, flipped=True), grad

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
            # <dK, g> = <conv(x, g), dy>: its gradients are two forward convolutions.
            return _kernel_gradient_value(x, dy, kernel_shape, dilation, policy), \
                lambda g: (conv_flipped(dy, g), conv(x, g))

        return gradient(x, dy)

    return conv


def _one_after_another(*terms) -> list[tf.Tensor]:
    """Each of `terms` (functions of no argument) called once the previous one's result exists,
    and their results, none of them released before the last exists. A layer's gradient terms
    in turn, and the next layer's not beside them: each may hold Winograd's transforms, 12x an
    activation's size while it runs, and two layers' at once were a MAML step's tensor peak."""
    results = []
    for term in terms:
        with tf.control_dependencies(results[-1:]):
            results.append(term())
    with tf.control_dependencies(results[-1:]):
        return [tf.identity(result) for result in results[:-1]] + results[-1:]


# From this ratio of the unshifted side's channels to the shifted side's, the shifted copies are
# stacked into one product: products of few columns run far below a CPU's rate (docs/performance.md).
SIDE_BY_SIDE_CHANNEL_RATIO = 8


def taps_pay_off(input_shape: tf.TensorShape, kernel_shape: tf.TensorShape,
                            min_tap_flops: int | None = MIN_TAP_FLOPS) -> bool:
    """Whether the kernel gradient is computed tap by tap: for layers of at least `min_tap_flops`
    per tap (None: never), where a CPU's matrix products beat `Conv2DBackpropFilter`. On a GPU,
    cuDNN's kernel gradient is one launch where the taps would be nine products and eight copies."""
    if min_tap_flops is None:
        return False
    rows = input_shape[0:3].num_elements()  # None while the batch or image size is unknown
    return rows is not None and 2 * rows * kernel_shape[2] * kernel_shape[3] >= min_tap_flops


def _kernel_gradient_by_taps(x: tf.Tensor, dy: tf.Tensor, kernel_shape, dilation: int) -> tf.Tensor:
    """dK[i, j] = X(i, j)^T dY, with X(i, j) the padded input shifted by tap (i, j), pixels as rows.

    One plain matrix product per kernel tap instead of `Conv2DBackpropFilter`: faster on
    CPUs at dilation 1 with many channels, as fast elsewhere, and no space-to-batch layout
    for dilated kernels (measurements: docs/performance.md). Of x and dy, the
    one with fewer channels is the one shifted (copied): dY shifted the opposite way
    gives the same sums. It is shifted channels first, so that each shifted copy is
    X(i, j)^T itself, the left operand as the CPU's matrix product reads it fastest
    (faster than `transpose_a`). Where the other side has many times more channels (the
    512 -> 16 output convolution), the copies are stacked into one matrix and the product
    is one: products of a few columns each run far below the CPU's rate.
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


def winograd_applies(input_shape: tf.TensorShape, kernel_shape: tf.TensorShape, dilation: int, dtype,
                     min_channel_product: int | None = WINOGRAD_MIN_CHANNEL_PRODUCT) -> bool:
    """Whether a 3x3 convolution (and its kernel gradient) goes through Winograd's F(2x2, 3x3): in
    float32, float64 or bfloat16, for layers of >= `min_channel_product` channel pairs (None:
    never) whose height and width are known and multiples of 2 x dilation (2x2 output tiles of
    every space-to-batch phase). Winograd needs 16 products of (pixels / 4) rows where the direct
    convolution needs 9 of (pixels) rows: 2.25x fewer multiplications, for transforms that only
    add. In bfloat16 the transformed tiles and kernels round too, so its errors are a few times a
    direct bfloat16 convolution's (docs/performance.md)."""
    if min_channel_product is None or tuple(kernel_shape[:2]) != (3, 3):
        return False
    if dtype not in (tf.float32, tf.float64, tf.bfloat16) or kernel_shape[2] * kernel_shape[3] < min_channel_product:
        return False
    height, width = input_shape[1], input_shape[2]
    return height is not None and width is not None and height % (2 * dilation) == 0 and width % (2 * dilation) == 0


# Winograd's F(2x2, 3x3) matrices (Lavin & Gray 2016), as Kronecker products over a tile's two axes:
# the transforms of 4x4 input tiles, 3x3 kernels and 4x4 products are then one matrix product each.
_B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])  # input: Bᵀ d B
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])  # kernel: G g Gᵀ
_A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])  # output: Aᵀ m A
_INPUT_TRANSFORM = np.kron(_B_T, _B_T)  # (16, 16): a tile's 16 entries (r, s) -> its 16 transformed entries
_KERNEL_TRANSFORM = np.kron(_G, _G)  # (16, 9)
_OUTPUT_TRANSFORM = np.kron(_A_T, _A_T)  # (4, 16): 16 products -> a tile's 2x2 outputs


def _tile_entries(height: int, width: int, dilation: int) -> np.ndarray:
    """Where the 4x4 input tiles' entries are in one zero-padded image flattened to rows of
    channels, `(16, tiles)`, entries (r, s) first, then tiles in the order (i, p, j, q).

    A dilated convolution is an undilated one of each of the dilation² interleaved sub-images
    (phases p, q); its 2x2 output tile i, j of phase p, q reads the padded image's rows
    p + d·(2i + r) and columns q + d·(2j + s) for r, s < 4 (pad d on every side)."""
    d = dilation
    r, s, i, p, j, q = np.ix_(range(4), range(4), range(height // (2 * d)), range(d), range(width // (2 * d)), range(d))
    rows, columns = p + d * (2 * i + r), q + d * (2 * j + s)
    return (rows * (width + 2 * d) + columns).reshape(16, -1).astype(np.int32)


def _transformed_input(x: tf.Tensor, dilation: int) -> tf.Tensor:
    """Bᵀ d B of every 4x4 tile: `(batch, H, W, C)` -> `(16, batch·H·W/4, C)`, tiles ordered
    (image, i, p, j, q). One gather of the 16 entries of every tile, one product with the
    16 x 16 transform: in bfloat16 the product sums in float32 and rounds once."""
    height, width, channels = x.shape[1:]
    d = dilation
    padded = tf.pad(x, [[0, 0], [d, d], [d, d], [0, 0]])
    image_size = (height + 2 * d) * (width + 2 * d)
    entries = _tile_entries(height, width, d)  # (16, tiles of one image)
    first_rows = tf.range(tf.shape(x)[0]) * image_size  # each image's first row in the flattened batch
    rows = tf.reshape(entries[:, None, :] + first_rows[None, :, None], [-1])
    tiles = tf.reshape(tf.gather(tf.reshape(padded, [-1, channels]), rows), [16, -1])
    transformed = tf.matmul(tf.constant(_INPUT_TRANSFORM, x.dtype), tiles)
    return tf.reshape(transformed, [16, -1, channels])


def _transformed_kernel(kernel: tf.Tensor, flipped: bool) -> tf.Tensor:
    """G g Gᵀ: `(3, 3, C_in, C_out)` -> `(16, C_in, C_out)`; with `flipped`, that of the kernel
    flipped in space (its channels are swapped by the product that uses it)."""
    transform = _KERNEL_TRANSFORM[:, ::-1] if flipped else _KERNEL_TRANSFORM
    transformed = tf.matmul(tf.constant(transform, kernel.dtype), tf.reshape(kernel, [9, -1]))
    return tf.reshape(transformed, [16, *kernel.shape[2:]])


def _tile_layout(height: int, width: int, dilation: int, channels: int) -> list[int]:
    """An output `(batch, H, W, C)` viewed as (image, i, row in tile, p, j, column in tile, q, C)."""
    d = dilation
    return [-1, height // (2 * d), 2, d, width // (2 * d), 2, d, channels]


def _outputs_in_place(outputs: tf.Tensor, height: int, width: int, dilation: int) -> tf.Tensor:
    """Every tile's 2x2 outputs `(4, tiles·C)`, tiles ordered as `_transformed_input`'s, put in
    place: `(batch, H, W, C)`."""
    channels, d = outputs.shape[-1], dilation
    outputs = tf.reshape(outputs, [2, 2, -1, height // (2 * d), d, width // (2 * d), d, channels])
    outputs = tf.transpose(outputs, [2, 3, 0, 4, 5, 1, 6, 7])  # into `_tile_layout`'s order
    return tf.reshape(outputs, [-1, height, width, channels])


def _images(x: tf.Tensor) -> list[slice]:
    """Winograd's pieces of a batch: one image at a time when the batch size is known (the
    transforms of several 224x224 queries at once raise MAML's working set), else all.
    A slice along the batch is a view of the batch, not a copy."""
    return [slice(None)] if x.shape[0] is None else [slice(i, i + 1) for i in range(x.shape[0])]


def _winograd_conv(x: tf.Tensor, kernel: tf.Tensor, dilation: int, flipped: bool = False) -> tf.Tensor:
    """`tf.nn.convolution(x, kernel, padding="SAME", dilations=dilation)` by Winograd's F(2x2, 3x3);
    with `flipped`, that of `_flip(kernel)` (the input gradient), without a flipped copy.

    Per image, four ops do the work: a gather of the input tiles, three matrix products (the
    input transform, the 16 products of transformed tiles and kernel, the output transform),
    then a transpose puts the outputs in place: faster than transforms of additions row by row
    (docs/performance.md)."""
    # Each transform waits for the other operand: the kernels exist from the start of a step, the
    # activations from the forward pass on, and a transform made early is kept until the layer is
    # reached (16/9 of a kernel's size, 4x an activation's), for every layer at once.
    with tf.control_dependencies([x]):
        transformed_kernel = _transformed_kernel(kernel, flipped)
    outputs, previous = [], [kernel]
    for images in _images(x):
        with tf.control_dependencies(previous):  # one image's transforms alive at a time
            transformed_x = _transformed_input(x[images], dilation)
        products = tf.matmul(transformed_x, transformed_kernel, transpose_b=flipped)
        image_outputs = tf.matmul(tf.constant(_OUTPUT_TRANSFORM, x.dtype), tf.reshape(products, [16, -1]))
        outputs.append(tf.reshape(image_outputs, [4, -1, products.shape[-1]]))  # (2x2 outputs, tiles, C)
        previous = outputs[-1:]
    outputs = tf.concat(outputs, axis=1) if len(outputs) > 1 else outputs[0]
    return _outputs_in_place(outputs, *x.shape[1:3], dilation)


def _winograd_kernel_gradient(x: tf.Tensor, dy: tf.Tensor, dilation: int) -> tf.Tensor:
    """d<conv(x, kernel), dy>/d kernel by the transposes of `_winograd_conv`'s steps: dy's 2x2
    tiles through Aᵀ's transpose, 16 products summed over the tiles (in float32 across images),
    then Gᵀ's transpose."""
    height, width, channels = dy.shape[1:]
    products, previous = [], [dy]
    for images in _images(x):
        # Not before dy exists: x's transform (4x its size) would be made during the forward pass
        # and kept, for every layer, until the backward pass reaches it.
        with tf.control_dependencies(previous):
            transformed_x = _transformed_input(x[images], dilation)
        tiles = tf.reshape(dy[images], _tile_layout(height, width, dilation, channels))
        tiles = tf.reshape(tf.transpose(tiles, [2, 5, 0, 1, 3, 4, 6, 7]), [4, -1])  # (2x2 outputs, tiles·C)
        transformed_dy = tf.matmul(tf.constant(_OUTPUT_TRANSFORM.T, dy.dtype), tiles)
        transformed_dy = tf.reshape(transformed_dy, [16, -1, channels])
        products.append(tf.matmul(transformed_x, transformed_dy, transpose_a=True))  # (16, C_in, C_out)
        previous = products[-1:]
    if len(products) > 1:  # bfloat16 images' products summed in float32
        products = [tf.cast(p, tf.float32) if p.dtype == tf.bfloat16 else p for p in products]
    products = tf.add_n(products)
    kernel = tf.matmul(tf.constant(_KERNEL_TRANSFORM.T, products.dtype), tf.reshape(products, [16, -1]))
    return tf.cast(tf.reshape(kernel, [3, 3, *products.shape[1:]]), x.dtype)
