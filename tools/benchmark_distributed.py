"""Meta-steps/s with 1 and 2 replicas (MirroredStrategy over logical CPU devices).

    python tools/benchmark_distributed.py [--size 64] [--width 0.25] [--meta_batch 4] [--steps 10]

Logical CPU devices share this machine's cores, so this shows the overhead of
the replica machinery, not a speed-up; real scaling needs GPUs.
"""

from __future__ import annotations

import time

from absl import flags

from meta_drn_tf import cli
from meta_drn_tf.hardware import describe

flags.DEFINE_integer("size", 64, "Image size.")
flags.DEFINE_float("width", 0.25, "Network width.")
flags.DEFINE_integer("meta_batch", 4, "Global meta-batch.")
flags.DEFINE_integer("steps", 10, "Timed meta-steps.")
flags.DEFINE_string("algo", "maml", "Algorithm.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from meta_drn_tf.training import distribute

    distribute.split_cpu(2)
    import numpy as np
    import tensorflow as tf

    from meta_drn_tf.meta import MetaConfig, MetaLearner
    from meta_drn_tf.network.config import NetworkConfig
    from meta_drn_tf.network.model import build_meta_drn

    print(describe())
    s, b = FLAGS.size, FLAGS.meta_batch
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(b, 2, s, s, 3)).astype("float32")
    masks = (images[..., :1] > 0.6).astype("float32")
    batch = {"support_images": images[:, :1], "support_masks": masks[:, :1],
             "query_images": images[:, 1:], "query_masks": masks[:, 1:]}
    print(f"{FLAGS.algo}, {s}x{s}, width {FLAGS.width}, global meta-batch {b}, k=1, q=1")
    print("| replicas | meta-steps/s | tasks/s |")
    print("|---|---|---|")
    for strategy in (tf.distribute.OneDeviceStrategy("/cpu:0"), distribute.make_strategy("mirrored")):
        with strategy.scope():
            learner = MetaLearner(build_meta_drn(NetworkConfig(s, FLAGS.width)), MetaConfig(FLAGS.algo),
                                  strategy=strategy)
        n = strategy.num_replicas_in_sync
        per = b // n
        data = strategy.experimental_distribute_values_from_function(
            lambda ctx: {k: v[ctx.replica_id_in_sync_group * per:(ctx.replica_id_in_sync_group + 1) * per]
                         for k, v in batch.items()}) if n > 1 else batch
        learner.meta_train_step(data)
        start = time.perf_counter()
        for _ in range(FLAGS.steps):
            learner.meta_train_step(data)["loss"].numpy()
        rate = FLAGS.steps / (time.perf_counter() - start)
        print(f"| {n} | {rate:.2f} | {rate * b:.1f} |", flush=True)


if __name__ == "__main__":
    cli.run(main)
