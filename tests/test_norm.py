"""`instance_norm`: values and first- and second-order gradients equal to the op-by-op composite's."""

import pytest
import tensorflow as tf

from meta_drn_tf.network.kernels import LITE, STOCK, KernelPolicy
from meta_drn_tf.network.norm import instance_norm

FUSED = KernelPolicy("cpu", fused_norm=True)  # the cpu policy's first-order steps


def _reference(x, gamma, beta, epsilon, slope):
    mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    variance = tf.reduce_mean(tf.square(x - mean), axis=[1, 2], keepdims=True)
    y = (x - mean) / tf.sqrt(variance + epsilon) * gamma + beta
    return y if slope is None else tf.nn.leaky_relu(y, slope)


def _first_and_second_order(norm, x, gamma, beta):
    """Gradients of a scalar of norm(...), and of a scalar of those gradients (what MAML needs)."""
    variables = [x, gamma, beta]
    with tf.GradientTape() as outer:
        outer.watch(variables)
        with tf.GradientTape() as inner:
            inner.watch(variables)
            y = norm(x, gamma, beta)
            loss = tf.reduce_sum(tf.sin(3.0 * y) * tf.cos(x))
        gx, ggamma, gbeta = inner.gradient(loss, variables)
        objective = (tf.cast(tf.reduce_sum(tf.sin(gx) * x), gamma.dtype) + tf.reduce_sum(ggamma * gamma**2)
                     + tf.reduce_sum(gbeta**3))
    return [y, gx, ggamma, gbeta] + outer.gradient(objective, variables)


@pytest.mark.parametrize("slope, graph", [(None, False), (0.1, False), (0.1, True), (None, True)])
def test_values_and_gradients_of_both_orders_match_the_composite(slope, graph):
    x = tf.random.stateless_normal([2, 5, 7, 3], seed=[0, 1], dtype=tf.float64) * 2.0 + 0.5
    gamma = tf.random.stateless_normal([3], seed=[2, 3], dtype=tf.float64)
    beta = tf.random.stateless_normal([3], seed=[4, 5], dtype=tf.float64)
    ours = lambda *a: _first_and_second_order(lambda x, g, b: instance_norm(x, g, b, 1e-3, slope), *a)  # noqa: E731
    ours = tf.function(ours) if graph else ours
    expected = _first_and_second_order(lambda x, g, b: _reference(x, g, b, 1e-3, slope), x, gamma, beta)
    names = ("output", "d/dx", "d/dgamma", "d/dbeta", "d2/dx", "d2/dgamma", "d2/dbeta")
    for name, a, b in zip(names, ours(x, gamma, beta), expected):
        tf.debugging.assert_near(a, b, rtol=1e-10, atol=1e-10, message=name)


@pytest.mark.parametrize("slope", [None, 0.1])
def test_tflite_forms_match_the_composite_without_a_squared_difference(slope):
    """TFLite files' norm (`LITE`): the same values and gradients, its variance a product (TFLite's
    SQUARED_DIFFERENCE has no int16 kernel)."""
    x = tf.random.stateless_normal([2, 5, 7, 3], seed=[12, 13], dtype=tf.float64) * 2.0 + 0.5
    gamma = tf.random.stateless_normal([3], seed=[14, 15], dtype=tf.float64)
    beta = tf.random.stateless_normal([3], seed=[16, 17], dtype=tf.float64)
    ours = _first_and_second_order(lambda x, g, b: instance_norm(x, g, b, 1e-3, slope, LITE), x, gamma, beta)
    expected = _first_and_second_order(lambda x, g, b: _reference(x, g, b, 1e-3, slope), x, gamma, beta)
    for a, b in zip(ours, expected):
        tf.debugging.assert_near(a, b, rtol=1e-10, atol=1e-10)

    def op_types(policy):
        traced = tf.function(lambda x: instance_norm(x, gamma, beta, 1e-3, slope, policy))
        return {op.type for op in traced.get_concrete_function(x).graph.get_operations()}

    assert "SquaredDifference" in op_types(STOCK) and "SquaredDifference" not in op_types(LITE)


@pytest.mark.parametrize("slope", [None, 0.1])
def test_third_order_gradients_match_the_composite(slope):
    x = tf.random.stateless_normal([2, 4, 3, 2], seed=[6, 7], dtype=tf.float64) * 2.0 + 0.5
    gamma = tf.random.stateless_normal([2], seed=[8, 9], dtype=tf.float64)
    beta = tf.random.stateless_normal([2], seed=[10, 11], dtype=tf.float64)

    def third_order(norm):
        variables = [x, gamma, beta]
        with tf.GradientTape() as tape:
            tape.watch(variables)
            d2x, d2gamma, d2beta = _first_and_second_order(norm, x, gamma, beta)[4:]
            objective = tf.reduce_sum(tf.cos(d2x)) + tf.reduce_sum(d2gamma * d2beta)
        return tape.gradient(objective, variables)

    ours = third_order(lambda x, g, b: instance_norm(x, g, b, 1e-3, slope))
    expected = third_order(lambda x, g, b: _reference(x, g, b, 1e-3, slope))
    for name, a, b in zip(("d3/dx", "d3/dgamma", "d3/dbeta"), ours, expected):
        tf.debugging.assert_near(a, b, rtol=1e-10, atol=1e-10, message=name)


def test_non_positive_slopes_are_refused():
    with pytest.raises(ValueError, match="leaky_slope must be positive"):
        instance_norm(tf.zeros([1, 2, 2, 1]), tf.ones([1]), tf.zeros([1]), 1e-3, leaky_slope=0.0)


