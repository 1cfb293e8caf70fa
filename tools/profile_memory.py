"""Where a meta-step's memory goes: the tensors alive at its peak, by op type, layer group and op.

    python tools/profile_memory.py [--algo=maml] [--size=224] [--width=1.0] [--precision=float32]
                                   [--queries=1] [--top=20]

Runs TensorFlow's BFC allocator on the CPU too (`TF_CPU_ALLOCATOR_USE_BFC`, set
here before TensorFlow starts; GPUs use it anyway), which records every
allocation and free in the profiler's trace. Profiles one meta-step
(k = 1, q = `--queries`, meta-batch 1) after a warm-up step, replays the allocations, and
prints the step's tensor peak and, at that moment, what is alive: Markdown
tables by op type, by layer group of Fig. 1 and by op (loop iterations and
numbered copies of an op merged). The figures of docs/performance.md.
"""

from __future__ import annotations

import collections
import os
import re

os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")  # before TensorFlow starts (cli.run)

from absl import flags  # noqa: E402
from profiling import TF_OP, define_step_flags, layer_group, op_name_and_type, profiled_step, read_trace  # noqa: E402

from meta_drn_tf import cli  # noqa: E402
from meta_drn_tf.hardware import describe  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    define_step_flags()
    flags.DEFINE_string("memory_logdir", "runs/profile_memory", "Where the profiler writes its trace.")
    flags.DEFINE_integer("top", 20, "Rows of each table.")
    cli.check_paths(memory_logdir="new_folder")


def allocations(xplane_path: str) -> tuple[list[tuple], dict[str, str]]:
    """The trace's allocator events in time order, as (time, "MemoryAllocation" or "MemoryDeallocation",
    bytes in use after it, op, bytes, address), and each executed op's type by its name."""
    events, op_types = [], {}
    for plane in read_trace(xplane_path).planes:
        stat_names = {k: v.name for k, v in plane.stat_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if name in ("MemoryAllocation", "MemoryDeallocation"):
                    stats = {stat_names.get(s.metadata_id): s for s in event.stats}
                    value = lambda key: getattr(stats[key], stats[key].WhichOneof("value"))  # noqa: E731
                    op = value("tf_op") if "tf_op" in stats else "?"
                    if "tf_op" in stats and stats["tf_op"].WhichOneof("value") == "ref_value":
                        op = plane.stat_metadata[op].name
                    events.append((line.timestamp_ns * 1000 + event.offset_ps, name, value("bytes_allocated"),
                                   op, value("allocation_bytes"), value("addr")))
                elif TF_OP.match(name):
                    op_name, kind = op_name_and_type(name)
                    op_types[op_name] = kind
    events.sort()
    return events, op_types


def op_key(name: str) -> str:
    """An op's name without the loop-body prefix and numbered-copy suffix."""
    return re.sub(r"_\d+$", "", re.sub(r"^(while/body/_\d+/)+", "", name))


def main(argv):
    del argv
    path = profiled_step(1, FLAGS.memory_logdir, host_tracer_level=3)
    events, op_types = allocations(path)
    if not events:
        raise SystemExit("the trace has no allocator events: is TensorFlow's BFC allocator in use?")
    live, peak, at_peak = {}, -1, {}
    start = events[0][2] - (events[0][4] if events[0][1] == "MemoryAllocation" else -events[0][4])
    for _, kind, in_use, op, size, address in events:
        if kind == "MemoryAllocation":
            live[address] = (op, size)
        else:
            live.pop(address, None)
        if in_use > peak:
            peak, at_peak = in_use, dict(live)
    made_in_step = sum(size for _, size in at_peak.values())

    print(describe())
    s = FLAGS.size
    print(f"{FLAGS.algo}, {FLAGS.precision}, {s}x{s}, width {FLAGS.width}, k=1, q={FLAGS.queries} (trace: {path})\n")
    print(f"tensor memory: {start / 2**20:.1f} MiB before the step (weights, optimizer slots), "
          f"peak {peak / 2**20:.1f} MiB; alive at the peak and made during the step: {made_in_step / 2**20:.1f} MiB\n")
    tables = (("op type", lambda op: op_types.get(op, "(not in the trace)")),
              ("layer group", layer_group),
              ("op (name scope)", op_key))
    for title, key in tables:
        total, count = collections.Counter(), collections.Counter()
        for op, size in at_peak.values():
            total[key(op)] += size
            count[key(op)] += 1
        print(f"| {title} | MiB alive at the peak | tensors |\n|---|---|---|")
        for name, size in total.most_common(FLAGS.top):
            print(f"| {name} | {size / 2**20:.1f} | {count[name]} |")
        rest = made_in_step - sum(size for _, size in total.most_common(FLAGS.top))
        if rest:
            print(f"| all others | {rest / 2**20:.1f} | |")
        print()


if __name__ == "__main__":
    cli.run(main, define_flags)
