"""The one command to run the day a GPU is at hand: GPU tests, then the meta-step benchmark.

    pip install -e '.[and-cuda,test]' && python tools/gpu_check.py [--report=gpu_check.md] [--budget_s=420]
    python tools/gpu_check.py --smoke        # the same, end to end, on a CPU at tiny sizes (CI runs this)

Or, for a GPU machine without TensorFlow (JAX is enough):

    pip install -e '.[hlo]' && python tools/gpu_check.py --hlo=hlo/   # here: the XLA programs, ~6 minutes
    python hlo/run.py                                                 # there: checks, timings, hlo/report.md

`--hlo` writes the project's XLA programs (`meta_drn_tf/bench/xla_programs.py`) with
TensorFlow's references and a runner that needs only numpy and JAX (`xla_runner.py`, as run.py);
with `--smoke`, only the small programs (CI runs that too). Nothing else runs then.

1. The tests marked `gpu` (tests/test_gpu.py), in a pytest of their own with the GPU visible
   (tests/conftest.py hides GPUs from every other test), before this process touches a GPU (it
   would hold memory the tests need; it also takes memory only as it needs it) and within half of
   --budget_s: a pytest still running then is stopped, and the report says so.
2. The meta-step at 224x224 (1 support, 5 queries, the paper's meta-batch of 5 tasks) for MAML,
   FOMAML, Meta-SGD and Reptile in float32, float16 and bfloat16, with and without XLA, with
   `--parallel_tasks` 1 and auto; with several GPUs, MirroredStrategy over all of them too.
   Each row: seconds per meta-step (median of --repeats after warm-up) and the projected time of
   one FSS-1000 epoch (7,000 tasks) beside the paper's RTX 2080 figure; float32 in full float32
   unless --tf32. Rows run most important
   first and stop when --budget_s is spent; the report names the rows it did not reach.

Prints the report and writes it as markdown (--report).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags
from timing import timed  # tools/timing.py

from meta_drn_tf import paths
from meta_drn_tf.bench.xla_runner import EPOCH_TASKS, PAPER_EPOCH, minutes, paper_seconds

flags.DEFINE_bool("smoke", False, "Tiny sizes on whatever device is there (a CPU in CI): checks the tool itself.")
flags.DEFINE_string("report", "gpu_check.md", "Where the markdown report goes.")
flags.DEFINE_float("budget_s", 420.0, "Stop starting benchmark rows after this many seconds (tests included; "
                   "the first row always runs).")
flags.DEFINE_integer("repeats", 3, "Timed meta-steps per row (median), after one warm-up step.")
flags.DEFINE_bool("tests", True, "Run the GPU tests (first, in a process of their own).")
flags.DEFINE_bool("tf32", False, "Time float32 rows in TF32 (NVIDIA Ampere and newer) instead of full float32.")
flags.DEFINE_string("hlo", None, "Write the XLA programs, their references and the JAX runner into this folder "
                    "instead (on a machine with TensorFlow and JAX; no GPU needed).")
FLAGS = flags.FLAGS
flags.register_validator("report", lambda path: paths.creatable_file(path) is None,
                         message="must be a file that can be written (not a folder, not inside a file)")
# `--hlo --smoke` would take "--smoke" as the folder.
flags.register_validator("hlo", lambda path: path is None or not path.startswith("-"),
                         message="looks like a flag, not a folder: give the folder as --hlo=FOLDER")
flags.register_validator("hlo", lambda path: path is None or paths.problems({"hlo": ("new_folder", path)}) == [],
                         message="must be a folder that can be created or written into")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ALGORITHMS = tuple(PAPER_EPOCH)
PRECISIONS = ("float32", "float16", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Sizes:
    image: int
    width: float
    meta_batch: int
    queries: int


FULL, SMOKE = Sizes(224, 1.0, 5, 5), Sizes(32, 0.0625, 2, 1)


@dataclasses.dataclass(frozen=True)
class Row:
    algorithm: str
    precision: str
    jit: bool
    parallel: str  # "1" or "auto"
    mirrored: bool = False

    @property
    def name(self) -> str:
        return (f"{self.algorithm} {self.precision}{' XLA' if self.jit else ''} parallel={self.parallel}"
                f"{' mirrored' if self.mirrored else ''}")


def rows(gpus: int) -> list[Row]:
    """Most important first: float32 without XLA (the defaults), then the other precisions, then XLA."""
    plan = [Row(a, "float32", False, p) for a in ALGORITHMS for p in ("1", "auto")]
    plan += [Row(a, precision, False, "auto") for precision in PRECISIONS[1:] for a in ALGORITHMS]
    plan += [Row(a, precision, True, "auto") for precision in PRECISIONS for a in ALGORITHMS]
    if gpus > 1:
        plan += [Row(a, "float32", False, "auto", mirrored=True) for a in ALGORITHMS]
    return plan


def run_gpu_tests(deadline: float) -> str:
    """The `gpu` tests with the GPU visible, stopped at `deadline` (time.time()); their summary line."""
    timeout_s = max(deadline - time.time(), 1.0)
    env = {**os.environ, "META_DRN_GPU_TESTS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                              os.path.join(ROOT, "tests", "test_gpu.py")], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"stopped unfinished after {timeout_s:.0f} s, at half of --budget_s={FLAGS.budget_s:.0f}"
    lines = [line for line in out.stdout.strip().splitlines() if line.strip()]
    summary = lines[-1] if lines else "(no output)"
    if out.returncode not in (0, 5):
        print(out.stdout[-6000:], out.stderr[-3000:], sep="\n")
    return summary.strip("= ")


def synthetic_batch(sizes: Sizes, tasks: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    s, q = sizes.image, sizes.queries
    return {"support_images": rng.uniform(size=(tasks, 1, s, s, 3)).astype("float32"),
            "support_masks": (rng.uniform(size=(tasks, 1, s, s, 1)) > 0.7).astype("float32"),
            "query_images": rng.uniform(size=(tasks, q, s, s, 3)).astype("float32"),
            "query_masks": (rng.uniform(size=(tasks, q, s, s, 1)) > 0.7).astype("float32")}


def time_row(row: Row, sizes: Sizes) -> dict:
    """Seconds per meta-step of `row` (median of --repeats after a warm-up step) and the first step's."""
    import keras
    import tensorflow as tf

    from meta_drn_tf.meta import MetaConfig, MetaLearner
    from meta_drn_tf.network.config import NetworkConfig
    from meta_drn_tf.network.model import build_meta_drn

    keras.backend.clear_session(free_memory=True)
    config = MetaConfig(row.algorithm, precision=row.precision, jit_compile=row.jit,
                        parallel_tasks=None if row.parallel == "auto" else int(row.parallel))
    strategy = tf.distribute.MirroredStrategy() if row.mirrored else tf.distribute.get_strategy()
    with strategy.scope():
        keras.utils.set_random_seed(0)
        learner = MetaLearner(build_meta_drn(NetworkConfig(sizes.image, sizes.width), config.dtype_policy), config,
                              strategy=strategy)
    batch = synthetic_batch(sizes, sizes.meta_batch)
    if row.mirrored:
        dataset = tf.data.Dataset.from_tensors(batch).unbatch().batch(sizes.meta_batch).repeat()
        batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
    first, times = timed(lambda: learner.meta_train_step(batch)["loss"].numpy(), FLAGS.repeats)
    return {"seconds": statistics.median(times), "first_s": first}


