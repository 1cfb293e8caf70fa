"""Tiny copies of the field's data sets in their real on-disk layouts, written by the tests.

Every photo is SIZE x SIZE (the tests' network size, so that no resize changes a mask and the
scores can be computed by hand); each object is a rectangle at a random place. Label maps hold
each object's class id, ringed by 255 ("ignore"), as PASCAL VOC's are.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from PIL import Image

SIZE = 16


def _photo(rng) -> np.ndarray:
    return rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def _rectangle(rng, top: int = 0, bottom: int = SIZE) -> tuple[slice, slice]:
    """A random rectangle within rows [top, bottom), at least 3 x 3, one pixel from every edge."""
    height = rng.integers(3, bottom - top - 1)
    row = rng.integers(top + 1, bottom - height)
    width = rng.integers(3, SIZE // 2)
    col = rng.integers(1, SIZE - width - 1)
    return slice(row, row + height), slice(col, col + width)


def binary_mask(rng) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[_rectangle(rng)] = 255
    return mask


def label_map(rng, ids: list[int]) -> np.ndarray:
    """One object per id, each in its own band of rows, ringed by 255."""
    labels = np.zeros((SIZE, SIZE), np.uint8)
    band = SIZE // len(ids)
    for i, c in enumerate(ids):
        rows, cols = _rectangle(rng, i * band, (i + 1) * band)
        labels[rows.start - 1:rows.stop + 1, cols.start - 1:cols.stop + 1] = 255
        labels[rows, cols] = c
    return labels


def _write(path: str, image: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image)


def _write_palette(path: str, labels: np.ndarray) -> None:
    """A palette PNG, as VOC's own SegmentationClass files are (colours stand for indices)."""
    image = Image.fromarray(labels, mode="P")
    image.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path)


def write_pascal(root: str, per_class: int = 2, palette: bool = False, seed: int = 0) -> str:
    """VOC2012/{JPEGImages, SegmentationClassAug, ImageSets/Segmentation/val.txt}: for each of the 20
    classes `per_class` validation and `per_class` training images, every third with a second class."""
    rng, base = np.random.default_rng(seed), os.path.join(root, "VOC2012")
    val = []
    for c in range(1, 21):
        for split in ("val", "train"):
            for i in range(per_class):
                name = f"2008_{c:02d}{split[0]}{i}"
                ids = [c] if i % 3 else [c % 20 + 1, c]
                _write(os.path.join(base, "JPEGImages", name + ".jpg"), _photo(rng))
                labels = label_map(rng, ids)
                target = os.path.join(base, "SegmentationClassAug", name + ".png")
                _write_palette(target, labels) if palette else _write(target, labels)
                if split == "val":
                    val.append(name)
    os.makedirs(os.path.join(base, "ImageSets", "Segmentation"), exist_ok=True)
    with open(os.path.join(base, "ImageSets", "Segmentation", "val.txt"), "w") as f:
        f.write("\n".join(val) + "\n")
    return base


def write_coco(root: str, per_class: int = 2, seed: int = 0) -> str:
    """COCO2014/{train2014, val2014}/*.jpg with annotations/{train2014, val2014}/*.png label maps
    (class k of the 80 holds k + 1)."""
    rng, base = np.random.default_rng(seed), os.path.join(root, "COCO2014")
    for which in ("val2014", "train2014"):
        for k in range(80):
            for i in range(per_class):
                name = f"COCO_{which}_{k:03d}{i}"
                _write(os.path.join(base, which, name + ".jpg"), _photo(rng))
                _write(os.path.join(base, "annotations", which, name + ".png"), label_map(rng, [k + 1]))
    return base


def write_deepglobe(root: str, per_class: int = 3, seed: int = 0) -> str:
    rng, base = np.random.default_rng(seed), os.path.join(root, "Deepglobe")
    for c in range(1, 7):
        for i in range(per_class):
            _write(os.path.join(base, str(c), "test", "origin", f"{i}_{c}.jpg"), _photo(rng))
            _write(os.path.join(base, str(c), "test", "groundtruth", f"{i}_{c}.png"), binary_mask(rng))
    return base


def write_isic(root: str, per_class: int = 3, seed: int = 0) -> str:
    rng, base = np.random.default_rng(seed), os.path.join(root, "ISIC")
    for c in range(1, 4):
        for i in range(per_class):
            name = f"ISIC_{c:03d}{i:04d}"
            _write(os.path.join(base, "ISIC2018_Task1-2_Training_Input", str(c), name + ".jpg"), _photo(rng))
            _write(os.path.join(base, "ISIC2018_Task1_Training_GroundTruth", name + "_segmentation.png"),
                   binary_mask(rng))
    return base


def write_chest_xray(root: str, count: int = 4, seed: int = 0) -> str:
    """LungSegmentation/{CXR_png, masks}: grey PNG photos; Shenzhen's masks named `<name>_mask.png`,
    Montgomery's `<name>.png`."""
    rng, base = np.random.default_rng(seed), os.path.join(root, "LungSegmentation")
    for i in range(count):
        name = f"CHNCXR_{i:04d}_0" if i % 2 else f"MCUCXR_{i:04d}_0"
        _write(os.path.join(base, "CXR_png", name + ".png"), _photo(rng)[..., 0])
        _write(os.path.join(base, "masks", name + ("_mask.png" if i % 2 else ".png")), binary_mask(rng))
    return base


def write_perseg(root: str, objects: int = 3, per_object: int = 4, seed: int = 0) -> str:
    rng, base = np.random.default_rng(seed), os.path.join(root, "PerSeg")
    for o in range(objects):
        for i in range(per_object):
            _write(os.path.join(base, "Images", f"object_{o}", f"{i:02d}.jpg"), _photo(rng))
            _write(os.path.join(base, "Annotations", f"object_{o}", f"{i:02d}.png"), binary_mask(rng))
    return base


def write_fss(root: str, classes: int = 4, per_class: int = 3, seed: int = 0) -> str:
    rng, base = np.random.default_rng(seed), os.path.join(root, "fss")
    for c in range(classes):
        for i in range(1, per_class + 1):
            _write(os.path.join(base, f"class_{c}", f"{i}.jpg"), _photo(rng))
            _write(os.path.join(base, f"class_{c}", f"{i}.png"), binary_mask(rng))
    return base
