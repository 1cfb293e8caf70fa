"""Where a meta-step's time goes, op by op: the TensorFlow profiler's trace of one algorithm's step.

    python tools/profile_step.py [--algo=maml] [--size=224] [--width=1.0] [--precision=float32] [--queries=1]
                                 [--steps=2] [--logdir=runs/profile] [--top=15]

Profiles `--steps` meta-steps (k = 1, q = `--queries`, meta-batch 1) after a warm-up step
with `tf.profiler.experimental`, then sums the executed kernels' times from
the trace (`<logdir>/plugins/profile/*/*.xplane.pb`, which TensorBoard's
Profile tab also opens) by op type and by layer group of Fig. 1, and prints
Markdown tables: the figures of docs/performance.md.
"""

from __future__ import annotations

import collections
import glob
import os
import re

from absl import flags

from meta_drn_tf import cli
from meta_drn_tf.hardware import describe

flags.DEFINE_enum("algo", "maml", ["maml", "fomaml", "metasgd", "reptile"], "Algorithm.")
flags.DEFINE_integer("size", 224, "Image size.")
flags.DEFINE_float("width", 1.0, "Network width.")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "Compute precision.")
flags.DEFINE_integer("queries", 1, "Query images per task (q).")
flags.DEFINE_integer("steps", 2, "Profiled meta-steps.")
flags.DEFINE_string("logdir", "runs/profile", "Where the profiler writes its trace.")
flags.DEFINE_integer("top", 15, "Rows of the op-type table.")
FLAGS = flags.FLAGS
cli.check_paths(logdir="new_folder")

TF_OP = re.compile(r"^[\w./\-]+:_?[A-Z][A-Za-z0-9]*$")  # "resblock3/conv2/conv/Conv2D:Conv2D"


def op_name_and_type(event_name: str) -> tuple[str, str]:
    """A TF_OP event's op name and type, oneDNN's kernels under the op they run (`_MklNativeConv2D` ->
    `Conv2D`): TensorFlow swaps them in on AVX512 hosts, and the tables read the same on every host."""
    op_name, kind = event_name.rsplit(":", 1)
    return op_name, re.sub(r"^_Mkl(Native)?", "", kind)


def read_trace(xplane_path: str):
    """The profiler's XSpace protocol buffer from a `*.xplane.pb` file."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as f:
        space.ParseFromString(f.read())
    return space


def kernel_times(xplane_path: str) -> list[tuple[str, str, float]]:
    """(op name, op type, milliseconds) of every TF op execution on the host in an XSpace trace.

    Events named `op_name:OpType` are TF ops; of those only the innermost count: one that
    encloses other ops on its thread (a function call, a loop) is the sum of its children.
    """
    records = []
    for plane in read_trace(xplane_path).planes:
        if not plane.name.startswith("/host:CPU") and not plane.name.startswith("/device:"):
            continue
        for line in plane.lines:
            ops = sorted(((e, plane.event_metadata[e.metadata_id].name) for e in line.events
                          if TF_OP.match(plane.event_metadata[e.metadata_id].name)), key=lambda x: x[0].offset_ps)
            for i, (event, name) in enumerate(ops):
                if i + 1 < len(ops) and ops[i + 1][0].offset_ps < event.offset_ps + event.duration_ps:
                    continue  # encloses the next op
                op_name, kind = op_name_and_type(name)
                records.append((op_name, kind, event.duration_ps / 1e9))
    return records


def layer_group(op_name: str) -> str:
    """The Fig. 1 group an op belongs to, from its name scope (gradients keep the forward's scope)."""
    from meta_drn_tf.network.model import GROUPS

    for part in op_name.split("/"):
        for group in GROUPS:
            if part.startswith(group):
                return group
    return "other (loss, updates, optimizer)"


def profiled_step(steps: int, logdir: str, host_tracer_level: int = 2) -> str:
    """Builds the flags' learner and a task (k = 1, q = --queries), warms up, profiles `steps` meta-steps into
    `logdir`; returns the trace's path (`*.xplane.pb`)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from meta_drn_tf.meta import MetaConfig, MetaLearner
    from meta_drn_tf.network.model import build_meta_drn

    config = MetaConfig(FLAGS.algo, precision=FLAGS.precision)
    keras.utils.set_random_seed(0)
    learner = MetaLearner(build_meta_drn(FLAGS.size, FLAGS.width, dtype=config.dtype_policy), config)
    rng = np.random.default_rng(0)
    s = FLAGS.size
    batch = {"support_images": rng.uniform(size=(1, 1, s, s, 3)).astype("float32"),
             "support_masks": (rng.uniform(size=(1, 1, s, s, 1)) > 0.7).astype("float32"),
             "query_images": rng.uniform(size=(1, FLAGS.queries, s, s, 3)).astype("float32"),
             "query_masks": (rng.uniform(size=(1, FLAGS.queries, s, s, 1)) > 0.7).astype("float32")}
    learner.meta_train_step(batch)["loss"].numpy()  # trace and warm up outside the profile
    options = tf.profiler.experimental.ProfilerOptions(host_tracer_level=host_tracer_level)
    tf.profiler.experimental.start(logdir, options)
    for _ in range(steps):
        learner.meta_train_step(batch)["loss"].numpy()
    tf.profiler.experimental.stop()
    return max(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")), key=os.path.getmtime)


def main(argv):
    del argv
    path = profiled_step(FLAGS.steps, FLAGS.logdir)
    s = FLAGS.size
    records = kernel_times(path)
    total = sum(ms for _, _, ms in records)

    print(describe())
    print(f"{FLAGS.algo}, {FLAGS.precision}, {s}x{s}, width {FLAGS.width}, k=1, q={FLAGS.queries}: "
          f"{FLAGS.steps} step(s) profiled, {total / FLAGS.steps:.0f} ms of op time per step (trace: {path})\n")
    by_type, count = collections.Counter(), collections.Counter()
    for _, kind, ms in records:
        by_type[kind] += ms
        count[kind] += 1
    print("| op type | ms/step | share | executions/step |\n|---|---|---|---|")
    for kind, ms in by_type.most_common(FLAGS.top):
        print(f"| {kind} | {ms / FLAGS.steps:.0f} | {100 * ms / total:.1f}% | {count[kind] // FLAGS.steps} |")
    rest = total - sum(ms for _, ms in by_type.most_common(FLAGS.top))
    print(f"| all other op types | {rest / FLAGS.steps:.0f} | {100 * rest / total:.1f}% | |\n")
    by_group = collections.Counter()
    for op_name, _, ms in records:
        by_group[layer_group(op_name)] += ms
    print("| layer group (forward and its gradients) | ms/step | share |\n|---|---|---|")
    for group, ms in by_group.most_common():
        print(f"| {group} | {ms / FLAGS.steps:.0f} | {100 * ms / total:.1f}% |")


if __name__ == "__main__":
    cli.run(main)
