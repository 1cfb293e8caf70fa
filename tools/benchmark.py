"""Meta-train step cost per algorithm and precision (the hot path).

    python tools/benchmark.py [--size 224] [--width 1.0] [--algos maml,fomaml,metasgd,reptile]
                              [--precisions float32,bfloat16] [--repeats 3]

For each algorithm and precision, at k = 1 support and q = 1 query: seconds
per meta-step at meta-batch 1 (median of --repeats after a warm-up step),
tasks/s, peak resident memory at meta-batch 1 and 5 (each configuration runs
in its own process, so the peak is its own), and the achieved GFLOP/s
against a float32 matmul peak measured in the same run.

FLOPs: F is one forward pass's convolution FLOPs for one image (counted from
the layer shapes). A backward pass costs about 2F, so a meta-step with q
queries costs about
  MAML / Meta-SGD (1 inner step, second order)    (7 + 3q)F   (10F at q = 1)
  FOMAML                                          (3 + 3q)F    (6F)
  Reptile (5 steps on support + query images)   15(1 + q)F   (30F)
and achieved GFLOP/s = multiple x F x tasks / seconds.

Also, per configuration: the working set (peak RSS minus the RSS after
building the model and one forward pass), the number of operations in the
traced meta-step graph (loop bodies included: what a GPU launches), and
TensorFlow's peak tensor memory with, in brackets, how much of it the step
made (the peak minus the tensors alive before the step: weights, optimizer
slots). GPUs report it; on a CPU it is measured in one more process per
row, with TensorFlow's BFC allocator (`TF_CPU_ALLOCATOR_USE_BFC=true`), which
keeps these statistics (tools/profile_memory.py shows what is alive at the peak).

    python tools/benchmark.py --peer=/path/to/venv-with-torch/bin/python [--algos maml,fomaml] [--rounds 3]

also runs the PyTorch peer (`--peer_script`, default tools/torch_peer.py: the
same network with torch.func, which also prints its RSS after building the model and one forward pass) alternately with
each configuration and prints a ratio table (this project / peer; below 1 is
better), working sets measured alike on both sides. With --rounds N, each row
runs N rounds of one process of each, back to back, and ends with the median
and range of the N time ratios: this host's speed drifts more than the ratios
differ from one run to the next.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import flags
from timing import timed  # tools/timing.py

from meta_drn_tf import cli
from meta_drn_tf.hardware import describe

flags.DEFINE_integer("size", 224, "Image size.")
flags.DEFINE_float("width", 1.0, "Network width.")
flags.DEFINE_list("precisions", ["float32", "bfloat16"], "Precisions.")
flags.DEFINE_integer("repeats", 3, "Timed steps (median) at meta-batch 1.")
flags.DEFINE_list("memory_precisions", ["float32"], "Precisions whose meta-batch-5 peak memory is measured too.")
flags.DEFINE_string("one", None, "Internal: run one configuration 'algo,precision,meta_batch' and print JSON.")
flags.DEFINE_bool("jit_compile", False, "Compile the step with XLA.")
flags.DEFINE_integer("queries", 1, "Query images per task (q).")
flags.DEFINE_bool("memory_saving", False, "The opt-in memory mode (queries backpropagated one at a time).")
flags.DEFINE_string("parallel_tasks", "auto", "Tasks of the meta-batch at once: N or auto.")
flags.DEFINE_string("peer", None, "A Python interpreter with torch: also run the PyTorch peer and print ratios.")
flags.DEFINE_string("peer_script", os.path.join(os.path.dirname(__file__), "torch_peer.py"),
                    "The PyTorch peer benchmark script (default: tools/torch_peer.py, which also reports its "
                    "RSS before the first step).")
flags.DEFINE_integer("rounds", 1, "With --peer: rounds of (this project, peer) per row; the time ratio's median "
                     "and range close the row.")
FLAGS = flags.FLAGS
cli.check_paths(peer="file", peer_script="file")

# A meta-step's FLOPs in forward passes of one image, for q queries (see the module docstring).
FLOP_MULTIPLE = {"maml": lambda q: 7 + 3 * q, "metasgd": lambda q: 7 + 3 * q, "fomaml": lambda q: 3 + 3 * q,
                 "reptile": lambda q: 15 * (1 + q)}


def conv_flops(model, size: int) -> float:
    """F: sums 2*H*W*Cout*kh*kw*Cin over the Conv2D ops of a traced one-image forward pass."""
    import numpy as np
    import tensorflow as tf

    from meta_drn_tf.network.kernels import KernelPolicy

    # F counts direct convolutions' FLOPs (one Conv2D op a layer), whichever form the step runs.
    direct = KernelPolicy("stock", dilated_gradients_in_one_op=True)
    graph = tf.function(lambda x: model(x, kernels=direct)).get_concrete_function(
        tf.TensorSpec([1, size, size, 3], tf.float32)).graph
    flops = 0.0
    for op in graph.get_operations():
        if op.type == "Conv2D":
            out = op.outputs[0].shape.as_list()
            kh, kw, cin, _ = op.inputs[1].shape.as_list()
            flops += 2.0 * np.prod(out) * kh * kw * cin
    return flops


def matmul_peak(dtype: str, n: int = 2048, repeats: int = 10) -> float:
    import tensorflow as tf

    a = tf.random.uniform((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)
    f = tf.function(lambda x: tf.matmul(x, x))
    f(a).numpy()
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).numpy()
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best / 1e9


def rss_gib() -> float:
    """This process's resident memory now."""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kib / 2**20


