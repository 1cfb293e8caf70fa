"""Adapted segmenters as TensorFlow Lite files, checked with TFLite's interpreter against the Segmenter."""

import glob
import os
import subprocess
import sys
import types

import cv2
import numpy as np
import pytest
import tensorflow as tf

from meta_drn_tf.data.images import read_mask, read_photo
from meta_drn_tf.data.synthetic import synthetic_bank
from meta_drn_tf.errors import ConfigError
from meta_drn_tf.meta import MetaConfig, MetaLearner
from meta_drn_tf.network.config import NetworkConfig
from meta_drn_tf.network.model import build_meta_drn
from meta_drn_tf.serving import saved_model, tflite
from meta_drn_tf.serving.segmenter import Segmenter

SIZE, WIDTH = 64, 0.25
# The least IoU of a file's masks with the Segmenter's (threshold 0.5, over all the class's images).
MIN_IOU = {"none": 0.99, "float16": 0.99, "int8": 0.95, "int16x8": 0.95}


def _photos(real_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (n, SIZE, SIZE, 3) of one class and the first one's mask: real photos where present."""
    if real_dir is None:
        bank = synthetic_bank(num_classes=3, images_per_class=6, image_size=SIZE, seed=4)
        return bank.images[0], bank.masks[0, 0].astype(np.float32)
    jpgs = sorted(glob.glob(os.path.join(real_dir, "british_shorthair", "*.jpg")))
    images = np.stack([cv2.resize(read_photo(p), (SIZE, SIZE), interpolation=cv2.INTER_AREA) for p in jpgs])
    first = read_photo(jpgs[0])
    mask = read_mask(jpgs[0][:-4] + ".png", first.shape[:2]).astype(np.uint8)
    return images, cv2.resize(mask, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST).astype(np.float32)


def _adapted(real_dir: str | None):
    """A Segmenter adapted to one example (a seeded network; 5 inner steps, each traced: seconds) and its
    class's images."""
    tf.keras.utils.set_random_seed(3)
    network = NetworkConfig(SIZE, WIDTH)
    learner = MetaLearner(build_meta_drn(network), MetaConfig("maml", inner_lr=1.0))
    segmenter = Segmenter(saved_model.serving_module(learner, network, inner_steps=5, kernels="stock"), "test")
    images, mask = _photos(real_dir)
    segmenter.adapt(images[:1], mask[None])
    return segmenter, images


@pytest.fixture(scope="module")
def synthetic():
    return _adapted(None)


@pytest.fixture(scope="module")
def real(real_fewshot_dir):
    return _adapted(real_fewshot_dir)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.slow
@pytest.mark.parametrize("source", ["synthetic", "real"])
@pytest.mark.parametrize("quantize", tflite.QUANTIZATIONS)
def test_the_file_segments_like_the_segmenter(source, quantize, request, tmp_path):
    segmenter, images = request.getfixturevalue(source)
    expected = segmenter.segment(images)
    assert 0.05 < (expected > 0.5).mean() < 0.95  # the comparison is not between empty masks
    path = segmenter.export_tflite(str(tmp_path / "cat.tflite"), quantize)
    got = tflite.run(path, images)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert _iou(expected, got) >= MIN_IOU[quantize], [_iou(e, g) for e, g in zip(expected, got)]
    if quantize == "none":
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_quantized_files_are_smaller(synthetic, tmp_path):
    segmenter, _ = synthetic
    size = {q: os.path.getsize(segmenter.export_tflite(str(tmp_path / f"{q}.tflite"), q)) for q in tflite.QUANTIZATIONS}
    assert size["float16"] < 0.55 * size["none"] and size["int8"] < 0.3 * size["none"]
    assert size["int16x8"] < 0.35 * size["none"]


def test_int16x8_files_are_integer_but_at_their_edges(synthetic, tmp_path):
    """Every op computes in int16 with int8 weights except the input's uint8-to-float cast and the
    (de)quantization at the edges: what an integer-only accelerator needs."""
    segmenter, _ = synthetic
    interpreter = tflite.make_interpreter(model_path=segmenter.export_tflite(str(tmp_path / "x.tflite"), "int16x8"))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    outputs = {op["op_name"]: set() for op in ops}
    for op in ops:
        outputs[op["op_name"]].update(tensors[i]["dtype"] for i in op["outputs"])
    edges = {"CAST": {np.float32}, "QUANTIZE": {np.int16}, "DEQUANTIZE": {np.float32}}
    assert {name: types for name, types in outputs.items() if name not in edges} == {
        name: {np.int16} for name in outputs if name not in edges}
    assert {"CONV_2D", "MEAN", "RSQRT", "TRANSPOSE"} <= set(outputs)
    assert all(outputs[name] == types for name, types in edges.items() if name in outputs)
    filters = [tensors[op["inputs"][1]]["dtype"] for op in ops if op["op_name"] == "CONV_2D"]
    assert filters and set(filters) == {np.int8}


def test_calibration_holds_the_examples_their_training_copies_and_more(synthetic):
    segmenter, images = synthetic
    examples = np.stack([cv2.resize(images[i], (2 * SIZE, 2 * SIZE)) for i in (0, 1)])  # resized to SIZE
    calibration = tflite.calibration_images(examples, SIZE)
    beyond = len(tflite.CONTRASTS) + len(tflite.BRIGHTNESS_SHIFTS) + 2 + len(tflite.BLUR_SIGMAS) + 1
    assert calibration.shape == (2 + tflite.CALIBRATION_COPIES + beyond * (2 + tflite.BEYOND_TRAINING_COPIES),
                                 SIZE, SIZE, 3) and calibration.dtype == np.uint8
    np.testing.assert_array_equal(calibration[0], cv2.resize(examples[0], (SIZE, SIZE), interpolation=cv2.INTER_AREA))
    spreads = calibration.reshape(len(calibration), -1).std(axis=1)
    copies = spreads[2:2 + tflite.CALIBRATION_COPIES]
    # Beyond the training copies: lower and higher contrast than any of them.
    assert spreads.min() < 0.8 * copies.min() and spreads.max() > 1.2 * copies.max()
    np.testing.assert_array_equal(calibration, tflite.calibration_images(examples, SIZE))
    assert not np.array_equal(calibration, tflite.calibration_images(examples, SIZE, seed=1))
    # Fewer copies: the same first ones (the same augmentation stream), fewer beyond them.
    fewer = tflite.calibration_images(examples, SIZE, copies=3, beyond=1)
    assert len(fewer) == 2 + 3 + beyond * 3
    np.testing.assert_array_equal(fewer[:2 + 3], calibration[:2 + 3])


@pytest.mark.slow
def test_the_file_runs_with_the_interpreter_alone(synthetic, tmp_path):
    """What README's snippet does, with LiteRT's interpreter, in a process that imports neither the library
    nor TensorFlow."""
    segmenter, images = synthetic
    path = segmenter.export_tflite(str(tmp_path / "cat.tflite"), "int8")
    np.save(tmp_path / "image.npy", images[1])
    script = f"""
import sys, numpy as np
from ai_edge_litert.interpreter import Interpreter
interpreter = Interpreter(model_path={path!r})
interpreter.allocate_tensors()
image_in, probabilities_out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
interpreter.set_tensor(image_in["index"], np.load({str(tmp_path / 'image.npy')!r})[None])
interpreter.invoke()
np.save({str(tmp_path / 'out.npy')!r}, interpreter.get_tensor(probabilities_out["index"])[0])
assert not any(name.startswith(("meta_drn_tf", "tensorflow")) for name in sys.modules), "imported more"
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), timeout=120, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "deprecat" not in out.stderr.lower(), out.stderr  # tf.lite.Interpreter warned on every use
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), tflite.run(path, images[1:2])[0], atol=1e-6)


def test_export_needs_an_adaptation_and_a_model_that_records_its_size(tmp_path):
    learner = MetaLearner(build_meta_drn(NetworkConfig(16, 0.0625)), MetaConfig("maml"))
    module = saved_model.serving_module(learner, NetworkConfig(16, 0.0625), kernels="stock")
    with pytest.raises(RuntimeError, match="adapt"):
        Segmenter(module, "run").export_tflite(str(tmp_path / "x.tflite"))
    weights = [v.numpy() for v in learner.model.trainable_variables]
    with pytest.raises(ValueError, match="quantize must be one of none, float16, int8, int16x8, got 'int4'"):
        tflite.convert(learner.model, weights, "int4")
    with pytest.raises(ValueError, match="int16x8 needs calibration images"):
        tflite.convert(learner.model, weights, "int16x8")

    old_export = types.SimpleNamespace(adapt=module.adapt)  # written before exports recorded their size
    segmenter = Segmenter(old_export, "SavedModel old/1").adapt(np.zeros((16, 16, 3), np.uint8), np.ones((16, 16)))
    with pytest.raises(ConfigError, match="SavedModel old/1 does not record its network's size.*meta_drn_tf.export"):
        segmenter.export_tflite(str(tmp_path / "x.tflite"))
