"""Seeded random episodes over a Benchmark, as the field draws them (HSNet's protocol), each decoded
only when it is needed: no data set is ever held in memory.

    episodes = sample_episodes(benchmark, shots=1, seed=0)         # the field's count for the benchmark
    for task in decoded(episodes, size=224):                        # decoded a few episodes ahead
        task["query_images"], task["query_ignore"]

Which episodes (`Benchmark.draw`): "each": the query of episode i is the i-th sample of a seeded
order of every (photo, class) sample, round again when there are more episodes than samples
(FSS-1000: each of its 2,400 test photos once; PASCAL-5i: 1,000 over a fold's few hundred);
"random_class" (COCO-20i): a class drawn uniformly, then its query; "class_in_turn" (Deepglobe,
ISIC2018, Chest X-ray): episode i's class is the (i mod n)-th, its query drawn. The supports are
drawn from the query's class, never the query's own photo. PerSeg's supports are each object's
first photos (`fixed_support`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from absl import logging

from meta_drn_tf.data import images
from meta_drn_tf.data.benchmarks import Benchmark, Sample
from meta_drn_tf.data.label_maps import IGNORE
from meta_drn_tf.errors import DataError


@dataclasses.dataclass(frozen=True)
class Episode:
    """One episode: its class, its support samples and its query samples (the field's: one; the paper's:
    the class's other photos, `number` naming the episode they belong to when they are split)."""

    class_name: str
    supports: tuple[Sample, ...]
    queries: tuple[Sample, ...]
    number: int = 0


def _usable(benchmark: Benchmark, shots: int) -> dict[str, list[Sample]]:
    """The classes with `shots` supports besides a query (photos, not samples: a photo is never its
    own support); the others are named in a warning and left out."""
    usable = {name: samples for name, samples in benchmark.samples.items() if len({s.image for s in samples}) > shots}
    short = [name for name in benchmark.samples if name not in usable]
    if short:
        logging.warning("%s: %d class(es) have too few photos for %d-shot episodes and are left out: %s",
                        benchmark.name, len(short), shots, ", ".join(short[:10]))
    if not usable:
        raise DataError(f"{benchmark.name}: no class has {shots + 1} photos, as a {shots}-shot episode needs")
    return usable


def sample_episodes(benchmark: Benchmark, shots: int = 1, episodes: int | None = None, seed: int = 0) -> list[Episode]:
    """The episodes of `benchmark` drawn with `seed` (the same seed, the same episodes).

    Args:
        benchmark: the classes and their samples.
        shots: supports per episode.
        episodes: how many (default: the benchmark's own count; 0 there: one per sample).
        seed: the seed of the draw.
    """
    classes = _usable(benchmark, shots)
    if benchmark.fixed_support:
        return [Episode(c, tuple(s[:shots]), (q,)) for c, s in classes.items() for q in s[shots:]]
    rng = np.random.default_rng(seed)
    queries = [(c, s) for c, samples in classes.items() for s in samples]
    count = episodes or benchmark.episodes or len(queries)
    order = rng.permutation(len(queries))
    names = list(classes)
    drawn = []
    for i in range(count):
        if benchmark.draw == "each":
            name, query = queries[order[i % len(queries)]]
        else:
            name = names[rng.integers(len(names)) if benchmark.draw == "random_class" else i % len(names)]
            query = classes[name][rng.integers(len(classes[name]))]
        candidates = [s for s in classes[name] if s.image != query.image]
        picks = rng.choice(len(candidates), shots, replace=False)
        drawn.append(Episode(name, tuple(candidates[j] for j in sorted(picks)), (query,), i))
    return drawn


def exhaustive_episodes(benchmark: Benchmark, shots: int = 1, limit: int | None = None,
                        queries_per_episode: int = 16) -> list[Episode]:
    """The paper's episodes of a Benchmark, as `episodes.evaluation_episodes` makes them of a bank: each
    sample of a class the support once (with the next k - 1, cyclically), the class's other samples its
    queries. `limit` keeps that many episodes, evenly spread; an episode's queries come in groups of at
    most `queries_per_episode` (the same support, adapted to again: one group's images fit in memory
    whatever the class's size), which share its `number`."""
    classes = _usable(benchmark, shots)
    starts = [(name, i) for name, samples in classes.items() for i in range(len(samples))]  # support i, i+1, ...
    if limit is not None and limit < len(starts):  # chosen before any episode is made: COCO's would not fit
        starts = [starts[math.floor(i * len(starts) / limit)] for i in range(limit)]
    episodes = []
    for number, (name, i) in enumerate(starts):
        samples = classes[name]
        support = tuple(samples[(i + j) % len(samples)] for j in range(shots))
        queries = [s for s in samples if s not in support]
        episodes += [Episode(name, support, tuple(queries[j:j + queries_per_episode]), number)
                     for j in range(0, len(queries), queries_per_episode)]
    return episodes


def read_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A sample's RGB photo, its {0,1} mask and its ignored pixels (bool; None without a label map),
    each at the photo's own size."""
    photo = images.read_photo(sample.image)
    if sample.label is None:
        return photo, images.read_mask(sample.annotation, photo.shape[:2]), None
    labels = images.read_label_map(sample.annotation, photo.shape[:2])
    return photo, (labels == sample.label).astype(np.uint8), labels == IGNORE


def episode_task(episode: Episode, size: int, original_size: bool = False) -> dict:
    """An episode decoded as a task dict: `support_images` `(k, S, S, 3)` and `query_images`
    `(q, S, S, 3)` in [0, 1], `support_masks`, `query_masks` `(., S, S, 1)` {0, 1}, `query_ignore`
    `(q, S, S)` bool, `class_name` and `episode` (its number); with `original_size`, also the first
    query's own mask and ignored pixels at its photo's size (`query_mask_original`,
    `query_ignore_original`)."""
    shape = (size, size)
    supports = [read_sample(s) for s in episode.supports]
    queries = [read_sample(s) for s in episode.queries]
    ignores = [np.zeros(m.shape, bool) if i is None else i for _, m, i in queries]
    task = {
        "class_name": episode.class_name,
        "episode": episode.number,
        "support_images": np.stack([images.resize_photo(p, shape) for p, _, _ in supports]).astype(np.float32) / 255,
        "support_masks": np.stack([images.resize_mask(m, shape) for _, m, _ in supports])[..., None].astype(np.float32),
        "query_images": np.stack([images.resize_photo(p, shape) for p, _, _ in queries]).astype(np.float32) / 255,
        "query_masks": np.stack([images.resize_mask(m, shape) for _, m, _ in queries])[..., None].astype(np.float32),
        "query_ignore": np.stack([images.resize_mask(i, shape) for i in ignores]).astype(bool),
    }
    if original_size:
        task["query_mask_original"], task["query_ignore_original"] = queries[0][1], ignores[0]
    return task


def prefetched(function: Callable, items: Iterable, ahead: int = 16, workers: int = 4) -> Iterator:
    """`function(item)` of each item in order, computed by `workers` threads at most `ahead` items
    ahead of the consumer (OpenCV's decoders release the GIL; the memory held stays bounded)."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def decoded(episodes: list[Episode], size: int, original_size: bool = False) -> Iterator[dict]:
    """`episode_task` of each episode in order, decoded a few episodes ahead in threads."""
    return prefetched(lambda e: episode_task(e, size, original_size), episodes)
