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

On CPUs, wide 3x3 layers (>= 512 x 512 channels) compute the convolution and its kernel
gradient by Winograd's F(2x2, 3x3): 16 products of a quarter of the pixels where the direct
forms need 9 of all of them, 1.2-1.3x faster here (docs/performance.md, changes 7 and 9).
Second-order meta-steps trace inside `direct_convolutions()`: there Winograd's transforms cost
more memory than they save time.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import tensorflow as tf

_direct_only = False  # set while `direct_convolutions()` is open


@contextlib.contextmanager
def direct_convolutions() -> Iterator[None]:
    """`same_conv2d`s created inside use no Winograd: second-order meta-steps and the memory mode
    (`MetaConfig.memory_saving`) trace within it.

    Winograd's transforms are 4x an activation's size; in a second-order MAML step several
    layers' are alive at once and its working set grew from 0.53 to 0.74-0.83 GiB (measured),
    where the first-order algorithms, which gain the most time, stay well below the PyTorch
    peer's. A plain flag, not a thread-local one: `tf.distribute.MirroredStrategy` traces its
    replicas on threads of its own.
    """
    global _direct_only
    previous, _direct_only = _direct_only, True
    try:
        yield
    finally:
        _direct_only = previous


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
    return _convolutions(int(dilation), winograd=not _direct_only)(inputs, kernel)


def _flip(kernel: tf.Tensor) -> tf.Tensor:
    """The kernel of the input gradient: flipped in space, input and output channels swapped."""
    return tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])


@functools.cache
def _convolutions(dilation: int, winograd: bool):
    """conv(x, kernel) with its gradients of every order, for one dilation; with `winograd`, its
    first-order functions use Winograd's F(2x2, 3x3) where `winograd_applies`."""

    def convolve(x, kernel):
        if winograd and winograd_applies(x.shape, kernel.shape, dilation, x.dtype):
            return _winograd_conv(x, kernel, dilation)
        # Dilated in one op: tf.nn.convolution goes through space-to-batch for dilations (for its
        # own gradient), 1-2 ms more per 56x56x512 convolution here.
        return tf.raw_ops.Conv2D(input=x, filter=kernel, strides=[1, 1, 1, 1], padding="SAME",
                                 dilations=[1, dilation, dilation, 1])

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
            if winograd and winograd_applies(x.shape, kernel_shape, dilation, x.dtype):
                value = _winograd_kernel_gradient(x, dy, dilation)
            elif kernel_gradient_by_taps(x.shape, kernel_shape):
                value = _kernel_gradient_by_taps(x, dy, kernel_shape, dilation)
            else:
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    placeholder = tf.zeros(kernel_shape, x.dtype)
                    tape.watch(placeholder)
                    # Only its gradient graph is used (pruned in tf.function): TensorFlow's, through
                    # space-to-batch where dilated (its CPU kernel gradient takes no dilations).
                    y = tf.nn.convolution(x, placeholder, padding="SAME", dilations=dilation)
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


# Winograd's F(2x2, 3x3) is used from this many input x output channels (512 x 512). From 256 x
# 256 it is 1.1-1.3x faster in float32 than TensorFlow's CPU convolution and the taps (change 7),
# but each layer adds ~170 small ops to the graph and 4x-activation transforms: 0.05 GiB more
# working set for 256 x 512 and 256 x 256 layers together, for 2-4% of a FOMAML step; in
# bfloat16 its transforms are slower elementwise ops and gain nothing there (change 9).
WINOGRAD_MIN_CHANNEL_PRODUCT = 2**18


def winograd_applies(input_shape: tf.TensorShape, kernel_shape: tf.TensorShape, dilation: int, dtype) -> bool:
    """Whether a 3x3 convolution (and its kernel gradient) goes through Winograd's F(2x2, 3x3): on
    CPUs, in float32, float64 or bfloat16, for layers of >= `WINOGRAD_MIN_CHANNEL_PRODUCT` channel
    pairs whose height and width are known and multiples of 2 x dilation (2x2 output tiles of
    every space-to-batch phase). Winograd needs 16 products of (pixels / 4) rows where the direct
    convolution needs 9 of (pixels) rows: 2.25x fewer multiplications, for four transforms that
    only add. In bfloat16 its transforms round too: relative errors 2-3x a direct bfloat16
    convolution's (7e-3 against 3e-3 at 56x56x512)."""
    if tuple(kernel_shape[:2]) != (3, 3) or dtype not in (tf.float32, tf.float64, tf.bfloat16):
        return False
    if kernel_shape[2] * kernel_shape[3] < WINOGRAD_MIN_CHANNEL_PRODUCT:
        return False
    if tf.config.list_logical_devices("GPU"):
        return False
    height, width = input_shape[1], input_shape[2]
    return height is not None and width is not None and height % (2 * dilation) == 0 and width % (2 * dilation) == 0


