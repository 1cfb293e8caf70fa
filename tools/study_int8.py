"""How far quantized TFLite files of adapted segmenters agree with the Segmenter.

    python tools/study_int8.py --model=runs/quickstart --data_dir=PHOTOS

For every class of a few-shot folder (FSS-1000 layout): adapts the model to the class's
first photo, then compares the masks (threshold 0.5) of TFLite files with the Segmenter's on
all the class's photos, as IoU per photo. Rows: the shipped `int8` (dynamic-range) and
`int16x8` (calibrated on `tflite.calibration_images` of the example); full-integer int8 files
(`supported_ops=TFLITE_BUILTINS_INT8`) on the same calibration (`full`), with the norms' ops
left in float (`full, norms float`), and calibrated on the class's photos too (`full, photos in
calibration`: an upper bound, those photos being unknown when a file is made); and int16x8
calibrated on the training augmentation's copies alone (`int16x8, training copies only`: what
the lighting, blur and noise beyond them add); with --calibration_sizes, int16x8 calibrated on
more or fewer copies. Prints a Markdown table and the machine line.
"""

from __future__ import annotations

import glob
import os

from absl import flags

from meta_drn_tf import cli

flags.DEFINE_string("model", "runs/quickstart", "A training run or SavedModel.")
flags.DEFINE_string("data_dir", None, "Classes of photos with masks (FSS-1000 layout).", required=True)
flags.DEFINE_list("calibration_sizes", [], "More int16x8 rows, each calibrated on `tflite.calibration_images` with "
                  "other numbers of copies: COPIES:BEYOND pairs (its `copies` and `beyond`), e.g. 30:10,10:3.")
FLAGS = flags.FLAGS
NORM_OPS = ["MEAN", "RSQRT", "SUB", "MUL", "ADD"]
ROWS = ("int8", "int16x8", "int16x8, training copies only", "full", "full, norms float", "full, photos in calibration")


def _photos(folder: str, size: int):
    """The class's photos at `size` (uint8) and the first one's mask."""
    import cv2
    import numpy as np

    from meta_drn_tf.data.images import read_mask, read_photo

    jpgs = sorted(glob.glob(os.path.join(folder, "*.jpg")))
    images = np.stack([cv2.resize(read_photo(p), (size, size), interpolation=cv2.INTER_AREA) for p in jpgs])
    mask = read_mask(jpgs[0][:-4] + ".png", read_photo(jpgs[0]).shape[:2]).astype(np.uint8)
    return images, cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST).astype(np.float32)


def _full_integer(segmenter, calibration, norms_in_float: bool) -> bytes:
    """A full-integer file of the adapted network, its activations calibrated on `calibration`."""
    import tensorflow as tf

    from meta_drn_tf.serving import tflite

    def dataset():
        return ([image[None]] for image in calibration)

    converter = tflite.make_converter(*segmenter.adapted_network())
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if not norms_in_float:
        return converter.convert()
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=NORM_OPS)
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=dataset,
                                                         debug_options=options)
    return debugger.get_nondebug_quantized_model()


def _files(segmenter, images):
    """Each row's TFLite file for a segmenter adapted to images[0]."""
    import numpy as np

    from meta_drn_tf.serving import tflite

    calibration = tflite.calibration_images(images[:1], images.shape[1])
    training_copies = calibration[:1 + tflite.CALIBRATION_COPIES]
    files = {f"int16x8, {pair} copies": tflite.convert(*segmenter.adapted_network(), "int16x8",
                                                       tflite.calibration_images(images[:1], images.shape[1], 0,
                                                                                 *map(int, pair.split(":"))))
             for pair in FLAGS.calibration_sizes}
    return files | {"int8": tflite.convert(*segmenter.adapted_network(), "int8"),
            "int16x8": tflite.convert(*segmenter.adapted_network(), "int16x8", calibration),
            "int16x8, training copies only": tflite.convert(*segmenter.adapted_network(), "int16x8", training_copies),
            "full": _full_integer(segmenter, calibration, False),
            "full, norms float": _full_integer(segmenter, calibration, True),
            "full, photos in calibration": _full_integer(segmenter, np.concatenate([calibration, images]), False)}


def main(argv):
    del argv
    import numpy as np

    from meta_drn_tf.hardware import describe
    from meta_drn_tf.serving import tflite
    from meta_drn_tf.serving.segmenter import Segmenter

    print(describe())
    base = Segmenter.load(FLAGS.model, kernels="stock")
    ious = {row: [] for row in (*ROWS, *(f"int16x8, {pair} copies" for pair in FLAGS.calibration_sizes))}
    for name in sorted(os.listdir(FLAGS.data_dir)):
        images, mask = _photos(os.path.join(FLAGS.data_dir, name), base.image_size)
        segmenter = base.copy().adapt(images[:1], mask[None])
        expected = segmenter.segment(images) > 0.5
        for row, flatbuffer in _files(segmenter, images).items():
            got = tflite.run(flatbuffer, images) > 0.5
            ious[row] += [(e & g).sum() / max((e | g).sum(), 1) for e, g in zip(expected, got)]
    print(f"\n{FLAGS.model} ({base.description}), {len(ious['int8'])} photos of {FLAGS.data_dir}\n")
    print("| file | IoU min | mean | photos at >= 0.95 |\n|---|---|---|---|")
    for row, values in ious.items():
        print(f"| {row} | {min(values):.3f} | {np.mean(values):.3f} | {np.mean(np.array(values) >= 0.95):.0%} |")


if __name__ == "__main__":
    cli.run(main)
