import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from meta_drn_tf.errors import ConfigError
from meta_drn_tf.network.config import NetworkConfig
from meta_drn_tf.network.kernels import LITE, STOCK
from meta_drn_tf.network.layers import SubPixelUpsample
from meta_drn_tf.network.model import (
    PAPER_PARAMS,
    build_meta_drn,
    parameter_breakdown,
    receptive_field,
)


@pytest.mark.parametrize("size,width", [(32, 0.0625), (48, 0.125), (64, 0.0625), (40, 0.25)])
def test_output_is_one_logit_per_pixel_at_input_resolution(size, width):
    model = build_meta_drn(NetworkConfig(size, width))
    out = model(np.random.rand(2, size, size, 3).astype("float32"))
    assert out.shape == (2, size, size, 1)
    assert out.dtype == tf.float32


def test_tflite_forms_upsample_by_transpose_to_the_same_pixels():
    """TFLite files' depth-to-space (`LITE`) is a reshape and a transpose (TFLite's DEPTH_TO_SPACE has no
    int16 kernel), and moves every value where depth_to_space does."""
    layer = SubPixelUpsample(classes=2, scale=4)
    x = tf.random.stateless_normal([3, 5, 6, 7], seed=[0, 1])
    layer.build(x.shape)

    def traced(policy):
        return tf.function(lambda x: layer(x, kernels=policy)).get_concrete_function(x)

    np.testing.assert_array_equal(traced(LITE)(x).numpy(), traced(STOCK)(x).numpy())
    assert traced(LITE)(x).shape == (3, 20, 24, 2)
    types = {policy: {op.type for op in traced(policy).graph.get_operations()} for policy in (STOCK, LITE)}
    assert "DepthToSpace" in types[STOCK] and "DepthToSpace" not in types[LITE]


def test_any_size_model_accepts_rectangular_inputs():
    model = build_meta_drn(NetworkConfig(32, 0.0625), any_size=True)
    assert model(np.zeros((1, 48, 64, 3), "float32")).shape == (1, 48, 64, 1)


def test_rejects_sizes_that_are_not_multiples_of_four():
    with pytest.raises(ConfigError, match="--image_size=30: must be a positive multiple of 4"):
        build_meta_drn(NetworkConfig(30))


def test_parameter_count_matches_paper_within_two_percent():
    counts = parameter_breakdown(build_meta_drn(NetworkConfig(224)))
    assert abs(counts["total"] / PAPER_PARAMS - 1) < 0.02
    assert sum(v for k, v in counts.items() if k != "total") == counts["total"]
    # The degridding convs and ResBlock-3 (512 filters) hold most of the weights.
    assert counts["degrid"] > counts["resblock2"] > counts["head"]


def test_width_scales_the_parameter_count_quadratically():
    full = build_meta_drn(NetworkConfig(64, 1.0)).count_params()
    half = build_meta_drn(NetworkConfig(64, 0.5)).count_params()
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
    model = build_meta_drn(NetworkConfig(160, 0.0625), normalization="none")
    assert receptive_field(model) == 123  # head 7, RB1 19, RB2 43, RB3 91, degrid 115, upsample 123
    assert _footprint(model, 160) == (123, 123)


def test_keras_file_round_trip_with_safe_mode(tmp_path):
    model = build_meta_drn(NetworkConfig(32, 0.125))
    x = np.random.rand(3, 32, 32, 3).astype("float32")
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(model(x).numpy(), loaded(x).numpy())


def test_every_trainable_weight_receives_a_gradient():
    model = build_meta_drn(NetworkConfig(32, 0.125))
    x = tf.random.uniform((2, 32, 32, 3), seed=0)
    y = tf.cast(tf.random.uniform((2, 32, 32, 1), seed=1) > 0.5, tf.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y, model(x)))
    grads = tape.gradient(loss, model.trainable_variables)
    for v, g in zip(model.trainable_variables, grads):
        assert g is not None and float(tf.reduce_max(tf.abs(g))) > 0, v.path


def test_prediction_does_not_depend_on_the_rest_of_the_batch():
    model = build_meta_drn(NetworkConfig(32, 0.125))
    x = np.random.rand(8, 32, 32, 3).astype("float32")
    alone = np.concatenate([model(x[i : i + 1]).numpy() for i in range(8)])
    np.testing.assert_allclose(model(x).numpy(), alone, atol=1e-5)