def run_one(spec: str) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from meta_drn_tf.bench.graphs import meta_step_graph, operations
    from meta_drn_tf.meta import MetaConfig, MetaLearner
    from meta_drn_tf.network.config import NetworkConfig
    from meta_drn_tf.network.model import build_meta_drn

    algo, precision, meta_batch = spec.split(",")
    meta_batch = int(meta_batch)
    config = MetaConfig(algo, precision=precision, jit_compile=FLAGS.jit_compile, memory_saving=FLAGS.memory_saving,
                        kernels=FLAGS.kernels,
                        parallel_tasks=None if FLAGS.parallel_tasks == "auto" else int(FLAGS.parallel_tasks))
    keras.utils.set_random_seed(0)
    model = build_meta_drn(NetworkConfig(FLAGS.size, FLAGS.width), config.dtype_policy)
    learner = MetaLearner(model, config)
    rng = np.random.default_rng(0)
    s = FLAGS.size
    batch = {"support_images": rng.uniform(size=(meta_batch, 1, s, s, 3)).astype("float32"),
             "support_masks": (rng.uniform(size=(meta_batch, 1, s, s, 1)) > 0.7).astype("float32"),
             "query_images": rng.uniform(size=(meta_batch, FLAGS.queries, s, s, 3)).astype("float32"),
             "query_masks": (rng.uniform(size=(meta_batch, FLAGS.queries, s, s, 1)) > 0.7).astype("float32")}
    # The baseline's forward pass in the step's forms (what the model's own call would not choose).
    model(batch["support_images"][0], kernels=learner.kernel_policy()).numpy()
    baseline_rss = rss_gib()
    gpus = tf.config.list_logical_devices("GPU")
    bfc_cpu = os.environ.get("TF_CPU_ALLOCATOR_USE_BFC", "").lower() in ("1", "true")
    device = gpus[0].name if gpus else "CPU:0" if bfc_cpu else None  # where TF keeps memory statistics
    if device:
        tf.config.experimental.reset_memory_stats(device)
    tensors_before = tf.config.experimental.get_memory_info(device)["current"] / 2**30 if device else None
    first, times = timed(lambda: learner.meta_train_step(batch)["loss"].numpy(),
                         FLAGS.repeats if meta_batch == 1 else 0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    tensor_peak = tf.config.experimental.get_memory_info(device)["peak"] / 2**30 if device else None
    graph_ops = sum(1 for _ in operations(meta_step_graph(learner, meta_batch, 1, FLAGS.queries, s)))
    return {"first_step_s": first, "times": times, "flops": conv_flops(model, s), "peak_rss_gib": peak,
            "working_set_gib": peak - baseline_rss, "graph_ops": graph_ops, "tensor_peak_gib": tensor_peak,
            "tensors_before_gib": tensors_before}


def child(spec: str, bfc_cpu_allocator: bool = False) -> dict:
    """`run_one(spec)` in a fresh process; with `bfc_cpu_allocator`, one timed step under TensorFlow's
    BFC allocator on the CPU (for its tensor memory statistics)."""
    cmd = [sys.executable, __file__, f"--one={spec}", f"--size={FLAGS.size}", f"--width={FLAGS.width}",
           f"--repeats={1 if bfc_cpu_allocator else FLAGS.repeats}", f"--jit_compile={FLAGS.jit_compile}",
           f"--queries={FLAGS.queries}", f"--memory_saving={FLAGS.memory_saving}", f"--kernels={FLAGS.kernels}",
           f"--parallel_tasks={FLAGS.parallel_tasks}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if bfc_cpu_allocator:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def tensor_memory(one: dict, spec: str) -> str:
    """"peak (made by the step)" in GiB, from `one`'s device or a BFC-allocator run on the CPU."""
    if one["tensor_peak_gib"] is None:
        one = child(spec, bfc_cpu_allocator=True)
    if one["tensor_peak_gib"] is None:
        return "n/a"
    return f"{one['tensor_peak_gib']:.2f} ({one['tensor_peak_gib'] - one['tensors_before_gib']:.2f})"


PEER_MODES = {"maml": "second", "fomaml": "first"}


def peer(precision: str, algo: str) -> dict:
    """The PyTorch peer's median step time, peak RSS and (where its script reports it) working set for one row."""
    cmd = [FLAGS.peer, FLAGS.peer_script, str(FLAGS.size), precision, PEER_MODES[algo]]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
    peak = float(out[out.index("peak_rss_gib") + 1])
    baseline = float(out[out.index("baseline_rss_gib") + 1]) if "baseline_rss_gib" in out else None
    return {"seconds": float(out[out.index("median") + 1]), "peak_rss_gib": peak,
            "working_set_gib": None if baseline is None else peak - baseline}


def peer_table() -> None:
    """This project and the peer alternately, row by row, `--rounds` times, and their ratios.

    The host's speed drifts by ±10% between runs (shared machines), so each round is one
    process of each, back to back, and a row with several rounds ends with the median and range
    of the rounds' time ratios."""
    if FLAGS.width != 1.0:
        print(f"note: the peer is always the full-width network; this run uses --width={FLAGS.width}")
    print("| row | this project (s, peak RSS GiB, working set GiB) | peer (s, peak RSS GiB, working set GiB) "
          "| time ratio | peak RSS ratio | working set ratio |")
    print("|---|---|---|---|---|---|")
    for algo in [a for a in FLAGS.algos if a in PEER_MODES]:
        for precision in FLAGS.precisions:
            time_ratios = []
            for _ in range(FLAGS.rounds):
                ours = child(f"{algo},{precision},1")
                theirs = peer(precision, algo)
                seconds = statistics.median(ours["times"])
                time_ratios.append(seconds / theirs["seconds"])
                their_set = theirs["working_set_gib"]
                their_set, set_ratio = ("n/a", "n/a") if their_set is None else (
                    f"{their_set:.2f}", f"{ours['working_set_gib'] / their_set:.2f}")
                print(f"| {algo} {precision} | {seconds:.2f}, {ours['peak_rss_gib']:.2f}, "
                      f"{ours['working_set_gib']:.2f} | {theirs['seconds']:.2f}, {theirs['peak_rss_gib']:.2f}, "
                      f"{their_set} | {time_ratios[-1]:.2f} | {ours['peak_rss_gib'] / theirs['peak_rss_gib']:.2f} "
                      f"| {set_ratio} |", flush=True)
            if len(time_ratios) > 1:
                print(f"| {algo} {precision}, {len(time_ratios)} rounds | | "
                      f"| median {statistics.median(time_ratios):.2f} "
                      f"({min(time_ratios):.2f}-{max(time_ratios):.2f}) | | |", flush=True)


def main(argv):
    del argv
    if FLAGS.one:
        print(json.dumps(run_one(FLAGS.one)))
        return
    from meta_drn_tf.hardware import bfloat16_support

    print(describe())
    support = bfloat16_support()
    meaning = ("this CPU has neither AVX512-BF16 nor AMX: TensorFlow emulates bfloat16, expect it slower than "
               "float32" if support == "emulated" else "per GPU" if ": " in support
               else "bfloat16 runs natively: expect it faster than float32")
    print(f"bfloat16: {support} ({meaning})")
    peak32, peak16 = matmul_peak("float32"), matmul_peak("bfloat16")
    print(f"matmul peak: float32 {peak32:.0f} GFLOP/s, bfloat16 {peak16:.0f} GFLOP/s")
    print(f"Meta-DRN {FLAGS.size}x{FLAGS.size}, width {FLAGS.width}, k=1, q={FLAGS.queries}, XLA {FLAGS.jit_compile}, "
          f"memory saving {FLAGS.memory_saving}, kernels {FLAGS.kernels}, parallel tasks {FLAGS.parallel_tasks}")
    if FLAGS.peer:
        peer_table()
        return
    header = ("| algorithm | precision | s/meta-step (MB 1) | tasks/s | peak RSS MB 1 (GiB) | peak RSS MB 5 (GiB) "
              "| MB5/MB1 | working set MB 1 (GiB) | graph ops | TF peak tensor memory (step's) GiB | FLOPs/step "
              "| GFLOP/s | % of f32 peak |")
    print(header)
    print("|" + "---|" * 13)
    for algo in FLAGS.algos:
        for precision in FLAGS.precisions:
            one = child(f"{algo},{precision},1")
            five = child(f"{algo},{precision},5") if precision in FLAGS.memory_precisions else None
            seconds = statistics.median(one["times"])
            f = one["flops"]
            multiple = FLOP_MULTIPLE[algo](FLAGS.queries)
            gflops = multiple * f / seconds / 1e9
            mb5 = f"{five['peak_rss_gib']:.2f} | {five['peak_rss_gib'] / one['peak_rss_gib']:.2f}" if five else "- | -"
            tensor_peak = tensor_memory(one, f"{algo},{precision},1")
            print(f"| {algo} | {precision} | {seconds:.2f} | {1 / seconds:.2f} | {one['peak_rss_gib']:.2f} | {mb5} | "
                  f"{one['working_set_gib']:.2f} | {one['graph_ops']} | {tensor_peak} | "
                  f"{multiple}F = {multiple * f / 1e9:.0f} G | {gflops:.0f} | "
                  f"{100 * gflops / peak32:.0f}% |", flush=True)
    print(f"F (one forward pass, one image) = {one['flops'] / 1e9:.1f} GFLOP")


def define_flags() -> None:
    """The flags whose choices are the library's lists (defined once TensorFlow has started)."""
    from meta_drn_tf.meta import PAPER_ALGORITHMS
    from meta_drn_tf.network.kernels import KERNEL_CHOICES

    flags.DEFINE_list("algos", list(PAPER_ALGORITHMS), "Algorithms.")
    flags.DEFINE_enum("kernels", "auto", KERNEL_CHOICES, "Kernel policy (see train --help).")


if __name__ == "__main__":
    cli.run(main, define_flags)
