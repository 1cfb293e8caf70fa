"""tf.distribute plumbing: strategies, the chief, and which tasks each replica reads.

The global meta-batch of B tasks is split evenly over R replicas (B must be a
multiple of R). Replica r of meta-step g adapts tasks g*B + r*B/R ...
g*B + (r+1)*B/R - 1 - the very tasks one device would take at step g - and
the gradients are summed over replicas after each replica divides by B. One
device and R replicas therefore make the same update.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from meta_drn_tf.errors import ConfigError

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


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
            raise ConfigError("--strategy=multi_worker needs the TF_CONFIG environment variable (see README)")
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


def check_meta_batch(meta_batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """Tasks per replica; a meta-batch that does not split evenly is refused."""
    replicas = strategy.num_replicas_in_sync
    if meta_batch_size % replicas:
        raise ConfigError(
            f"--meta_batch_size={meta_batch_size} does not divide over {replicas} replicas; "
            f"use a multiple of {replicas}"
        )
    return meta_batch_size // replicas


def replica_task_ids(start_step: int, num_steps: int, meta_batch_size: int,
                     tasks_per_pipeline: int, pipeline_id: int) -> tf.data.Dataset:
    """Task indices an input pipeline reads, in the order its replicas consume them.

    Each meta-step takes tasks g*B .. g*B+B-1; pipeline p (a worker) reads its
    `tasks_per_pipeline` consecutive ones - the tasks of its local replicas,
    replica after replica - step after step.
    """
    per = tasks_per_pipeline
    base = start_step * meta_batch_size + pipeline_id * per
    return tf.data.Dataset.range(num_steps * per).map(lambda i: base + (i // per) * meta_batch_size + i % per)
