"""Adapted segmenters for phones and edge devices: TensorFlow Lite files.

    segmenter.adapt(support_images, support_masks).export_tflite("cat.tflite", quantize="int8")

The file holds the network with the adapted weights folded in: one uint8 RGB
image `[1, S, S, 3]` in (S: the training size; resize other images to it
first), foreground probabilities float32 `[1, S, S]` out. No adaptation runs on
the device: the inner loop ran once, on the machine that exported the file.

Quantizations:
- "none": float32.
- "float16": float16 weights, half the file.
- "int8": int8 weights, a quarter of the file; activations quantized on the fly
  (TFLite's dynamic-range quantization). For CPUs.
- "int16x8": integer throughout (TFLite's 16x8 mode): int8 weights, int16 activations
  whose ranges are calibrated on the examples and augmentations of them
  (`calibration_images`); only the input's uint8-to-float cast and the
  quantize/dequantize pair at the edges are not integer ops. For integer-only
  accelerators that take 16x8 (Arm's Ethos-U NPUs, TFLite Micro).
Full-integer int8 (int8 activations) is not offered: its masks disagree with the
float network's on many photos (docs/performance.md, "TFLite"; `tools/study_int8.py`
measures it). The graphs take the `LITE` kernel forms: TFLite's builtin ops, with
int16 kernels for each.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import tensorflow as tf

from meta_drn_tf.data import augment
from meta_drn_tf.network.kernels import LITE
from meta_drn_tf.serving.trust import check_tflite

QUANTIZATIONS = ("none", "float16", "int8", "int16x8")
# Calibration: copies of the examples by the training augmentation, and of the examples and the first
# BEYOND_TRAINING_COPIES of them, lighting, colours, blur and noise beyond it. Other photos of a class
# drive activations (above all the norms' means and variances) past what one example's training copies
# do, and int16x8 clips what lies beyond the calibrated ranges (docs/performance.md, "TFLite").
# Each image costs calibration time (minutes at 224 px); fewer copies than these lost IoU on the tests'
# synthetic class, whose photos lie farthest from their example (docs/performance.md, "int16x8").
CALIBRATION_COPIES = 15
BEYOND_TRAINING_COPIES = 5
CONTRASTS = (0.3, 0.5, 1.5, 2.5)
BRIGHTNESS_SHIFTS = (-64.0, 64.0)  # grey levels
BLUR_SIGMAS = (1.0, 2.0)
NOISE_SIGMA = 12.0  # grey levels


def convert(model, weights: list[np.ndarray], quantize: str = "none", calibration: np.ndarray | None = None,
            progress: Callable[[int, int], None] | None = None) -> bytes:
    """A TFLite flatbuffer of `model` under `weights` that takes a uint8 image `[1, S, S, 3]` and
    returns probabilities `[1, S, S]`.

    Args:
        model: the Keras network (its architecture: logits `[n, S, S, 1]` of images in [0, 1]).
        weights: the adapted values of `model.trainable_variables`, in order; folded in as constants.
        quantize: one of QUANTIZATIONS.
        calibration: for "int16x8", uint8 images `(n, S, S, 3)` whose activations set the ranges
            (`calibration_images`).
        progress: called as `progress(done, total)` after each calibration image (a 224 px network
            takes minutes on a CPU).
    """
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    if quantize == "int16x8" and calibration is None:
        raise ValueError("int16x8 needs calibration images: tflite.calibration_images(examples, size)")
    converter = make_converter(model, weights)
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int16x8":
        converter.representative_dataset = lambda: _one_by_one(calibration, progress)
        # The builtins only for the input's uint8-to-float cast, which has no 16x8 form.
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def _one_by_one(images: np.ndarray, progress: Callable[[int, int], None] | None):
    """The converter's representative dataset: each image as the file's input, counted by `progress`."""
    for i, image in enumerate(images):
        yield [image[None]]
        if progress:
            progress(i + 1, len(images))


def calibration_images(examples: np.ndarray, size: int, seed: int = 0, copies: int = CALIBRATION_COPIES,
                       beyond: int = BEYOND_TRAINING_COPIES) -> np.ndarray:
    """What int16x8 files are calibrated on: the examples resized to `size`, `copies` copies of
    them by the training augmentation (flip, rotate, zoom, warp, lighting), and, of the examples
    and the first `beyond` copies, contrast times each of CONTRASTS, brightness plus each of
    BRIGHTNESS_SHIFTS, colour channels rotated, Gaussian blur of each of BLUR_SIGMAS and noise.

    Args:
        examples: uint8 RGB `(k, H, W, 3)`.
        size: the training size S.
        seed: the augmentations' seed.
        copies, beyond: the numbers of copies above.

    Returns:
        uint8 `(k + copies + 11·(k + beyond), S, S, 3)`.
    """
    resized = np.stack([cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA) for image in examples])
    repeated = tf.constant(np.resize(resized, (copies, size, size, 3)), tf.float32) / 255.0
    augmented, _ = augment.augment_task(repeated, tf.zeros_like(repeated[..., :1]), tf.constant([seed, 0], tf.int64))
    augmented = np.round(augmented.numpy() * 255.0).astype(np.uint8)
    rng = np.random.default_rng(seed)
    varied = [_beyond_training(image.astype(np.float32), rng)
              for image in np.concatenate([resized, augmented[:beyond]])]
    return np.concatenate([resized, augmented, np.concatenate(varied)])


def _beyond_training(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 copies of a float image in [0, 255]: each contrast, brightness and blur, its colour
    channels rotated both ways, and one noise."""
    mean = image.mean()
    out = [(image - mean) * contrast + mean for contrast in CONTRASTS]
    out += [image + shift for shift in BRIGHTNESS_SHIFTS] + [np.roll(image, shift, axis=-1) for shift in (1, 2)]
    out += [cv2.GaussianBlur(image, (0, 0), sigma) for sigma in BLUR_SIGMAS]
    out.append(image + rng.normal(0.0, NOISE_SIGMA, image.shape))
    return np.round(np.clip(np.stack(out), 0, 255)).astype(np.uint8)


