"""Data: FSS-1000-layout folders, the embedded synthetic dataset, episodic pipelines."""

from __future__ import annotations

import functools

from meta_drn_tf.data.bank import ImageBank
from meta_drn_tf.data.fss1000 import DataError, discover_classes, load_bank, split_classes
from meta_drn_tf.data.synthetic import synthetic_splits

__all__ = ["DataError", "ImageBank", "load_split"]


@functools.lru_cache(maxsize=4)
def _synthetic(num_classes: int, seed: int, image_size: int, images_per_class: int):
    return synthetic_splits(num_classes, seed, image_size, images_per_class)


def load_split(
    split: str,
    data_dir: str | None,
    image_size: int,
    min_images: int = 2,
    seed: int = 0,
    split_files: dict[str, str] | None = None,
    synthetic_classes: int = 64,
    synthetic_images: int = 10,
    progress: bool = True,
) -> ImageBank:
    """The classes of `split` as an ImageBank.

    With no `data_dir`, the embedded synthetic dataset (`synthetic_classes`
    object families, split 70/6/24 like FSS-1000's 700/60/240); otherwise the
    FSS-1000-layout folder with its official or seeded split.
    """
    if not data_dir:
        return _synthetic(synthetic_classes, seed, image_size, synthetic_images)[split]
    names = split_classes(list(discover_classes(data_dir)), split, seed=seed, split_files=split_files)
    if not names:
        raise DataError(f"--data_dir {data_dir}: the {split} split has no classes")
    return load_bank(data_dir, names, image_size, min_images=min_images, progress=progress)
