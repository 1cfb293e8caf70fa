"""`same_conv2d`: TensorFlow's convolution, with gradients of every order computed by forward convolutions."""

import pytest
import tensorflow as tf

from meta_drn_tf.network import conv as conv_module
from meta_drn_tf.network.conv import same_conv2d
from meta_drn_tf.network.kernels import STOCK, KernelPolicy

# The cpu policy's forms, each forced on at the tests' small sizes (its thresholds are for real layers).
TAPS = KernelPolicy("cpu", min_tap_flops=0)
CPU_DIRECT = KernelPolicy("cpu")  # the input gradient as a forward convolution, TensorFlow's kernel gradient
WINOGRAD = KernelPolicy("cpu", winograd_min_channel_product=0, min_tap_flops=0)
# What an accelerator gets: TensorFlow's one-op dilated gradients (no CPU kernel takes them in float64; XLA does).
GPU_STOCK = KernelPolicy("stock", dilated_gradients_in_one_op=True)


def _reference(x, kernel, dilation):
    return tf.nn.convolution(x, kernel, padding="SAME", dilations=dilation, data_format="NHWC")


def _first_and_second_order(conv, x, kernel):
    """Gradients of a scalar of conv(x, kernel), and of a scalar of those gradients (what MAML needs)."""
    with tf.GradientTape() as outer:
        outer.watch([x, kernel])
        with tf.GradientTape() as inner:
            inner.watch([x, kernel])
            y = conv(x, kernel)
            loss = tf.reduce_sum(tf.sin(y))
        gx, gk = inner.gradient(loss, [x, kernel])
        objective = tf.reduce_sum(gx**2) + tf.reduce_sum(tf.cos(gk))
    return [y, gx, gk] + outer.gradient(objective, [x, kernel])


# Channels 3 -> 4 and 5 -> 2: the kernel gradient shifts the input, or the output gradient;
# 2 -> 17 and 17 -> 2: one side has 8x the other's channels, and the shifted copies go side by side.
@pytest.mark.parametrize("dilation, size, graph, channels", [
    (1, 3, False, (3, 4)), (2, 3, True, (3, 4)), (4, 3, False, (5, 2)), (1, 1, True, (3, 4)), (2, 3, True, (5, 2)),
    (1, 1, False, (5, 2)), (2, 3, False, (2, 17)), (1, 3, True, (17, 2)),
])
@pytest.mark.parametrize("policy", [TAPS, CPU_DIRECT, STOCK], ids=["taps", "cpu_direct", "stock"])
def test_values_and_gradients_of_both_orders_match_tensorflows(dilation, size, graph, channels, policy):
    x = tf.random.stateless_normal([2, 9, 10, channels[0]], seed=[0, 1], dtype=tf.float64)
    kernel = tf.random.stateless_normal([size, size, *channels], seed=[2, 3], dtype=tf.float64)
    ours = lambda x, k: _first_and_second_order(lambda a, b: same_conv2d(a, b, dilation, policy), x, k)  # noqa: E731
    ours = tf.function(ours) if graph else ours
    expected = _first_and_second_order(lambda a, b: _reference(a, b, dilation), x, kernel)
    for name, a, b in zip(("output", "d/dx", "d/dkernel", "d2/dx", "d2/dkernel"), ours(x, kernel), expected):
        tf.debugging.assert_near(a, b, rtol=1e-10, atol=1e-10, message=name)


def _third_order(conv, x, kernel):
    """Gradients of a scalar of `_first_and_second_order`'s second-order gradients."""
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        d2x, d2k = _first_and_second_order(conv, x, kernel)[3:]
        objective = tf.reduce_sum(tf.sin(d2x)) + tf.reduce_sum(d2k * kernel)
    return tape.gradient(objective, [x, kernel])


