"""Training input pipeline throughput (tasks/s) at 224x224 with augmentation.

    python tools/benchmark_data.py [--size 224] [--shots 1] [--queries 5] [--tasks 300]

Measures the synthetic (in-memory) source and an FSS-layout folder on disk
(the synthetic classes written as .jpg/.png, then decoded by the reader).
"""

from __future__ import annotations

import tempfile
import time

from absl import flags

from meta_drn_tf import cli
from meta_drn_tf.hardware import describe

flags.DEFINE_integer("size", 224, "Image size.")
flags.DEFINE_integer("shots", 1, "k.")
flags.DEFINE_integer("queries", 5, "q.")
flags.DEFINE_integer("tasks", 300, "Tasks to time (after a warm-up).")
flags.DEFINE_integer("classes", 40, "Classes in the source.")
FLAGS = flags.FLAGS


def tasks_per_second(bank) -> float:
    from meta_drn_tf.data.episodes import meta_batches, training_tasks

    batches = meta_batches(training_tasks(bank, FLAGS.shots, FLAGS.queries, seed=0), 5)
    it = iter(batches)
    for _ in range(4):
        next(it)
    start = time.perf_counter()
    n = FLAGS.tasks // 5
    for _ in range(n):
        next(it)
    return n * 5 / (time.perf_counter() - start)


def main(argv):
    del argv
    from meta_drn_tf.data.fss1000 import load_bank
    from meta_drn_tf.data.synthetic import synthetic_bank, write_fss_layout

    print(describe())
    bank = synthetic_bank(FLAGS.classes, 10, FLAGS.size, seed=0)
    synthetic = tasks_per_second(bank)
    with tempfile.TemporaryDirectory() as root:
        write_fss_layout(bank, root)
        start = time.perf_counter()
        disk_bank = load_bank(root, bank.class_names, FLAGS.size, progress=False)
        decode = time.perf_counter() - start
        disk = tasks_per_second(disk_bank)
    print(f"k={FLAGS.shots} q={FLAGS.queries} {FLAGS.size}x{FLAGS.size}, augmentation on, meta-batch 5")
    print(f"synthetic (in memory):  {synthetic:8.1f} tasks/s")
    print(f"FSS-layout folder:      {disk:8.1f} tasks/s  (after decoding {bank.num_classes * 10} images "
          f"once in {decode:.1f} s = {bank.num_classes * 10 / decode:.0f} images/s)")


if __name__ == "__main__":
    cli.run(main)
