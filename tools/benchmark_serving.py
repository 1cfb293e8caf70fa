"""Latency of one TF Serving request (in-graph 1-shot adaptation + segmentation).

    python tools/benchmark_serving.py [--size 224] [--width 1.0] [--repeats 5] [--kernels stock,cpu]

Exports a full-size network (weights do not change the cost) in float32 and
bfloat16, with each kernel policy (stock: device-neutral, the default export;
cpu: the CPU-tuned forms), loads each SavedModel as TF Serving would, and times
requests with 1 support and 1 or 8 queries (median of --repeats after a warm-up).
"""

from __future__ import annotations

import os
import tempfile

from absl import flags
from timing import median_seconds  # tools/timing.py

from meta_drn_tf import cli
from meta_drn_tf.hardware import describe

flags.DEFINE_integer("size", 224, "Image size.")
flags.DEFINE_float("width", 1.0, "Network width.")
flags.DEFINE_integer("repeats", 5, "Timed requests per setting.")
flags.DEFINE_list("precisions", ["float32", "bfloat16"], "Export precisions.")
flags.DEFINE_list("kernels", ["stock", "cpu"], "Export kernel policies.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import numpy as np
    import tensorflow as tf

    from meta_drn_tf.meta import MetaConfig, MetaLearner
    from meta_drn_tf.network.config import NetworkConfig
    from meta_drn_tf.network.model import build_meta_drn
    from meta_drn_tf.serving import saved_model as serving

    print(describe())
    s = FLAGS.size
    learner = MetaLearner(build_meta_drn(NetworkConfig(s, FLAGS.width)), MetaConfig("maml"))
    rng = np.random.default_rng(0)
    support = tf.constant(rng.integers(0, 256, (1, s, s, 3), dtype=np.uint8))
    mask = tf.constant((rng.uniform(size=(1, s, s)) > 0.7).astype(np.float32))
    print(f"| export | kernels | queries | latency (s, median of {FLAGS.repeats}) | queries/s |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as base:
        for precision, kernels in ((p, k) for p in FLAGS.precisions for k in FLAGS.kernels):
            path = serving.export(learner, os.path.join(base, precision + kernels), NetworkConfig(s, FLAGS.width),
                                  precision=precision, kernels=kernels)
            fn = tf.saved_model.load(path).signatures["serving_default"]
            for n in (1, 8):
                queries = tf.constant(rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8))
                call = lambda: fn(support_images=support, support_masks=mask, query_images=queries,  # noqa: E731
                                  threshold=tf.constant([0.5]))["masks"].numpy()
                latency = median_seconds(call, FLAGS.repeats)
                print(f"| {precision} | {kernels} | 1 support + {n} | {latency:.2f} | {n / latency:.2f} |", flush=True)


if __name__ == "__main__":
    cli.run(main)
