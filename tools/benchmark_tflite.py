"""File size and CPU latency of adapted segmenters as TensorFlow Lite files, per quantization.

    python tools/benchmark_tflite.py [--size=224] [--width=1.0] [--repeats=10] [--threads=2]

Adapts the network (seeded, not trained: latency does not depend on the weights) to one
synthetic example, writes it with each quantization, and times TFLite's interpreter on one
image (median of --repeats after a warm-up), beside the Segmenter's own `segment` on the
same image. The export column is `export_tflite`'s wall time (int16x8's holds its
calibration). Prints a Markdown table and the machine line.
"""

from __future__ import annotations

import os
import tempfile
import time

from absl import flags
from timing import median_seconds  # tools/timing.py

from meta_drn_tf import cli

flags.DEFINE_integer("size", 224, "Training size S (the file's input is S x S).")
flags.DEFINE_float("width", 1.0, "Network width.")
flags.DEFINE_integer("repeats", 10, "Timed runs per row (median).")
flags.DEFINE_integer("threads", 2, "The interpreter's threads.")
FLAGS = flags.FLAGS


def _interpreter_call(path: str, image):
    from meta_drn_tf.serving import tflite

    interpreter = tflite.make_interpreter(model_path=path, num_threads=FLAGS.threads)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    interpreter.set_tensor(index, image[None])
    return interpreter.invoke


def main(argv):
    del argv
    import keras

    from meta_drn_tf.data.synthetic import synthetic_bank
    from meta_drn_tf.hardware import describe
    from meta_drn_tf.meta import MetaConfig, MetaLearner
    from meta_drn_tf.network.config import NetworkConfig
    from meta_drn_tf.network.model import build_meta_drn
    from meta_drn_tf.serving import saved_model, tflite
    from meta_drn_tf.serving.segmenter import Segmenter

    print(describe())
    keras.utils.set_random_seed(0)
    network = NetworkConfig(FLAGS.size, FLAGS.width)
    learner = MetaLearner(build_meta_drn(network), MetaConfig("maml"))
    segmenter = Segmenter(saved_model.serving_module(learner, network, kernels="stock"), "seeded")
    bank = synthetic_bank(num_classes=3, images_per_class=2, image_size=FLAGS.size, seed=1)
    segmenter.adapt(bank.images[0, :1], bank.masks[0, :1].astype("float32"))
    image = bank.images[0, 1]
    rows = [f"| Segmenter.segment (TensorFlow, stock kernels) | | "
            f"{median_seconds(lambda: segmenter.segment(image[None]), FLAGS.repeats):.3f} | |"]
    with tempfile.TemporaryDirectory() as folder:
        for quantize in tflite.QUANTIZATIONS:
            start = time.perf_counter()
            path = segmenter.export_tflite(os.path.join(folder, f"{quantize}.tflite"), quantize)
            export = time.perf_counter() - start
            latency = median_seconds(_interpreter_call(path, image), FLAGS.repeats)
            rows.append(f"| TFLite, {quantize} | {os.path.getsize(path) / 2**20:.1f} | {latency:.3f} | {export:.0f} |")
    print(f"\n{FLAGS.size}x{FLAGS.size}, width {FLAGS.width}, one image, {FLAGS.threads} interpreter threads, "
          f"median of {FLAGS.repeats}\n")
    print("| model | file (MiB) | latency (s) | export (s) |\n|---|---|---|---|\n" + "\n".join(rows))


if __name__ == "__main__":
    cli.run(main)
