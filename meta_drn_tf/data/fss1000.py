"""Reader for FSS-1000 and any folder in its layout, with the official split.

Layout: `ROOT/<class>/<n>.jpg` with its binary mask `ROOT/<class>/<n>.png`.

Split: when ROOT holds FSS-1000 classes, the official 240 test classes
(`splits/fss1000_test.txt`, as published with the dataset), a fixed list of 60
validation classes chosen once from the other 760 with seed 2020
(`splits/fss1000_val.txt`) and the remaining 700 for training - the paper's
700/60/240. Any other folder is split by a seeded shuffle of its classes in
the same proportions, unless the user passes split files.
"""

from __future__ import annotations

import concurrent.futures
import os
import struct
from collections.abc import Callable
from importlib import resources

import cv2
import numpy as np
from absl import logging

from meta_drn_tf.data.bank import ImageBank
from meta_drn_tf.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".JPG", ".JPEG")
SPLITS = ("train", "val", "test")
# The most unusable files one error message lists.
MAX_REPORTED_FILES = 20
# The paper's proportions: 700 train / 60 val / 240 test of 1000 classes.
SPLIT_FRACTIONS = {"val": 0.06, "test": 0.24}


def packaged_split(name: str) -> list[str]:
    """A class list shipped with the package: "fss1000_classes", "fss1000_test" or "fss1000_val"."""
    text = resources.files("meta_drn_tf.data").joinpath("splits", f"{name}.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_class_list(path: str) -> list[str]:
    """Class names from a text file, one a line."""
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise DataError(f"{path}: cannot read the class list ({e.strerror})") from e


# Larger images are refused before they are decoded (a small file can hold a huge image: a 724-byte
# zip held a 12000x12000 PNG that took 4.4 GB to decode). 100 megapixels: the largest camera photos.
MAX_IMAGE_PIXELS = 100_000_000
MIN_IMAGE_SIDE = 8


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) an encoded image's header declares, read without decoding any pixel (Pillow's
    format plugins read the headers of PNG, JPEG, BMP, GIF, TIFF, WebP and PNM files); None when no
    header is recognised."""
    import io

    from PIL import Image

    # Each plugin's own opener, as `Image.open` tries them, but without Pillow's size limit, which
    # raises without saying the size: sizes are judged by the caller.
    Image.init()
    for name in Image.ID:
        factory, accept = Image.OPEN[name]
        try:
            if accept is None or accept(data[:16]):
                with factory(io.BytesIO(data), "") as image:  # BytesIO shares a bytes object: no copy
                    return image.size
        except (OSError, ValueError, SyntaxError, IndexError, TypeError, struct.error):  # not this format
            continue
    return None


def decode_bytes(name: str, data: bytes | None, mode: int = cv2.IMREAD_COLOR,
                 min_side: int = MIN_IMAGE_SIDE) -> np.ndarray:
    """Decodes an encoded image (a file's bytes) with OpenCV's `mode`; DataError names `name` when it cannot
    be decoded, has a side under `min_side` or more than MAX_IMAGE_PIXELS pixels.

    The size comes from the file's header before any pixel is decoded: a small file can declare an
    image that takes gigabytes to decode.
    """
    size = header_size(data) if data else None
    if size is None:
        raise DataError(f"{name}: cannot be decoded as an image (missing, empty, corrupt or not a PNG, JPEG, BMP, "
                        "TIFF or WebP file)")
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(f"{name}: about {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS // 10**6} "
                        "megapixels this program decodes; downscale it first")
    if min(width, height) < min_side:
        raise DataError(f"{name}: too small to segment ({width}x{height} pixels); images need at least "
                        f"{min_side} pixels a side")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), mode)
    if image is None:
        raise DataError(f"{name}: cannot be decoded as an image (missing, corrupt or not an image file)")
    return image


def decode_image(path: str, mode: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """Decodes an image file (any format OpenCV reads) with OpenCV's `mode`; DataError names the file."""
    return decode_bytes(path, _read_bytes(path) if os.path.isfile(path) else None, mode)


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_rgb(path: str) -> np.ndarray:
    """Decodes an image file (any format OpenCV reads) as RGB uint8 `(H, W, 3)` at its own size."""
    return cv2.cvtColor(decode_image(path), cv2.COLOR_BGR2RGB)


def read_image(path: str, image_size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Decodes an image as RGB uint8 resized to `image_size`; returns it and its original (H, W)."""
    image = read_rgb(path)
    return _resize(image, image_size, cv2.INTER_AREA), image.shape[:2]


def decode_mask(raw: np.ndarray) -> np.ndarray:
    """Binary {0,1} mask from any encoding found in the wild.

    Handles grey (L) 0/255 and 0/1, RGB 0/1, palette PNGs (which OpenCV expands
    to colours), RGBA with antialiased edges. The intensity is the brightest
    colour channel (the alpha channel only when the colours are all zero), and
    a pixel is foreground above half the mask's maximum intensity - so 0/1,
    0/128 and 0/255 encodings all work and antialiased edges are split at half.
    """
    if raw.ndim == 3:
        colour = raw[..., :3].max(axis=-1)
        if raw.shape[-1] == 4 and colour.max() == 0:
            colour = raw[..., 3]
        raw = colour
    peak = float(raw.max())
    if peak == 0:
        return np.zeros(raw.shape, np.uint8)
    return (raw.astype(np.float32) > peak / 2).astype(np.uint8)


def read_binary_mask(path: str, expected_shape: tuple[int, int]) -> np.ndarray:
    """Decodes a mask in any encoding `decode_mask` knows, at its own size, checking it matches its image."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: mask is missing (each <n>.jpg needs a <n>.png mask beside it)")
    raw = decode_bytes(path, _read_bytes(path), cv2.IMREAD_UNCHANGED, min_side=1)  # its image's size
    if raw.shape[:2] != tuple(expected_shape):
        raise DataError(
            f"{path}: mask is {raw.shape[1]}x{raw.shape[0]} but its image is "
            f"{expected_shape[1]}x{expected_shape[0]}; a mask must have its image's size"
        )
    if raw.ndim == 2 and raw.max() < 128 and len(values := np.unique(raw)) > 2:
        # Not antialiasing (whose peak is bright): labels of several objects, of which only the highest
        # would count as the object.
        raise DataError(f"{path}: holds the values {', '.join(map(str, values[:5]))}"
                        f"{', ...' if len(values) > 5 else ''}, a label map rather than a mask; give a binary "
                        "mask of one object (0/255 or 0/1)")
    return decode_mask(raw)


def read_mask(path: str, expected_shape: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
    """Decodes a mask, checks it matches its image's size, resizes to `image_size`."""
    mask = read_binary_mask(path, expected_shape).astype(np.float32)
    return (_resize(mask, image_size, cv2.INTER_LINEAR) >= 0.5).astype(np.uint8)


def _resize(array: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    h, w = size
    if array.shape[:2] == (h, w):
        return array
    if array.shape[0] < h or array.shape[1] < w:
        interpolation = cv2.INTER_LINEAR  # INTER_AREA is for shrinking
    return cv2.resize(array, (w, h), interpolation=interpolation)


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
) -> list[str]:
    """The classes of `split` ("train", "val" or "test") among `names`.

    Args:
        names: classes found in the data directory.
        split: which split to return.
        seed: shuffles the classes of a folder that is not FSS-1000.
        split_files: optional {"val": path, "test": path} class lists; train is
            everything else. Overrides the packaged and seeded splits.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    available = set(names)
    if split_files:
        lists = {k: listed_classes(v, names, "the dataset") for k, v in split_files.items()}
    elif available & set(packaged_split("fss1000_test")):
        lists = {"val": packaged_split("fss1000_val"), "test": packaged_split("fss1000_test")}
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
            image, shape = read_image(path, image_size)
            return image, read_mask(mask_path(path), shape, image_size)
        except DataError as e:
            return e

    decoded = dict(zip(paths, decode_all(decode, paths, f"Decoding {len(classes)} classes from {root}", progress,
                                         num_workers)))
    bad = [str(r) for r in decoded.values() if isinstance(r, DataError)]
    if bad and not skip_bad_files:
        raise DataError(bad_files_message(root, bad, "fix or remove them, or pass --skip_bad_files to use the rest"))
    if bad:
        logging.warning("%s", bad_files_message(root, bad, "skipped, --skip_bad_files"))
    names, images, masks = [], [], []
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
        images.append(np.stack([x for x, _ in pairs]))
        masks.append(np.stack([y for _, y in pairs]))
    if not names:
        raise DataError(f"--data_dir {root}: no class has at least {min_images} usable images")
    return ImageBank.from_lists(names, images, masks)


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
