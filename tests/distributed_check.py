"""Run as a script: one device vs MirroredStrategy over 2 logical CPUs, every algorithm.

Prints one JSON line: {algorithm: max |difference| of the meta-variables after 2 meta-steps}.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from meta_drn_tf import distribute  # noqa: E402
from meta_drn_tf.meta import MetaConfig, MetaLearner  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from conftest import tiny_segmenter  # noqa: E402

distribute.split_cpu(2)
SIZE, B = 16, 4


def batches():
    rng = np.random.default_rng(0)
    for _ in range(2):
        images = rng.uniform(size=(B, 3, SIZE, SIZE, 3)).astype("float32")
        masks = (images[..., :1] > 0.6).astype("float32")
        yield {"support_images": images[:, :1], "support_masks": masks[:, :1],
               "query_images": images[:, 1:], "query_masks": masks[:, 1:]}


def run(algo, strategy, initial):
    config = MetaConfig(algo, inner_lr=0.1, inner_steps=2 if algo == "reptile" else 1, meta_lr=1e-2)
    with strategy.scope():
        learner = MetaLearner(tiny_segmenter(SIZE), config, strategy=strategy)
    for v, value in zip(learner.meta_variables, initial):
        v.assign(value)
    for batch in batches():
        if strategy.num_replicas_in_sync > 1:
            per = B // strategy.num_replicas_in_sync
            batch = strategy.experimental_distribute_values_from_function(
                lambda ctx, b=batch: {k: v[ctx.replica_id_in_sync_group * per:(ctx.replica_id_in_sync_group + 1) * per]
                                      for k, v in b.items()})
        learner.meta_train_step(batch)
    return [v.numpy() for v in learner.meta_variables]


results = {}
# One strategy per process: collective-op keys are per strategy object, and
# several MirroredStrategy objects in one process can collide.
one_device, mirrored = tf.distribute.OneDeviceStrategy("/cpu:0"), distribute.make_strategy("mirrored")
for algo in sys.argv[1:]:
    keras.utils.set_random_seed(0)
    reference = MetaLearner(tiny_segmenter(SIZE), MetaConfig(algo, inner_lr=0.1))
    initial = [v.numpy() + (0.01 if "alpha" in v.name else 0.0) for v in reference.meta_variables]
    one = run(algo, one_device, initial)
    two = run(algo, mirrored, initial)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(one, initial))
    results[algo] = {"difference": max(float(np.abs(a - b).max()) for a, b in zip(one, two)), "moved": moved}
print(json.dumps(results))
