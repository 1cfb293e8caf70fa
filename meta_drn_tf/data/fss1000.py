"""Reader for FSS-1000 and any folder in its layout, with the official split.

Layout: `ROOT/<class>/<n>.jpg` with its binary mask `ROOT/<class>/<n>.png`.

Split: when ROOT holds FSS-1000 classes, the official 240 test classes
(`splits/fss1000_test.txt`, as published with the dataset), a fixed list of 60
validation classes chosen once from the other 760 with seed 2020
(`splits/fss1000_val.txt`) and the remaining 700 for training - the paper's
700/60/240. The field's 520/240/240 (`validation="fss1000_field_val"`) keeps
those 60 and adds 180 drawn once from the 700 with seed 2021
(`splits/fss1000_field_val.txt`). Any other folder is split by a seeded shuffle of its classes in
the same proportions, unless the user passes split files.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable
from importlib import resources

import numpy as np
from absl import logging

from meta_drn_tf.data import images
from meta_drn_tf.data.bank import ImageBank
from meta_drn_tf.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".JPG", ".JPEG")
SPLITS = ("train", "val", "test")
# The most unusable files one error message lists.
MAX_REPORTED_FILES = 20
# The paper's proportions: 700 train / 60 val / 240 test of 1000 classes.
SPLIT_FRACTIONS = {"val": 0.06, "test": 0.24}


def packaged_split(name: str) -> list[str]:
    """A class list shipped with the package: "fss1000_classes", "fss1000_test", "fss1000_val" or
    "fss1000_field_val"."""
    text = resources.files("meta_drn_tf.data").joinpath("splits", f"{name}.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_class_list(path: str) -> list[str]:
    """Class names from a text file, one a line."""
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise DataError(f"{path}: cannot read the class list ({e.strerror})") from e


def discover_classes(root: str) -> dict[str, list[str]]:
    """Maps each class folder under `root` to its sorted image paths."""
    if not os.path.isdir(root):
        raise DataError(f"--data_dir {root}: no such directory")
    classes = {}
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            continue
        files = [f for f in os.listdir(folder) if f.endswith(IMAGE_EXTENSIONS)]
        # Natural order: 2.jpg before 10.jpg.
        files.sort(key=lambda f: (len(os.path.splitext(f)[0]), f))
        if files:
            classes[name] = [os.path.join(folder, f) for f in files]
    if not classes:
        raise DataError(f"--data_dir {root}: no class folders with .jpg images "
                        "(expected ROOT/<class>/<n>.jpg + <n>.png)")
    return classes


def mask_path(image_path: str) -> str:
    return os.path.splitext(image_path)[0] + ".png"


def listed_classes(path: str, available: list[str], where: str) -> list[str]:
    """The classes named in the class list `path`; all must be in `available` (found in `where`)."""
    names = read_class_list(path)
    have = set(available)
    missing = [n for n in names if n not in have]
    if missing:
        raise DataError(f"{path}: {len(missing)} of its classes are not in {where}, e.g. {missing[:3]}")
    if not names:
        raise DataError(f"{path}: lists no classes (one class name a line)")
    return names


def split_classes(
    names: list[str],
    split: str,
    seed: int = 0,
    split_files: dict[str, str] | None = None,
    validation: str = "fss1000_val",
) -> list[str]:
    """The classes of `split` ("train", "val" or "test") among `names`.

    Args:
        names: classes found in the data directory.
        split: which split to return.
        seed: shuffles the classes of a folder that is not FSS-1000.
        split_files: optional {"val": path, "test": path} class lists; train is
            everything else. Overrides the packaged and seeded splits.
        validation: the packaged validation list of FSS-1000 ("fss1000_val": the paper's 60;
            "fss1000_field_val": the field's 240).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    available = set(names)
    if split_files:
        lists = {k: listed_classes(v, names, "the dataset") for k, v in split_files.items()}
    elif available & set(packaged_split("fss1000_test")):
        lists = {"val": packaged_split(validation), "test": packaged_split("fss1000_test")}
    else:
        order = sorted(names)
        np.random.default_rng(seed).shuffle(order)
        n_val = max(1, round(SPLIT_FRACTIONS["val"] * len(order))) if len(order) >= 3 else 0
        n_test = max(1, round(SPLIT_FRACTIONS["test"] * len(order))) if len(order) >= 3 else 0
        lists = {"val": order[:n_val], "test": order[n_val : n_val + n_test]}
    if split == "train":
        held_out = set(lists.get("val", [])) | set(lists.get("test", []))
        return [n for n in sorted(names) if n not in held_out]
    return [n for n in lists.get(split, []) if n in available]


def load_bank(
    root: str,
    classes: list[str],
    image_size: int | tuple[int, int],
    min_images: int = 2,
    num_workers: int | None = None,
    progress: bool = True,
    skip_bad_files: bool = False,
) -> ImageBank:
    """Decodes `classes` of `root` into an ImageBank, in parallel.

    A class with fewer than `min_images` usable images (shots + 1) is reported
    and skipped; an empty mask is reported (the episode sampler never uses it
    as a support). Images that cannot be used - corrupt, mask missing, mask of
    another size than its image - are all collected: DataError lists them
    (up to MAX_REPORTED_FILES), or with `skip_bad_files` they are left out and
    counted in a warning.
    """
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    found = discover_classes(root)
    missing = [c for c in classes if c not in found]
    if missing:
        raise DataError(f"--data_dir {root}: {len(missing)} class folders are missing, e.g. {missing[:3]}")
    paths = [p for c in classes for p in found[c]]

    def decode(path):
        try:
            photo = images.read_photo(path)
            mask = images.read_mask(mask_path(path), photo.shape[:2])
            return images.resize_photo(photo, image_size), images.resize_mask(mask, image_size)
        except DataError as e:
            return e

    decoded = dict(zip(paths, decode_all(decode, paths, f"Decoding {len(classes)} classes from {root}", progress,
                                         num_workers)))
    bad = [str(r) for r in decoded.values() if isinstance(r, DataError)]
    if bad and not skip_bad_files:
        raise DataError(bad_files_message(root, bad, "fix or remove them, or pass --skip_bad_files to use the rest"))
    if bad:
        logging.warning("%s", bad_files_message(root, bad, "skipped, --skip_bad_files"))
    names, photos, masks = [], [], []
    for c in classes:
        usable = [p for p in found[c] if not isinstance(decoded[p], DataError)]
        pairs = [decoded[p] for p in usable]
        empty = [p for p, (_, m) in zip(usable, pairs) if not m.any()]
        for p in empty:
            logging.warning("%s: mask is empty; the image is never used as a support", mask_path(p))
        if len(pairs) < min_images or len(pairs) - len(empty) < 1:
            logging.warning("class %s has %d images (%d with a non-empty mask); at least %d are needed: skipped",
                            c, len(pairs), len(pairs) - len(empty), min_images)
            continue
        names.append(c)
        photos.append(np.stack([x for x, _ in pairs]))
        masks.append(np.stack([y for _, y in pairs]))
    if not names:
        raise DataError(f"--data_dir {root}: no class has at least {min_images} usable images")
    return ImageBank.from_lists(names, photos, masks)


def decode_all(decode: Callable[[str], object], paths: list[str], title: str, progress: bool = True,
               num_workers: int | None = None) -> list:
    """`decode(path)` of every path in order, in threads (OpenCV's decoders release the GIL), with a
    progress bar under `title` when `progress`."""
    bar = _progress(len(paths), title) if progress else None
    results = []
    with concurrent.futures.ThreadPoolExecutor(num_workers or os.cpu_count()) as pool:
        for result in pool.map(decode, paths):
            results.append(result)
            if bar is not None:
                bar.add(1)
    return results


def bad_files_message(root: str, problems: list[str], action: str) -> str:
    """One summary line saying what to do, then one line per problem (at most MAX_REPORTED_FILES)."""
    return problem_list(f"--data_dir {root}: {len(problems)} image/mask pair(s) cannot be used ({action}):", problems)


def problem_list(headline: str, problems: list[str]) -> str:
    """`headline`, then one indented line per problem (at most MAX_REPORTED_FILES)."""
    lines = [headline]
    lines += [f"  {p}" for p in problems[:MAX_REPORTED_FILES]]
    if len(problems) > MAX_REPORTED_FILES:
        lines.append(f"  ... and {len(problems) - MAX_REPORTED_FILES} more")
    return "\n".join(lines)


def _progress(total: int, title: str):
    from meta_drn_tf import progress

    print(title)
    return progress.bar(total, unit_name="image")
