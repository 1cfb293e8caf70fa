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

from absl import flags
from profiling import TF_OP, define_step_flags, layer_group, op_name_and_type, profiled_step, read_trace

from meta_drn_tf import cli
from meta_drn_tf.hardware import describe

FLAGS = flags.FLAGS


def define_flags() -> None:
    define_step_flags()
    flags.DEFINE_integer("steps", 2, "Profiled meta-steps.")
    flags.DEFINE_string("logdir", "runs/profile", "Where the profiler writes its trace.")
    flags.DEFINE_integer("top", 15, "Rows of the op-type table.")
    cli.check_paths(logdir="new_folder")


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
    cli.run(main, define_flags)
