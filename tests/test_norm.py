"""`instance_norm`: values and first- and second-order gradients equal to the op-by-op composite's."""

import pytest
import tensorflow as tf

from meta_drn_tf.norm import instance_norm


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