# Third order reaches the kernel gradient's own gradient, and the flipped convolution's.
@pytest.mark.parametrize("policy", [TAPS, CPU_DIRECT], ids=["taps", "cpu_direct"])
def test_third_order_gradients_match_tensorflows(policy):
    x = tf.random.stateless_normal([1, 6, 7, 3], seed=[4, 5], dtype=tf.float64)
    kernel = tf.random.stateless_normal([3, 3, 3, 2], seed=[6, 7], dtype=tf.float64)
    ours = _third_order(lambda a, b: same_conv2d(a, b, 2, policy), x, kernel)
    expected = _third_order(lambda a, b: _reference(a, b, 2), x, kernel)
    for name, a, b in zip(("d3/dx", "d3/dkernel"), ours, expected):
        tf.debugging.assert_near(a, b, rtol=1e-10, atol=1e-10, message=name)


# Sizes that are multiples of 2 x dilation, so that Winograd's 2x2 output tiles cover every phase.
@pytest.mark.parametrize("dilation, shape, graph", [
    (1, (2, 8, 12, 3), False), (2, (2, 8, 12, 5), True), (4, (1, 8, 16, 3), False), (1, (1, 6, 4, 5), True),
])
def test_winograd_values_and_gradients_of_three_orders_match_tensorflows(dilation, shape, graph):
    x = tf.random.stateless_normal(shape, seed=[0, 1], dtype=tf.float64)
    kernel = tf.random.stateless_normal([3, 3, shape[-1], 7 - shape[-1]], seed=[2, 3], dtype=tf.float64)
    assert conv_module.winograd_applies(x.shape, kernel.shape, dilation, x.dtype, 0)  # every 3x3 layer, however narrow
    ours = lambda a, b: _first_and_second_order(lambda a, b: same_conv2d(a, b, dilation, WINOGRAD), a, b)  # noqa: E731
    ours = tf.function(ours) if graph else ours
    expected = _first_and_second_order(lambda a, b: _reference(a, b, dilation), x, kernel)
    for name, a, b in zip(("output", "d/dx", "d/dkernel", "d2/dx", "d2/dkernel"), ours(x, kernel), expected):
        tf.debugging.assert_near(a, b, rtol=1e-10, atol=1e-10, message=name)
    third = _third_order(lambda a, b: same_conv2d(a, b, dilation, WINOGRAD), x, kernel)
    for name, a, b in zip(("d3/dx", "d3/dkernel"), third, _third_order(lambda a, b: _reference(a, b, dilation), x,
                                                                       kernel)):
        # Third-order terms reach 1e4 here: float64 rounding of the transforms' sums, relative to that.
        tf.debugging.assert_near(a, b, rtol=1e-10, atol=1e-11 * tf.reduce_max(tf.abs(b)), message=name)


@pytest.mark.parametrize("in_turn", [True, False])
@pytest.mark.parametrize("winograd", [True, False])
def test_gradients_are_the_same_with_a_layers_terms_in_turn_or_side_by_side(in_turn, winograd):
    """The order of a layer's gradient terms (oneDNN's kernels: in turn) changes no value."""
    policy = KernelPolicy("cpu", winograd_min_channel_product=0 if winograd else None, terms_in_turn=in_turn)
    x = tf.random.stateless_normal([2, 8, 8, 3], seed=[14, 15], dtype=tf.float64)
    kernel = tf.random.stateless_normal([3, 3, 3, 4], seed=[16, 17], dtype=tf.float64)
    ours = tf.function(lambda a, b: _first_and_second_order(lambda a, b: same_conv2d(a, b, 2, policy), a, b))(x, kernel)
    expected = _first_and_second_order(lambda a, b: _reference(a, b, 2), x, kernel)
    for name, a, b in zip(("output", "d/dx", "d/dkernel", "d2/dx", "d2/dkernel"), ours, expected):
        tf.debugging.assert_near(a, b, rtol=1e-10, atol=1e-10, message=name)