def _phases(t: tf.Tensor, axis: int, length: int) -> list[tf.Tensor]:
    """t's entries 2i + s along `axis` (2·length + 2 of them) for i < length and s = 0, 1, 2, 3: the
    four rows (or columns) of every 4x4 tile, tiles 2 apart. The even and the odd entries are
    gathered once, by a reshape (strided slices are slow), and each phase is a slice of them."""
    shape = tf.shape(t)
    pairs = tf.reshape(t, tf.concat([shape[:axis], [length + 1, 2], shape[axis + 1:]], 0))
    even, odd = tf.gather(pairs, 0, axis=axis + 1), tf.gather(pairs, 1, axis=axis + 1)

    def entries(u, start):
        begin, size = [0] * t.shape.rank, [-1] * t.shape.rank
        begin[axis], size[axis] = start, length
        return tf.slice(u, begin, size)

    return [entries(even, 0), entries(odd, 0), entries(even, 1), entries(odd, 1)]


def _input_rows(d: list[tf.Tensor]) -> list[tf.Tensor]:
    """Bᵀ d along one axis: B's rows are (1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)."""
    return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]


def _kernel_rows(g: list[tf.Tensor]) -> list[tf.Tensor]:
    """G g along one axis: G's rows are (1, 0, 0), (1/2, 1/2, 1/2), (1/2, -1/2, 1/2), (0, 0, 1)."""
    return [g[0], 0.5 * (g[0] + g[1] + g[2]), 0.5 * (g[0] - g[1] + g[2]), g[2]]


def _output_rows(m: list[tf.Tensor]) -> list[tf.Tensor]:
    """Aᵀ m along one axis: A's rows are (1, 1, 1, 0), (0, 1, -1, -1)."""
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def _output_columns(p: list[tf.Tensor]) -> list[tf.Tensor]:
    """A p along one axis (the transpose of `_output_rows`): A's columns are (1, 0), (1, 1), (1, -1), (0, -1)."""
    return [p[0], p[0] + p[1], p[0] - p[1], -p[1]]


def _kernel_columns(u: list[tf.Tensor]) -> list[tf.Tensor]:
    """Gᵀ u along one axis (the transpose of `_kernel_rows`)."""
    return [u[0] + 0.5 * (u[1] + u[2]), 0.5 * (u[1] - u[2]), 0.5 * (u[1] + u[2]) + u[3]]


