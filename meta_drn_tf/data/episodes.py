"""Episodic tf.data pipelines over an ImageBank, or over a Benchmark's files (`file_training_tasks`).

Training tasks: task number t draws, from stateless random numbers keyed on
(seed, t), one class and k + q of its images without replacement (the k
supports always have a non-empty mask), then augments each image (§V-B). A
pipeline that starts at task t therefore yields exactly what an uninterrupted
one yields from t on: the data position of a resumed run is one integer.

Evaluation episodes (deterministic, enumerable): for each class and each of its
images i with a non-empty mask, the support is images i, i+1, ..., i+k-1
(cyclically) and the queries are all the class's other images. With FSS-1000
(10 images a class, k = 1) that is 10 episodes of 9 queries per class.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from meta_drn_tf.data.augment import augment_task
from meta_drn_tf.data.bank import ImageBank
from meta_drn_tf.data.benchmarks import Benchmark
from meta_drn_tf.data.images import resize_mask, resize_photo
from meta_drn_tf.data.sampled_episodes import read_sample
from meta_drn_tf.errors import DataError


class BankTensors:
    """An ImageBank held in CPU tf.Variables so tf.data gathers from it without copies."""

    def __init__(self, bank: ImageBank):
        self.bank = bank
        with tf.device("/cpu:0"):
            self.images = tf.Variable(bank.images, trainable=False, name="bank_images")
            self.masks = tf.Variable(bank.masks, trainable=False, name="bank_masks")
            self.counts = tf.constant(bank.counts)
            self.nonempty = tf.constant(bank.nonempty)


def _task_slots(u: tf.Tensor, padding: tf.Tensor, empty: tf.Tensor, shots: int, queries: int) -> tf.Tensor:
    """The image slots of a task's class: `shots` supports then `queries` queries, in the random order
    `u` (uniform in [0, 1) per slot) with the class's padding slots last and, for the supports, empty
    masks after the non-empty ones; a query is never one of the supports."""
    slots = tf.range(tf.size(u))
    support = tf.argsort(u + 4.0 * tf.cast(padding, tf.float32) + 2.0 * tf.cast(empty, tf.float32))[:shots]
    taken = tf.reduce_any(slots[:, None] == support[None, :], axis=1)
    query = tf.argsort(u + 4.0 * tf.cast(padding, tf.float32) + 8.0 * tf.cast(taken, tf.float32))[:queries]
    return tf.concat([support, query], 0)


def training_tasks(
    bank: ImageBank | BankTensors,
    shots: int = 1,
    queries: int = 5,
    seed: int = 0,
    augment: bool = True,
    start_task: int = 0,
    num_tasks: int | None = None,
    task_ids: tf.data.Dataset | None = None,
) -> tf.data.Dataset:
    """Dataset of training tasks, one element per task (batch it for meta-batches).

    Each element is a dict: `support_images` float32 `(k, H, W, 3)` in [0, 1],
    `support_masks` float32 `(k, H, W, 1)` in {0, 1}, `query_images`
    `(q, H, W, 3)`, `query_masks` `(q, H, W, 1)`.

    Args:
        bank: the classes to sample from (an ImageBank, or BankTensors made
            once and shared by several pipelines); classes with fewer than
            k + q images or no non-empty mask are never drawn.
        shots: k, support images per task.
        queries: q, query images per task.
        seed: the task stream is a pure function of the seed.
        augment: apply the training augmentation.
        start_task: index of the first task (to resume a run).
        num_tasks: number of tasks (None: unbounded).
        task_ids: int64 task indices to read instead of start_task, start_task+1, ...
    """
    tensors = bank if isinstance(bank, BankTensors) else BankTensors(bank)
    bank = tensors.bank
    eligible = np.flatnonzero((bank.counts >= shots + queries) & (bank.nonempty.sum(1) >= shots))
    if eligible.size == 0:
        raise ValueError(f"no class has {shots + queries} images (shots + queries) with {shots} non-empty masks")
    eligible = tf.constant(eligible, tf.int32)
    n_max = bank.images.shape[1]
    slots = tf.range(n_max)

    def make_task(t):
        keys = _task_keys(seed, t)
        c = tf.gather(eligible, tf.random.stateless_uniform([], keys[0], 0, tf.size(eligible), tf.int32))
        u = tf.random.stateless_uniform([n_max], keys[1])
        index = _task_slots(u, slots >= tensors.counts[c], ~tensors.nonempty[c], shots, queries)
        return _task(tf.gather(tensors.images[c], index), tf.gather(tensors.masks[c], index), shots,
                     keys[2] if augment else None)

    return _mapped(make_task, task_ids, start_task, num_tasks)


def _task_keys(seed: int, t: tf.Tensor) -> tf.Tensor:
    """Task t's three stateless random keys: its class, its images, its augmentation."""
    key = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0x5EED], tf.int64), t)
    return tf.random.experimental.stateless_split(key, 3)


