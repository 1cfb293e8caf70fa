"""Data: FSS-1000-layout folders, the embedded synthetic dataset, episodic pipelines; the field's
benchmarks (`benchmarks.py`) read as file indexes and decoded one episode at a time (`sampled_episodes.py`)."""

from __future__ import annotations

import functools

from meta_drn_tf.data.bank import ImageBank
from meta_drn_tf.data.benchmarks import Benchmark, read_benchmark
from meta_drn_tf.data.config import DataConfig
from meta_drn_tf.data.fss1000 import discover_classes, listed_classes, load_bank, split_classes
from meta_drn_tf.data.synthetic import synthetic_splits
from meta_drn_tf.errors import DataError

__all__ = ["DataError", "ImageBank", "benchmark_splits", "load_split", "load_splits"]


@functools.lru_cache(maxsize=4)
def _synthetic(num_classes: int, seed: int, image_size: int, images_per_class: int):
    return synthetic_splits(num_classes, seed, image_size, images_per_class)


def _synthetic_splits(splits: tuple[str, ...], dataset: dict[str, ImageBank],
                      classes_file: str | None) -> dict[str, ImageBank]:
    banks = dict(dataset)
    if classes_file or "all" in splits:  # a copy of every class: only when asked for
        banks["all"] = ImageBank.concatenate([banks[s] for s in ("train", "val", "test")])
    if classes_file:
        listed = listed_classes(classes_file, banks["all"].class_names, "the synthetic dataset")
        return {splits[0]: banks["all"].subset(listed)}
    return {s: banks[s] for s in splits}


def benchmark_splits(config: DataConfig, splits: tuple[str, ...]) -> dict[str, Benchmark]:
    """The splits of a run on PASCAL-5i or COCO-20i (`config.dataset`), as file indexes read one episode at
    a time: "train", the classes of the folds other than `config.fold`; "val" and "test", that fold's
    classes, on which the field also chooses its best checkpoint."""
    held_out = read_benchmark(config.dataset, config.data_dir, config.fold, "test")
    return {s: read_benchmark(config.dataset, config.data_dir, config.fold, "train") if s == "train" else held_out
            for s in splits}


def load_split(config: DataConfig, split: str, image_size: int, **kwargs) -> ImageBank:
    """The classes of one split as an ImageBank; see `load_splits`."""
    return load_splits(config, (split,), image_size, **kwargs)[split]


def load_splits(
    config: DataConfig,
    splits: tuple[str, ...],
    image_size: int,
    *,
    seed: int = 0,
    min_images: int | None = None,
    progress: bool = True,
    classes_file: str | None = None,
) -> dict[str, ImageBank]:
    """The classes of each of `splits` as an ImageBank, decoded in one pass.

        banks = load_splits(run.data, ("train", "val"), run.network.image_size, seed=run.seed)

    With no `config.data_dir`, the embedded synthetic dataset (`config.synthetic_classes`
    object families, split 70/6/24 like FSS-1000's 700/60/240); otherwise the FSS-1000-layout
    folder with its official or seeded split (and `config`'s class lists). One pass means that
    every unusable file of every split is reported in one DataError (or, with
    `config.skip_bad_files`, left out and counted).

    Args:
        config: the run's `data` section.
        splits: each "train", "val", "test" or "all" (every class).
        image_size: the size images are resized to.
        seed: the seed of the synthetic dataset and of a seeded split.
        min_images: images a usable class needs (default: an episode's, `config.shots` + 1).
        classes_file: a class list (one name a line) to load instead of the split (with one split only).
    """
    if classes_file and len(splits) != 1:
        raise ValueError("classes_file replaces a single split")
    min_images = min_images or config.shots + 1
    if not config.data_dir:
        if config.synthetic_images < min_images:
            raise DataError(f"the synthetic dataset has {config.synthetic_images} images a class, fewer than the "
                            f"{min_images} an episode needs (its support images and a query); lower --shots or "
                            "raise --synthetic_images")
        dataset = _synthetic(config.synthetic_classes, seed, image_size, config.synthetic_images)
        return _synthetic_splits(splits, dataset, classes_file)
    return _folder_splits(config, splits, image_size, seed, min_images, progress, classes_file)


def _folder_splits(config: DataConfig, splits: tuple[str, ...], image_size: int, seed: int, min_images: int,
                   progress: bool, classes_file: str | None) -> dict[str, ImageBank]:
    """`load_splits` of an FSS-1000-layout folder."""
    data_dir = config.data_dir
    available = list(discover_classes(data_dir))
    names = {}
    for split in splits:
        if classes_file:
            names[split] = listed_classes(classes_file, available, f"--data_dir {data_dir}")
        elif split == "all":
            names[split] = sorted(available)
        else:
            names[split] = split_classes(available, split, seed=seed, split_files=config.split_files,
                                         validation=config.validation_list)
        if not names[split]:
            raise DataError(f"--data_dir {data_dir}: the {split} split has no classes")
    wanted = sorted(set().union(*names.values()))
    bank = load_bank(data_dir, wanted, image_size, min_images=min_images, progress=progress,
                     skip_bad_files=config.skip_bad_files)
    kept = set(bank.class_names)  # classes with too few usable images were reported and left out
    banks = {}
    for split, split_names in names.items():
        usable = [n for n in split_names if n in kept]
        if not usable:
            raise DataError(f"--data_dir {data_dir}: no class of the {split} split has {min_images} usable images")
        banks[split] = bank.subset(usable)
    return banks