def benchmark(sizes: Sizes, deadline: float, gpus: int) -> list[str]:
    """The benchmark table's markdown lines, row by row until `deadline` (the first row runs whatever
    the budget)."""
    lines = ["| row | s/meta-step | tasks/s | first step (trace, compile) s | projected epoch (7,000 tasks) "
             "| paper, RTX 2080 | ratio |", "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    skipped = []
    for row in rows(gpus):
        if time.time() > deadline and len(lines) > 2:  # the first row runs whatever the budget
            skipped.append(row.name)
            continue
        try:
            result = time_row(row, sizes)
        except Exception as e:  # a row that cannot run on this device is reported, not fatal
            lines.append(f"| {row.name} | failed: {type(e).__name__}: {str(e).splitlines()[0][:120]} | | | | | |")
            print(lines[-1], flush=True)
        else:
            lines.append(_row_line(row, sizes, result))
            print(lines[-1], flush=True)
    if skipped:
        lines.append(f"\nNot reached within --budget_s={FLAGS.budget_s:.0f}: " + "; ".join(skipped))
    return lines


def _row_line(row: Row, sizes: Sizes, result: dict) -> str:
    epoch = result["seconds"] * EPOCH_TASKS / sizes.meta_batch
    paper = paper_seconds(row.algorithm)
    return (f"| {row.name} | {result['seconds']:.3f} | {sizes.meta_batch / result['seconds']:.1f} | "
            f"{result['first_s']:.1f} | {minutes(epoch)} | {PAPER_EPOCH[row.algorithm]} | {epoch / paper:.2f} |")


def write_hlo(folder: str) -> None:
    """--hlo: the XLA programs, their references and the runner, into `folder`."""
    from meta_drn_tf.bench import xla_programs

    start = time.time()
    plan = xla_programs.programs_plan(smoke=FLAGS.smoke)
    xla_programs.write_folder(folder, plan, os.path.join(ROOT, "flags"))
    size = sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))
    print(f"{len(plan)} programs written to {folder} ({size / 2**20:.1f} MiB, {time.time() - start:.0f} s). "
          f"Run them where JAX is: python {os.path.join(folder, 'run.py')}")


def main(argv):
    del argv
    start = time.time()
    sys.path.insert(0, ROOT)
    if FLAGS.hlo:
        return write_hlo(FLAGS.hlo)
    import tensorflow as tf

    from meta_drn_tf import hardware

    hardware.allow_memory_growth()
    hardware.use_tf32(FLAGS.tf32)
    tf.get_logger().setLevel("ERROR")  # one learner per row: tf.function's retracing notes are expected
    gpus = len(tf.config.list_physical_devices("GPU"))  # lists the GPUs without using one
    sizes = SMOKE if FLAGS.smoke else FULL
    # Before this process uses a GPU: the tests' own process then gets the memory they need.
    tests = run_gpu_tests(start + FLAGS.budget_s / 2) if FLAGS.tests else "not run (--notests)"
    print(f"GPU tests: {tests}", flush=True)
    title = [f"# GPU check{' (smoke: tiny sizes)' if FLAGS.smoke else ''}", "", f"Host: {hardware.describe()}", ""]
    setup = [f"Meta-step: {sizes.image}x{sizes.image}, width {sizes.width}, 1 support + {sizes.queries} queries, "
             f"meta-batch {sizes.meta_batch}; kernels auto ({'stock' if gpus else 'cpu'} here); float32 "
             f"{'in TF32' if FLAGS.tf32 else 'in full float32'}; epoch = s/step x {EPOCH_TASKS} / "
             f"{sizes.meta_batch}.", ""]
    print("\n".join(title + setup), flush=True)
    lines = benchmark(sizes, start + FLAGS.budget_s, gpus)
    report = "\n".join(title + [f"GPU tests (`pytest -m gpu`): {tests}", ""] + setup + lines) + "\n"
    with open(FLAGS.report, "w") as f:
        f.write(report)
    print(f"\nReport written to {FLAGS.report} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    app.run(main)