@pytest.mark.parametrize("slope", [None, 0.1])
def test_narrower_inputs_are_normalized_in_the_statistics_dtype(slope):
    """A float32 x with float64 gamma and beta (as bfloat16 activations with float32 statistics in the
    layer): values and gradients of both orders of casting x up, normalizing and casting back."""
    x = tf.random.stateless_normal([2, 5, 7, 3], seed=[12, 13], dtype=tf.float64) * 2.0 + 0.5
    gamma = tf.random.stateless_normal([3], seed=[14, 15], dtype=tf.float64)
    beta = tf.random.stateless_normal([3], seed=[16, 17], dtype=tf.float64)
    x = tf.cast(x, tf.float32)
    ours = tf.function(lambda *a: _first_and_second_order(lambda x, g, b: instance_norm(x, g, b, 1e-3, slope), *a))
    widened = lambda x, g, b: tf.cast(_reference(tf.cast(x, tf.float64), g, b, 1e-3, slope), tf.float32)  # noqa: E731
    expected = _first_and_second_order(widened, x, gamma, beta)
    names = ("output", "d/dx", "d/dgamma", "d/dbeta", "d2/dx", "d2/dgamma", "d2/dbeta")
    for name, a, b in zip(names, ours(x, gamma, beta), expected):
        assert a.dtype == b.dtype, name
        # float32 rounding of the largest entry (second-order terms reach 1e4-1e6 here)
        tolerance = 1e-6 * float(tf.reduce_max(tf.abs(b)))
        tf.debugging.assert_near(a, b, rtol=0.0, atol=tolerance, message=name)


def _first_order(norm, x, gamma, beta):
    variables = [x, gamma, beta]
    with tf.GradientTape() as tape:
        tape.watch(variables)
        y = norm(x, gamma, beta)
        loss = tf.reduce_sum(tf.sin(3.0 * tf.cast(y, tf.float32)) * tf.cos(tf.cast(x, tf.float32)))
    return [y] + tape.gradient(loss, variables)


def _assert_float32_rounding(ours, expected, names):
    """float32 results against float64 ones, to 1e-5 of each result's largest entry."""
    for name, a, b in zip(names, ours, expected, strict=True):
        tf.debugging.assert_near(tf.cast(a, tf.float64), b, rtol=0.0, atol=1e-5 * float(tf.reduce_max(tf.abs(b))),
                                 message=name)


@pytest.mark.parametrize("batch, slope, graph", [(1, 0.1, True), (3, 0.1, False), (3, None, True), (1, None, False)])
def test_first_order_norms_run_fused_kernels_with_the_same_values_and_gradients(batch, slope, graph):
    """Under a policy with fused norms (batches of 1 and of several images, each normalized on its own):
    float32 values and gradients of the float64 composite's, rounded."""
    x = tf.random.stateless_normal([batch, 6, 5, 4], seed=[18, 19], dtype=tf.float64) * 2.0 + 0.5
    gamma = tf.random.stateless_normal([4], seed=[20, 21], dtype=tf.float64)
    beta = tf.random.stateless_normal([4], seed=[22, 23], dtype=tf.float64)
    expected = _first_order(lambda x, g, b: _reference(x, g, b, 1e-3, slope), x, gamma, beta)

    def fused(x, gamma, beta):
        return _first_order(lambda x, g, b: instance_norm(x, g, b, 1e-3, slope, FUSED), x, gamma, beta)

    inputs = [tf.cast(t, tf.float32) for t in (x, gamma, beta)]
    run = tf.function(fused) if graph else fused
    if graph:
        op_types = {op.type for op in run.get_concrete_function(*inputs).graph.get_operations()}
        assert {"FusedBatchNormV3", "FusedBatchNormGradV3"} <= op_types
    _assert_float32_rounding(run(*inputs), expected, ("output", "d/dx", "d/dgamma", "d/dbeta"))


@pytest.mark.parametrize("batch", [1, 2])
def test_first_order_norms_still_have_exact_second_order_gradients(batch):
    """Differentiated twice (which no first-order step does), the fused norm's gradient has the
    closed form's gradient: float32 rounding of the float64 composite's, as above."""
    x = tf.random.stateless_normal([batch, 5, 7, 3], seed=[24, 25], dtype=tf.float64) * 2.0 + 0.5
    gamma = tf.random.stateless_normal([3], seed=[26, 27], dtype=tf.float64)
    beta = tf.random.stateless_normal([3], seed=[28, 29], dtype=tf.float64)
    expected = _first_and_second_order(lambda x, g, b: _reference(x, g, b, 1e-3, 0.1), x, gamma, beta)

    @tf.function
    def fused(x, gamma, beta):
        return _first_and_second_order(lambda x, g, b: instance_norm(x, g, b, 1e-3, 0.1, FUSED), x, gamma, beta)

    names = ("output", "d/dx", "d/dgamma", "d/dbeta", "d2/dx", "d2/dgamma", "d2/dbeta")
    _assert_float32_rounding(fused(*(tf.cast(t, tf.float32) for t in (x, gamma, beta))), expected, names)


def test_first_order_norms_keep_the_closed_form_where_no_fused_kernel_applies():
    """float64 inputs (the finite-difference tests') have no fused kernel: the closed form runs,
    second order included."""
    x = tf.random.stateless_normal([1, 4, 4, 2], seed=[26, 27], dtype=tf.float64)
    gamma, beta = tf.ones([2], tf.float64), tf.zeros([2], tf.float64)
    ours = _first_and_second_order(lambda x, g, b: instance_norm(x, g, b, 1e-3, 0.1, FUSED), x, gamma, beta)
    expected = _first_and_second_order(lambda x, g, b: _reference(x, g, b, 1e-3, 0.1), x, gamma, beta)
    for a, b in zip(ours, expected):
        tf.debugging.assert_near(a, b, rtol=1e-10, atol=1e-10)
