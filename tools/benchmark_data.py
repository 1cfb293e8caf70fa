"""Input pipeline throughput: training tasks/s at 224x224 with augmentation, and the field's readers.

    python tools/benchmark_data.py [--size 224] [--shots 1] [--queries 5] [--tasks 300]
    python tools/benchmark_data.py --coco_images=5000 [--coco_folder=/tmp/fake_coco]

Measures the synthetic (in-memory) source and an FSS-layout folder on disk
(the synthetic classes written as .jpg/.png, then decoded by the reader). With
--coco_images, also a generated COCO-20i layout of that many 640x480 photos
with label maps (the sizes COCO's are): the time to index it, episodes
decoded per second by the evaluation's reader against episodes per second of
the network at --size, training tasks per second read from the files, and the
process's peak memory.
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
flags.DEFINE_integer("coco_images", 0, "Also time the COCO-20i reader on a generated layout of this many photos.")
flags.DEFINE_string("coco_folder", None, "Where the generated COCO layout goes (kept, and reused when it holds as "
                    "many photos); default: a temporary folder.")
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


def write_coco(root: str, count: int) -> None:
    """COCO2014/val2014/*.jpg (640x480: shading, rectangles and grain, so that the JPEGs weigh and decode
    about as COCO's photos do) with annotations/val2014/*.png label maps of 1-3 objects of the 80 classes."""
    import os

    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    photos, labels = (os.path.join(root, "COCO2014", *p) for p in (("val2014",), ("annotations", "val2014")))
    os.makedirs(photos, exist_ok=True)
    os.makedirs(labels, exist_ok=True)
    shade = np.linspace(0, 255, 640, dtype=np.float32)[None, :, None]
    for i in range(count):
        photo = np.broadcast_to(shade * rng.random(3), (480, 640, 3)).astype(np.uint8)
        label = np.zeros((480, 640), np.uint8)
        for c in rng.integers(1, 81, rng.integers(1, 4)):
            y, x = rng.integers(0, 380), rng.integers(0, 540)
            label[y:y + rng.integers(20, 100), x:x + rng.integers(20, 100)] = c
            photo[label == c] = rng.integers(0, 256, 3)
        grain = rng.integers(0, 32, photo.shape, dtype=np.uint8)
        cv2.imwrite(os.path.join(photos, f"COCO_val2014_{i:012d}.jpg"), cv2.add(photo, grain),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
        cv2.imwrite(os.path.join(labels, f"COCO_val2014_{i:012d}.png"), label)


def coco_reader(root: str) -> None:
    """Indexing, decoding and the network's pace on the COCO layout under `root`."""
    import resource

    from meta_drn_tf.data.benchmarks import read_benchmark
    from meta_drn_tf.data.episodes import file_training_tasks
    from meta_drn_tf.data.sampled_episodes import decoded, sample_episodes
    from meta_drn_tf.meta import Adapter, MetaConfig
    from meta_drn_tf.network.config import NetworkConfig
    from meta_drn_tf.network.model import build_meta_drn
    from meta_drn_tf.training.evaluation import EpisodeScorer

    start = time.perf_counter()
    benchmark = read_benchmark("coco20i", root, fold=0)
    index_s = time.perf_counter() - start
    episodes = sample_episodes(benchmark, FLAGS.shots, 1000, seed=0)
    start = time.perf_counter()
    count, first = 0, None
    for task in decoded(episodes[:300], FLAGS.size):
        count, first = count + 1, first or task
    read_rate = count / (time.perf_counter() - start)
    training = file_training_tasks(benchmark, FLAGS.size, FLAGS.shots, FLAGS.queries, seed=0).prefetch(8)
    tasks = iter(training)
    next(tasks)
    start = time.perf_counter()
    for _ in range(100):
        next(tasks)
    training_rate = 100 / (time.perf_counter() - start)
    scorer = EpisodeScorer(Adapter(build_meta_drn(NetworkConfig(FLAGS.size, 1.0)), MetaConfig("maml")))
    batch = {k: first[k][None].repeat(8, 0) for k in ("support_images", "support_masks", "query_images",
                                                         "query_masks")}
    scorer.predict(batch)  # traced
    start = time.perf_counter()
    for _ in range(2):
        scorer.predict(batch)
    network_rate = 16 / (time.perf_counter() - start)
    print(f"COCO-20i fold 0 of {FLAGS.coco_images} generated 640x480 photos: indexed in {index_s:.1f} s "
          f"({len(benchmark.samples)} classes); episodes read and decoded at {read_rate:.1f}/s; the network "
          f"(width 1.0, {FLAGS.size}x{FLAGS.size}, MAML, 1 inner step) at {network_rate:.2f} episodes/s; "
          f"reader / network: {read_rate / network_rate:.0f}x; training tasks (k={FLAGS.shots}, q={FLAGS.queries}, "
          f"augmented) read from the files at {training_rate:.1f}/s; peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


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
    if FLAGS.coco_images:
        _coco()


def _coco() -> None:
    import glob
    import os

    if FLAGS.coco_folder is None:
        with tempfile.TemporaryDirectory() as root:
            write_coco(root, FLAGS.coco_images)
            coco_reader(root)
        return
    if len(glob.glob(os.path.join(FLAGS.coco_folder, "COCO2014", "val2014", "*.jpg"))) != FLAGS.coco_images:
        write_coco(FLAGS.coco_folder, FLAGS.coco_images)
    coco_reader(FLAGS.coco_folder)


if __name__ == "__main__":
    cli.run(main)
