import numpy as np
import pytest
import tensorflow as tf
import keras

from meta_drn_tf.model import (
    PAPER_PARAMS, build_meta_drn, parameter_breakdown, receptive_field,
)


@pytest.mark.parametrize("size,width", [(32, 0.0625), (48, 0.125), (64, 0.0625), (40, 0.25)])
def test_output_is_one_logit_per_pixel_at_input_resolution(size, width):
    model = build_meta_drn(size, width)
    out = model(np.random.rand(2, size, size, 3).astype("float32"))
    assert out.shape == (2, size, size, 1)
    assert out.dtype == tf.float32


def test_any_size_model_accepts_rectangular_inputs():
    model = build_meta_drn(None, 0.0625)
    assert model(np.zeros((1, 48, 64, 3), "float32")).shape == (1, 48, 64, 1)


def test_rejects_sizes_that_are_not_multiples_of_four():
    with pytest.raises(ValueError, match="multiple of 4"):
        build_meta_drn(30)


def test_parameter_count_matches_paper_within_two_percent():
    counts = parameter_breakdown(build_meta_drn(224))
    assert abs(counts["total"] / PAPER_PARAMS - 1) < 0.02
    assert sum(v for k, v in counts.items() if k != "total") == counts["total"]
    # The degridding convs and ResBlock-3 (512 filters) hold most of the weights.
    assert counts["degrid"] > counts["resblock2"] > counts["head"]


def test_width_scales_the_parameter_count_quadratically():
    full = build_meta_drn(64, 1.0).count_params()
    half = build_meta_drn(64, 0.5).count_params()
    assert 0.2 < half / full < 0.3


def _footprint(model, size):
    x = tf.random.uniform((1, size, size, 3), seed=1)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = model(x)[0, size // 2, size // 2, 0]
    g = tf.reduce_sum(tf.abs(tape.gradient(y, x)), axis=[0, 3]).numpy()
    rows, cols = np.nonzero(g > 0)
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


def test_receptive_field_grows_as_designed():
    # Without normalisation (whose image statistics reach every pixel) the gradient
    # footprint of one output pixel is exactly the receptive field of the conv stack.
    model = build_meta_drn(160, 0.0625, normalization="none")
    assert receptive_field(model) == 123  # head 7, RB1 19, RB2 43, RB3 91, degrid 115, upsample 123
    assert _footprint(model, 160) == (123, 123)


def test_keras_file_round_trip_with_safe_mode(tmp_path):
    model = build_meta_drn(32, 0.125)
    x = np.random.rand(3, 32, 32, 3).astype("float32")
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(model(x).numpy(), loaded(x).numpy())


def test_every_trainable_weight_receives_a_gradient():
    model = build_meta_drn(32, 0.125)
    x = tf.random.uniform((2, 32, 32, 3), seed=0)
    y = tf.cast(tf.random.uniform((2, 32, 32, 1), seed=1) > 0.5, tf.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y, model(x)))
    grads = tape.gradient(loss, model.trainable_variables)
    for v, g in zip(model.trainable_variables, grads):
        assert g is not None and float(tf.reduce_max(tf.abs(g))) > 0, v.path


def test_prediction_does_not_depend_on_the_rest_of_the_batch():
    model = build_meta_drn(32, 0.125)
    x = np.random.rand(8, 32, 32, 3).astype("float32")
    alone = np.concatenate([model(x[i : i + 1]).numpy() for i in range(8)])
    np.testing.assert_allclose(model(x).numpy(), alone, atol=1e-5)


def test_mixed_bfloat16_policy_keeps_float32_variables_and_logits():
    model = build_meta_drn(32, 0.125, dtype="mixed_bfloat16")
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    assert model(np.zeros((1, 32, 32, 3), "float32")).dtype == tf.float32
