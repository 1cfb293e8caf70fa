"""Run as a script: one device vs MirroredStrategy over R logical CPUs, for each algorithm named.

    python tests/distributed_check.py [--replicas=R] [--meta_batch=B] [--jit] ALGORITHM...

Each replica takes its share of the B tasks (`distribute.replica_shares`: uneven when R does not
divide B; a replica may have none), padded to the largest share, with its task count. Prints one
JSON line: {algorithm: {"difference": max |difference| of the meta-variables after 2 meta-steps,
"moved": how far one device moved them}}.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from meta_drn_tf.meta import MetaConfig, MetaLearner  # noqa: E402
from meta_drn_tf.meta.learner import TASK_COUNT_KEY  # noqa: E402
from meta_drn_tf.training import distribute  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from conftest import tiny_segmenter  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--replicas", type=int, default=2)
parser.add_argument("--meta_batch", type=int, default=4)
parser.add_argument("--jit", action="store_true")
parser.add_argument("algorithms", nargs="+")
ARGS = parser.parse_args()
distribute.split_cpu(ARGS.replicas)
SIZE, B = 16, ARGS.meta_batch


def batches():
    rng = np.random.default_rng(0)
    for _ in range(2):
        images = rng.uniform(size=(B, 3, SIZE, SIZE, 3)).astype("float32")
        masks = (images[..., :1] > 0.6).astype("float32")
        yield {"support_images": images[:, :1], "support_masks": masks[:, :1],
               "query_images": images[:, 1:], "query_masks": masks[:, 1:]}


def share(batch, first, count, size):
    """A replica's tasks first .. first+count-1, padded to `size` with the meta-batch's first task."""
    index = [first + j if j < count else 0 for j in range(size)]
    return {**{k: v[index] for k, v in batch.items()}, TASK_COUNT_KEY: np.int32(count)}


def run(algo, strategy, initial):
    config = MetaConfig(algo, inner_lr=0.1, inner_steps=2 if algo == "reptile" else 1, meta_lr=1e-2,
                        jit_compile=ARGS.jit)
    with strategy.scope():
        learner = MetaLearner(tiny_segmenter(SIZE), config, strategy=strategy)
    for v, value in zip(learner.meta_variables, initial):
        v.assign(value)
    shares = distribute.replica_shares(B, strategy.num_replicas_in_sync)
    size = distribute.tasks_per_replica(B, strategy)
    for batch in batches():
        if strategy.num_replicas_in_sync > 1:
            batch = strategy.experimental_distribute_values_from_function(
                lambda ctx, b=batch: share(b, *shares[ctx.replica_id_in_sync_group], size))
        learner.meta_train_step(batch)
    return [v.numpy() for v in learner.meta_variables]


results = {}
# One strategy per process: collective-op keys are per strategy object, and
# several MirroredStrategy objects in one process can collide.
one_device, mirrored = tf.distribute.OneDeviceStrategy("/cpu:0"), distribute.make_strategy("mirrored")
for algo in ARGS.algorithms:
    keras.utils.set_random_seed(0)
    reference = MetaLearner(tiny_segmenter(SIZE), MetaConfig(algo, inner_lr=0.1))
    initial = [v.numpy() + (0.01 if "alpha" in v.name else 0.0) for v in reference.meta_variables]
    one = run(algo, one_device, initial)
    many = run(algo, mirrored, initial)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(one, initial))
    results[algo] = {"difference": max(float(np.abs(a - b).max()) for a, b in zip(one, many)), "moved": moved}
print(json.dumps(results))