def test_winograd_goes_one_image_at_a_time_when_the_batch_size_is_known():
    """A known batch goes one image at a time; one of unknown size (a SavedModel's) all at once."""
    x = tf.random.stateless_normal([3, 8, 12, 4], seed=[4, 5], dtype=tf.float64)
    kernel = tf.random.stateless_normal([3, 3, 4, 5], seed=[6, 7], dtype=tf.float64)
    dy = tf.random.stateless_normal([3, 8, 12, 5], seed=[8, 9], dtype=tf.float64)

    def value_and_gradients(convolve):
        def fn(x, kernel, dy):
            with tf.GradientTape() as tape:
                tape.watch([x, kernel])
                y = convolve(x, kernel)
            return [y, *tape.gradient(y, [x, kernel], output_gradients=dy)]
        return fn

    def traced(batch):
        return tf.function(value_and_gradients(lambda a, b: same_conv2d(a, b, 2, WINOGRAD)), input_signature=[
            tf.TensorSpec([batch, 8, 12, 4], tf.float64), tf.TensorSpec([3, 3, 4, 5], tf.float64),
            tf.TensorSpec([batch, 8, 12, 5], tf.float64)])

    def batched_products(batch):  # 16 products per image, or per batch, in a BatchMatMulV2
        return sum(op.type == "BatchMatMulV2" for op in traced(batch).get_concrete_function().graph.get_operations())

    assert batched_products(3) == 3 * batched_products(1) == 9  # convolution, input and kernel gradients
    assert batched_products(None) == 3
    expected = value_and_gradients(lambda a, b: _reference(a, b, 2))(x, kernel, dy)
    for batch in (3, None):
        for name, a, b in zip(("output", "d/dx", "d/dkernel"), traced(batch)(x, kernel, dy), expected):
            tf.debugging.assert_near(a, b, rtol=1e-10, atol=1e-10, message=f"{name}, batch {batch}")


def test_winograd_only_where_it_was_measured_faster():
    wide, narrow = tf.TensorShape([3, 3, 512, 512]), tf.TensorShape([3, 3, 128, 256])
    image = tf.TensorShape([None, 56, 56, 512])
    assert conv_module.winograd_applies(image, wide, 4, tf.float32)
    assert conv_module.winograd_applies(image, wide, 1, tf.bfloat16)
    assert conv_module.winograd_applies(image, tf.TensorShape([3, 3, 256, 256]), 2, tf.bfloat16)
    assert not conv_module.winograd_applies(image, narrow, 1, tf.float32)
    assert not conv_module.winograd_applies(image, wide, 1, tf.float16)
    assert not conv_module.winograd_applies(tf.TensorShape([1, 54, 54, 512]), wide, 2, tf.float32)  # 27 is odd
    assert not conv_module.winograd_applies(tf.TensorShape([1, None, None, 512]), wide, 1, tf.float32)
    assert not conv_module.winograd_applies(image, tf.TensorShape([1, 1, 512, 512]), 1, tf.float32)
    assert not conv_module.winograd_applies(image, wide, 1, tf.float32, None)  # a policy without Winograd


def test_even_kernels_are_refused():
    with pytest.raises(ValueError, match="odd kernel"):
        same_conv2d(tf.zeros([1, 4, 4, 1]), tf.zeros([2, 2, 1, 1]))


def test_taps_only_for_large_layers_of_known_size():
    big, small = tf.TensorShape([1, 224, 224, 64]), tf.TensorShape([2, 16, 16, 4])
    assert conv_module.taps_pay_off(big, tf.TensorShape([3, 3, 64, 64]))
    assert not conv_module.taps_pay_off(small, tf.TensorShape([3, 3, 4, 8]))
    assert not conv_module.taps_pay_off(tf.TensorShape([1, None, None, 64]), tf.TensorShape([3, 3, 64, 64]))
    assert not conv_module.taps_pay_off(big, tf.TensorShape([3, 3, 64, 64]), None)  # a policy without taps