def _input_tile_rows(x: tf.Tensor) -> list[tf.Tensor]:
    """The input transform's first half, Bᵀ along every 4x4 tile's rows of the padded input:
    `(batch, H, W, C)` -> 4 tensors `(batch, H/2, W + 2, C)`, one per row a of the transformed tiles."""
    padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    return _input_rows(_phases(padded, 1, x.shape[1] // 2))


def _input_tile_columns(rows: tf.Tensor) -> tf.Tensor:
    """Its second half for one row a: `(batch, H/2, W + 2, C)` -> `(4, batch·H/2·W/2, C)`, B along the columns."""
    width = rows.shape[2] - 2
    return tf.stack([tf.reshape(v, [-1, rows.shape[-1]]) for v in _input_rows(_phases(rows, 2, width // 2))])


def _output_tile_rows(dy: tf.Tensor) -> list[tf.Tensor]:
    """The output transform's transpose for the kernel gradient, its first half (A along the rows):
    `(batch, H, W, C)` -> 4 tensors `(batch, H/2, W/2, 2, C)`, one per row a of the transformed tiles."""
    height, width, channels = dy.shape[1:]
    outputs = tf.reshape(dy, [-1, height // 2, 2, width // 2, 2, channels])  # each tile's 2x2 outputs
    return _output_columns([tf.gather(outputs, i, axis=2) for i in range(2)])


def _output_tile_columns(rows: tf.Tensor) -> tf.Tensor:
    """Its second half for one row a: `(batch, H/2, W/2, 2, C)` -> `(4, batch·H/2·W/2, C)`."""
    return tf.stack([tf.reshape(v, [-1, rows.shape[-1]])
                     for v in _output_columns([tf.gather(rows, j, axis=3) for j in range(2)])])


def _output_tile(m: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """A row a of products `(4, batch·H/2·W/2, C)` -> `(batch, H/2, W/2, 2, C)`: Aᵀ along its columns,
    each tile's two output columns; `_output_rows` of the four rows then gives the output rows."""
    m = tf.reshape(m, [4, -1, height // 2, width // 2, m.shape[-1]])
    return tf.stack(_output_rows([m[b] for b in range(4)]), axis=3)


def _to_phases(x: tf.Tensor, dilation: int) -> tf.Tensor:
    """A dilated convolution is an undilated one on each of the dilation² interleaved sub-images."""
    return x if dilation == 1 else tf.space_to_batch_nd(x, [dilation, dilation], [[0, 0], [0, 0]])


def _winograd_conv(x: tf.Tensor, kernel: tf.Tensor, dilation: int) -> tf.Tensor:
    """`tf.nn.convolution(x, kernel, padding="SAME", dilations=dilation)` by Winograd's F(2x2, 3x3).

    The 16 products of transformed tiles go four at a time, one row a of the 4x4 transformed
    tile after the other, each transform waiting for the previous row's product: all 16 at once
    kept 4x the input and 4x the output alive, twice over while stacked, and the peak of a
    FOMAML step was two such layers at once (docs/performance.md, change 8).
    """
    # Each transform waits for the other operand: the kernels exist from the start of a step, the
    # activations from the forward pass on, and a transform made early is kept until the layer is
    # reached (16/9 of a kernel's size, 4x an activation's), for every layer at once.
    with tf.control_dependencies([kernel]):
        phases = _to_phases(x, dilation)
        input_rows = _input_tile_rows(phases)
    with tf.control_dependencies([x]):
        kernel_rows = _kernel_rows([kernel[i] for i in range(3)])  # kernel_rows[a][j]: G along i
    output_tiles, previous = [], []
    for a in range(4):
        with tf.control_dependencies(previous):
            transformed_x = _input_tile_columns(input_rows[a])
            transformed_kernel = tf.stack(_kernel_rows([kernel_rows[a][j] for j in range(3)]))
        products = tf.matmul(transformed_x, transformed_kernel)
        previous = [products]
        output_tiles.append(_output_tile(products, *phases.shape[1:3]))
    y = tf.stack(_output_rows(output_tiles), axis=2)  # (batch, H/2, 2, W/2, 2, C_out)
    y = tf.reshape(y, [-1, *phases.shape[1:3], kernel.shape[-1]])
    return y if dilation == 1 else tf.batch_to_space(y, [dilation, dilation], [[0, 0], [0, 0]])


def _winograd_kernel_gradient(x: tf.Tensor, dy: tf.Tensor, dilation: int) -> tf.Tensor:
    """d<conv(x, kernel), dy>/d kernel by the transposes of `_winograd_conv`'s steps, a row of the
    transformed tiles at a time as there."""
    # Not before dy exists: x's transform (4x its size) would be made during the forward pass and
    # kept, for every layer, until the backward pass reaches it.
    with tf.control_dependencies([dy]):
        input_rows = _input_tile_rows(_to_phases(x, dilation))
    output_rows = _output_tile_rows(_to_phases(dy, dilation))
    kernel_rows, previous = [], []  # kernel_rows[a]: Gᵀ along j, (3, C_in, C_out)
    for a in range(4):
        with tf.control_dependencies(previous):
            transformed_x = _input_tile_columns(input_rows[a])
            transformed_dy = _output_tile_columns(output_rows[a])
        products = tf.matmul(transformed_x, transformed_dy, transpose_a=True)  # (4, C_in, C_out)
        previous = [products]
        kernel_rows.append(tf.stack(_kernel_columns([products[b] for b in range(4)])))
    return tf.stack(_kernel_columns(kernel_rows))
