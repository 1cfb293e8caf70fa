"""Adapted segmenters for phones and edge devices: TensorFlow Lite files.

    segmenter.adapt(support_images, support_masks).export_tflite("cat.tflite", quantize="int8")

The file holds the network with the adapted weights folded in: one uint8 RGB
image `[1, S, S, 3]` in (S: the training size; resize other images to it
first), foreground probabilities float32 `[1, S, S]` out. No adaptation runs on
the device: the inner loop ran once, on the machine that exported the file.

Quantizations: "none" (float32), "float16" (float16 weights: half the file) and
"int8" (int8 weights, a quarter of the file; activations are quantized on the
fly, TFLite's dynamic-range quantization). Full-integer int8 (activations
calibrated on the examples and their augmentations) is not offered: its masks
disagree with the float network's on many photos (docs/performance.md, "TFLite";
`tools/study_int8.py` measures it). The graphs are the stock kernel
forms: TFLite's builtin ops.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

QUANTIZATIONS = ("none", "float16", "int8")


def convert(model, weights: list[np.ndarray], quantize: str = "none") -> bytes:
    """A TFLite flatbuffer of `model` under `weights` that takes a uint8 image `[1, S, S, 3]` and
    returns probabilities `[1, S, S]`.

    Args:
        model: the Keras network (its architecture: logits `[n, S, S, 1]` of images in [0, 1]).
        weights: the adapted values of `model.trainable_variables`, in order; folded in as constants.
        quantize: one of QUANTIZATIONS.
    """
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    converter = make_converter(model, weights)
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def make_converter(model, weights: list[np.ndarray]) -> tf.lite.TFLiteConverter:
    """TFLite's converter of `model` under `weights` (constants), uint8 image `[1, S, S, 3]` in,
    probabilities `[1, S, S]` out, before any quantization setting (`convert` sets them)."""
    size = model.input_shape[1]

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.uint8, name="image")])
    def segment(image):
        # Constants, not variables: the converter folds them, and TFLite reads no resource variables.
        constants = [tf.constant(w, v.dtype) for w, v in zip(weights, model.trainable_variables, strict=True)]
        logits, _ = model.stateless_call(constants, [], tf.cast(image, tf.float32) / 255.0, training=False)
        return {"probabilities": tf.sigmoid(tf.cast(logits, tf.float32))[..., 0]}

    holder = tf.Module()  # what the converter saves: the function alone, its weights constants
    holder.segment = segment
    return tf.lite.TFLiteConverter.from_concrete_functions([segment.get_concrete_function()], holder)


def run(flatbuffer: bytes | str, images: np.ndarray) -> np.ndarray:
    """Probabilities float32 `[n, S, S]` of uint8 images `[n, S, S, 3]` through TFLite's interpreter
    (a file's path or its bytes), one image at a time as a device would."""
    source = {"model_path": flatbuffer} if isinstance(flatbuffer, str) else {"model_content": flatbuffer}
    interpreter = tf.lite.Interpreter(**source)
    interpreter.allocate_tensors()
    image_in, probabilities_out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    out = []
    for image in images:
        interpreter.set_tensor(image_in["index"], image[None])
        interpreter.invoke()
        out.append(interpreter.get_tensor(probabilities_out["index"])[0])
    return np.stack(out)
