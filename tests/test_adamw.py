"""`FusedAdamW`: Keras AdamW's updates, one kernel per weight."""

import keras
import numpy as np
import tensorflow as tf

from meta_drn_tf.meta.adamw import FusedAdamW


def _trajectory(optimizer_class, steps=4):
    keras.utils.set_random_seed(0)
    weights = [keras.Variable(np.random.default_rng(i).normal(size=shape).astype("float32"), name=f"w{i}")
               for i, shape in enumerate([(3, 3, 4, 5), (5,), (7,)])]
    optimizer = optimizer_class(learning_rate=0.05, weight_decay=0.1, beta_1=0.8, beta_2=0.95, epsilon=1e-3)
    optimizer.exclude_from_weight_decay(var_list=weights[2:])
    optimizer.build(weights)
    apply = tf.function(lambda grads: optimizer.apply(grads, weights))
    for step in range(steps):
        apply([tf.random.stateless_normal(w.shape, seed=[step, i]) * (i + 1) for i, w in enumerate(weights)])
    return [w.numpy() for w in weights] + [v.numpy() for v in optimizer.variables]


def test_updates_weights_and_moments_as_keras_adamw():
    ours, keras_own = _trajectory(FusedAdamW), _trajectory(keras.optimizers.AdamW)
    assert len(ours) == len(keras_own)
    for a, b in zip(ours, keras_own):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(ours[0], _trajectory(FusedAdamW, steps=3)[0])  # the steps did move the weights


def test_config_round_trips_to_the_same_class():
    optimizer = FusedAdamW(learning_rate=0.01, weight_decay=0.2)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(restored) is FusedAdamW
    assert restored.get_config() == optimizer.get_config()