@pytest.mark.parametrize("dilation, batch", [(1, 1), (2, 2)])  # a batch of 2: kernel gradients summed over images
def test_bfloat16_winograd_errs_a_few_roundings_more_than_a_direct_bfloat16_convolution(dilation, batch):
    """bfloat16 Winograd rounds its transformed tiles and kernels too: its values and kernel gradient
    stay within 3x the relative error of the direct bfloat16 forms (2x measured on an AVX512-BF16 host)
    or within four bfloat16 roundings (2^-8 each), whichever is larger: where the direct forms
    accumulate in float32 (Eigen's kernels on AVX2 hosts: 0.003) Winograd's four roundings are the
    larger bound (0.012 measured). A wrong transform would be off by 100%."""
    x = tf.random.stateless_normal([batch, 16, 16, 48], seed=[8, 9], dtype=tf.float64)
    kernel = tf.random.stateless_normal([3, 3, 48, 40], seed=[10, 11], dtype=tf.float64) / 20.0
    dy = tf.random.stateless_normal([batch, 16, 16, 40], seed=[12, 13], dtype=tf.float64)

    def value_and_kernel_gradient(convolve, x, kernel):
        with tf.GradientTape() as tape:
            tape.watch(kernel)
            y = convolve(x, kernel)
        return [tf.cast(t, tf.float64) for t in (y, tape.gradient(y, kernel, output_gradients=tf.cast(dy, y.dtype)))]

    def error(convolve):
        low = [tf.cast(t, tf.bfloat16) for t in (x, kernel)]
        exact = value_and_kernel_gradient(lambda a, b: _reference(a, b, dilation), x, kernel)
        return [float(tf.norm(a - b) / tf.norm(b)) for a, b in zip(value_and_kernel_gradient(convolve, *low), exact)]

    assert conv_module.winograd_applies(x.shape, kernel.shape, dilation, tf.bfloat16, 0)
    winograd = error(lambda a, b: same_conv2d(a, b, dilation, WINOGRAD))
    direct = error(lambda a, b: same_conv2d(a, b, dilation, TAPS))
    for name, ours, theirs in zip(("value", "kernel gradient"), winograd, direct):
        assert ours < max(3 * theirs, 4 * 2.0**-8), (name, ours, theirs)


def _op_types(fn, *specs) -> set[str]:
    graph = tf.function(fn).get_concrete_function(*specs).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.parametrize("dilation", [1, 2])
def test_accelerator_stock_policy_is_one_conv_op_with_one_op_gradients_of_both_orders(dilation):
    """What a GPU runs: Conv2D and TensorFlow's one-op gradients (cuDNN takes the dilation), no
    space-to-batch, no Winograd; run here under XLA (TensorFlow's CPU kernels have no dilated gradients)."""
    x = tf.random.stateless_normal([2, 8, 8, 3], seed=[20, 21], dtype=tf.float64)
    kernel = tf.random.stateless_normal([3, 3, 3, 4], seed=[22, 23], dtype=tf.float64)
    ours = lambda a, b: _first_and_second_order(lambda a, b: same_conv2d(a, b, dilation, GPU_STOCK), a, b)  # noqa: E731
    types = _op_types(ours, tf.TensorSpec(x.shape, tf.float64), tf.TensorSpec(kernel.shape, tf.float64))
    assert {"Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter"} <= types
    assert not types & {"SpaceToBatchND", "BatchToSpaceND", "BatchMatMulV2", "GatherV2"}, types
    expected = _first_and_second_order(lambda a, b: _reference(a, b, dilation), x, kernel)
    for name, a, b in zip(("output", "d/dx", "d/dkernel", "d2/dx", "d2/dkernel"),
                          tf.function(ours, jit_compile=True)(x, kernel), expected):
        tf.debugging.assert_near(a, b, rtol=1e-10, atol=1e-10, message=name)