def test_mixed_bfloat16_policy_keeps_float32_variables_and_logits():
    model = build_meta_drn(NetworkConfig(32, 0.125), "mixed_bfloat16")
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    assert model(np.zeros((1, 32, 32, 3), "float32")).dtype == tf.float32


LEGACY = os.path.join(os.path.dirname(__file__), "data", "legacy_0.1.0")


@pytest.mark.slow
def test_files_written_by_version_0_1_0_load_with_the_same_outputs(tmp_path):
    """Version 0.1.0 computed the strided 1x1 shortcut with a strided convolution;
    its .keras files, checkpoints and SavedModels give the same outputs now
    (width 0.03125, 16x16, Meta-SGD with learned rates; see test_native_ops.py)."""
    import tarfile

    from meta_drn_tf.meta import MetaConfig, MetaLearner
    from meta_drn_tf.serving import saved_model as serving

    expected = np.load(os.path.join(LEGACY, "io.npz"))
    images, support_mask = expected["images"], expected["support_mask"]
    loaded = keras.saving.load_model(os.path.join(LEGACY, "model.keras"), safe_mode=True)
    # Equal up to float rounding: the normalization's arithmetic is ordered differently now.
    np.testing.assert_allclose(loaded(images).numpy(), expected["logits"], atol=1e-5)

    learner = MetaLearner(build_meta_drn(NetworkConfig(16, 0.03125)), MetaConfig("metasgd", inner_lr=0.3))
    status = tf.train.Checkpoint(learner=learner).read(os.path.join(LEGACY, "checkpoint", "ckpt"))
    status.assert_existing_objects_matched()
    np.testing.assert_allclose(learner.model(images).numpy(), expected["logits"], atol=1e-5)
    fast = learner.adapt(images[:1], support_mask)
    np.testing.assert_allclose(learner.predict(fast, images[1:]).numpy(), expected["adapted_probabilities"], atol=1e-6)

    def serve(path):
        out = tf.saved_model.load(path).signatures["adapt_and_segment_float"](
            support_images=tf.constant(images[:1]), support_masks=tf.constant(support_mask[..., 0]),
            query_images=tf.constant(images[1:]), threshold=tf.constant([], tf.float32))
        return out["probabilities"].numpy()

    with tarfile.open(os.path.join(LEGACY, "saved_model.tgz")) as archive:
        archive.extractall(tmp_path / "old", filter="data")
    np.testing.assert_allclose(serve(str(tmp_path / "old" / "1")), expected["adapted_probabilities"][..., 0], atol=1e-6)
    # An old run exported again today serves the same masks.
    again = serving.export(learner, str(tmp_path / "new"), NetworkConfig(16, 0.03125))
    np.testing.assert_allclose(serve(again), expected["adapted_probabilities"][..., 0], atol=1e-6)


def test_strided_1x1_projection_equals_a_strided_convolution():
    from meta_drn_tf.network.layers import ConvNormAct

    layer = ConvNormAct(8, strides=2, kernel_size=1, use_activation=False, normalization="none")
    for size in (15, 16):  # odd and even sizes: "same" padding needs none for a 1x1 window
        x = tf.random.uniform((2, size, size, 5), seed=size)
        y = layer(x)
        reference = tf.nn.conv2d(x, layer.conv.kernel, strides=2, padding="SAME")
        assert y.shape == layer.compute_output_shape(x.shape) == reference.shape
        np.testing.assert_allclose(y.numpy(), reference.numpy(), atol=1e-6)


def test_old_layer_names_and_arguments_still_load():
    from meta_drn_tf.network.layers import ConvNormAct, InstanceNorm, PerImageBatchNorm

    old = keras.saving.deserialize_keras_object(
        {"module": None, "class_name": "PerImageBatchNorm", "registered_name": "meta_drn_tf>PerImageBatchNorm",
         "config": {"name": "norm", "epsilon": 1e-3}})
    assert isinstance(old, InstanceNorm) and isinstance(old, PerImageBatchNorm)
    layer = ConvNormAct.from_config({"filters": 4, "activation": False, "normalization": "image", "name": "c"})
    assert layer.use_activation is False and isinstance(layer.norm, InstanceNorm)
    assert "use_activation" in layer.get_config() and "activation" not in layer.get_config()
    assert keras.saving.get_registered_name(InstanceNorm) == "meta_drn_tf>InstanceNorm"
