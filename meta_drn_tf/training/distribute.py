"""tf.distribute plumbing: strategies, the chief, and which tasks each replica reads.

The global meta-batch of B tasks is split over R replicas as evenly as it
goes: the first B mod R replicas take one task more (the paper's B = 5 on 2
GPUs: 3 and 2; on 8: five replicas take one, three none). Replica r of
meta-step g adapts consecutive tasks of g*B ... g*B + B - 1 - the very tasks
one device would take at step g. Every replica's batch has the size of the
largest share, padded, and says how many of its tasks are real; the gradient
and task-count sums are all-reduced and divided once. One device and R
replicas therefore make the same update.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from meta_drn_tf.errors import ConfigError
from meta_drn_tf.runs.config import STRATEGIES


def split_cpu(n: int) -> None:
    """Splits the CPU into `n` logical devices (before TensorFlow initialises devices).

    Logical CPU devices share the machine's cores: they make multi-replica code
    testable without GPUs, not faster.
    """
    if n > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)


def make_strategy(name: str = "auto", collective_timeout_s: float = 300.0) -> tf.distribute.Strategy:
    """A tf.distribute strategy by name.

    auto: multi_worker when TF_CONFIG names a cluster, mirrored with several
    GPUs (or logical CPUs), one device otherwise. multi_worker reads TF_CONFIG;
    its collectives time out after `collective_timeout_s` so a dead worker
    fails the run instead of hanging it.
    """
    if name not in STRATEGIES:
        raise ConfigError(f"--strategy must be one of {STRATEGIES}, got {name!r}")
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    if name == "auto" and sum(len(v) for v in cluster.values()) > 1:
        name = "multi_worker"
    # Multi-worker collectives must be configured before anything initialises
    # TensorFlow's devices, so this comes first.
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("--strategy=multi_worker needs the TF_CONFIG environment variable (see "
                              "docs/distributed.md)")
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=collective_timeout_s)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 or (not gpus and len(cpus) > 1) else "one_device"
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else cpus[0].name)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy([d.name for d in (gpus or cpus)])
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints, summaries and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def replica_shares(meta_batch_size: int, replicas: int) -> list[tuple[int, int]]:
    """(first task, task count) of each replica's share of a meta-batch, in replica order."""
    base, extra = divmod(meta_batch_size, replicas)
    counts = [base + (r < extra) for r in range(replicas)]
    return [(sum(counts[:r]), counts[r]) for r in range(replicas)]


def tasks_per_replica(meta_batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """The size of every replica's (padded) batch: the largest share of the meta-batch."""
    return max(count for _, count in replica_shares(meta_batch_size, strategy.num_replicas_in_sync))


def replica_task_ids(start_step: int, num_steps: int, meta_batch_size: int, replicas: int,
                     local_replicas: int, pipeline_id: int) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Task indices an input pipeline reads, in the order its replicas consume them, and the
    count of real tasks in each replica's batch.

    Each meta-step takes tasks g*B .. g*B+B-1; pipeline p (a worker) serves its
    `local_replicas` replicas, replica after replica, step after step: each gets
    `tasks_per_replica` ids (its share, padded by repeating its last task, or the
    step's first where its share is empty) and one count.
    """
    every_share = replica_shares(meta_batch_size, replicas)
    size = max(count for _, count in every_share)  # the first replica's, as `tasks_per_replica` says
    shares = every_share[pipeline_id * local_replicas:(pipeline_id + 1) * local_replicas]
    offsets = [[first + min(j, max(count - 1, 0)) if count else 0 for j in range(size)] for first, count in shares]
    offsets = tf.constant(offsets, tf.int64)  # (local replicas, size)
    counts = tf.constant([count for _, count in shares], tf.int32)
    per_step = local_replicas * size

    def task_id(i):
        step, within = start_step + i // per_step, i % per_step
        return step * meta_batch_size + offsets[within // size, within % size]

    ids = tf.data.Dataset.range(num_steps * per_step).map(task_id)
    task_counts = tf.data.Dataset.range(num_steps * local_replicas).map(lambda i: counts[i % local_replicas])
    return ids, task_counts