def _task(images: tf.Tensor, masks: tf.Tensor, shots: int, augment_key: tf.Tensor | None) -> dict[str, tf.Tensor]:
    """A task dict of k + q uint8 images `(n, H, W, 3)` and {0,1} masks `(n, H, W)`, augmented with the key."""
    images = tf.cast(images, tf.float32) / 255.0
    masks = tf.cast(masks, tf.float32)[..., None]
    if augment_key is not None:
        images, masks = augment_task(images, masks, augment_key)
    return {"support_images": images[:shots], "support_masks": masks[:shots],
            "query_images": images[shots:], "query_masks": masks[shots:]}


def _mapped(make_task, task_ids: tf.data.Dataset | None, start_task: int, num_tasks: int | None) -> tf.data.Dataset:
    if task_ids is None:
        task_ids = tf.data.Dataset.range(start_task, 2**62 if num_tasks is None else start_task + num_tasks)
    # No tensor-valued control flow to convert: AutoGraph would only re-parse the augmentation's source.
    make_task = tf.autograph.experimental.do_not_convert(make_task)
    return task_ids.map(make_task, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def file_training_tasks(benchmark: Benchmark, image_size: int, shots: int = 1, queries: int = 5, seed: int = 0,
                        augment: bool = True, start_task: int = 0, num_tasks: int | None = None,
                        task_ids: tf.data.Dataset | None = None) -> tf.data.Dataset:
    """`training_tasks` read from a Benchmark's files (PASCAL-5i, COCO-20i) instead of a bank: task t's
    class and its k + q photos are drawn from (seed, t) alone, then decoded, resized to `image_size`
    and augmented, so that a resumed run and each replica read the tasks they would have."""
    eligible = [name for name, samples in benchmark.samples.items() if len(samples) >= shots + queries]
    if not eligible:
        raise DataError(f"{benchmark.name}: no class has {shots + queries} photos (shots + queries)")
    size = (image_size, image_size)

    def load(t) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seed, int(t)])
        samples = benchmark.samples[eligible[rng.integers(len(eligible))]]
        pairs = [read_sample(samples[j])[:2] for j in rng.choice(len(samples), shots + queries, replace=False)]
        return (np.stack([resize_photo(p, size) for p, _ in pairs]),
                np.stack([resize_mask(m, size) for _, m in pairs]))

    def make_task(t):
        photos, masks = tf.numpy_function(load, [t], (tf.uint8, tf.uint8), stateful=False)
        photos.set_shape([shots + queries, image_size, image_size, 3])
        masks.set_shape([shots + queries, image_size, image_size])
        return _task(photos, masks, shots, _task_keys(seed, t)[2] if augment else None)

    return _mapped(make_task, task_ids, start_task, num_tasks)


def meta_batches(tasks: tf.data.Dataset, meta_batch_size: int) -> tf.data.Dataset:
    """Groups tasks into meta-batches `(B, k|q, H, W, C)` and prefetches."""
    return tasks.batch(meta_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def evaluation_episodes(bank: ImageBank, shots: int = 1,
                        per_class: int | None = None) -> list[tuple[int, list[int], list[int]]]:
    """All evaluation episodes (the first `per_class` of each class) as (class index, supports, queries)."""
    episodes = []
    nonempty = bank.nonempty
    for c in range(bank.num_classes):
        n = int(bank.counts[c])
        if n < shots + 1:
            continue
        supports = [[(i + j) % n for j in range(shots)] for i in range(n)]
        supports = [s for s in supports if all(nonempty[c, i] for i in s)][:per_class]
        episodes += [(c, s, [j for j in range(n) if j not in s]) for s in supports]
    return episodes


def evaluation_tasks(bank: ImageBank, shots: int = 1, limit: int | None = None,
                     per_class: int | None = None) -> Iterator[dict]:
    """Evaluation episodes as numpy task dicts (unbatched, variable query count).

    `limit` keeps an evenly spread subset of at most that many episodes
    (deterministic), for quick validation during training; `per_class` keeps
    the first episodes of each class.
    """
    episodes = evaluation_episodes(bank, shots, per_class)
    if limit is not None and limit < len(episodes):
        step = len(episodes) / limit
        episodes = [episodes[math.floor(i * step)] for i in range(limit)]
    for c, support, query in episodes:
        yield {
            "class_name": bank.class_names[c],
            "support_images": bank.images[c, support].astype(np.float32) / 255.0,
            "support_masks": bank.masks[c, support, ..., None].astype(np.float32),
            "query_images": bank.images[c, query].astype(np.float32) / 255.0,
            "query_masks": bank.masks[c, query, ..., None].astype(np.float32),
        }


def count_evaluation_tasks(bank: ImageBank, shots: int = 1, limit: int | None = None,
                           per_class: int | None = None) -> int:
    n = len(evaluation_episodes(bank, shots, per_class))
    return n if limit is None else min(n, limit)