def make_converter(model, weights: list[np.ndarray]) -> tf.lite.TFLiteConverter:
    """TFLite's converter of `model` under `weights` (constants), uint8 image `[1, S, S, 3]` in,
    probabilities `[1, S, S]` out, before any quantization setting (`convert` sets them)."""
    size = model.input_shape[1]

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.uint8, name="image")], autograph=False)
    def segment(image):
        # Constants, not variables: the converter folds them, and TFLite reads no resource variables.
        constants = [tf.constant(w, v.dtype) for w, v in zip(weights, model.trainable_variables, strict=True)]
        logits, _ = model.stateless_call(constants, [], tf.cast(image, tf.float32) / 255.0, training=False,
                                         kernels=LITE)
        return {"probabilities": tf.sigmoid(tf.cast(logits, tf.float32))[..., 0]}

    holder = tf.Module()  # what the converter saves: the function alone, its weights constants
    holder.segment = segment
    return tf.lite.TFLiteConverter.from_concrete_functions([segment.get_concrete_function()], holder)


def make_interpreter(trust: bool = False, **kwargs):
    """LiteRT's interpreter (`ai_edge_litert`, TFLite's own runtime) where it is installed, else
    TensorFlow's `tf.lite.Interpreter` (deprecated in its favour); `kwargs` as for either.

    A file (`model_path`) or flatbuffer (`model_content`) asking for custom ops, which no file this
    project writes holds, is refused unless `trust` (`trust.check_tflite`).
    """
    if not trust and "model_path" in kwargs:  # read once: checked, then given to the interpreter as it is
        with open(kwargs["model_path"], "rb") as f:
            content = f.read()
        check_tflite(content, kwargs.pop("model_path"))
        kwargs["model_content"] = content
    elif not trust and kwargs.get("model_content") is not None:
        check_tflite(bytes(kwargs["model_content"]), "the TensorFlow Lite model")
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter  # noqa: N806 (a class, named as such)
    return Interpreter(**kwargs)


def run(flatbuffer: bytes | str, images: np.ndarray, trust: bool = False) -> np.ndarray:
    """Probabilities float32 `[n, S, S]` of uint8 images `[n, S, S, 3]` through TFLite's interpreter
    (a file's path or its bytes), one image at a time as a device would; custom ops refused unless
    `trust` (`make_interpreter`)."""
    source = {"model_path": flatbuffer} if isinstance(flatbuffer, str) else {"model_content": flatbuffer}
    interpreter = make_interpreter(trust, **source)
    interpreter.allocate_tensors()
    image_in, probabilities_out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    out = []
    for image in images:
        interpreter.set_tensor(image_in["index"], image[None])
        interpreter.invoke()
        out.append(interpreter.get_tensor(probabilities_out["index"])[0])
    return np.stack(out)
