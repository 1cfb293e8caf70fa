"""Which classes each label map of PASCAL VOC 2012 or COCO 2014 holds: the index PASCAL-5i's and
COCO-20i's folds are drawn from, read off the data's own annotations.

Reading every label map takes minutes for COCO (123k files), so the answer is kept in the user's
cache folder (`$XDG_CACHE_HOME/meta_drn_tf`, else `~/.cache/meta_drn_tf`), never in the data's
folder, and read again whenever the folder's modification time changes (a file added, removed or
renamed; a label map rewritten in place is not noticed: delete the cache file then).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

from meta_drn_tf.data import images
from meta_drn_tf.data.fss1000 import decode_all
from meta_drn_tf.errors import DataError
from meta_drn_tf.paths import write_atomically

IGNORE = 255  # boundary and "don't care" pixels: counted in neither intersection nor union
PASCAL_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
                  "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
                  "tvmonitor")
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush")
SEE = "see docs/field.md for the layout"


@dataclasses.dataclass
class Index:
    """The labelled photos of a folder: (photo path, label map path, the class ids it holds)."""

    folder: str
    entries: list[tuple[str, str, frozenset[int]]]


def class_ids(path: str) -> list[int]:
    """The class ids a label map holds (0, the background, and IGNORE left out)."""
    labels = images.read_label_map(path)
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=256))
    return [int(v) for v in present if v not in (0, IGNORE)]


def _cache_path(folder: str) -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha1(os.path.abspath(folder).encode()).hexdigest()[:16]
    return os.path.join(cache, "meta_drn_tf", f"label_maps-{digest}.json")


def labels_of(folder: str, names: list[str]) -> dict[str, list[int]]:
    """{name: class ids} of the label maps `folder/<name>.png`: those the cache holds for the folder as
    it is (its modification time changes when a file is added, removed or renamed), the others read in
    parallel with a progress bar and added to it."""
    path, stamp = _cache_path(folder), os.stat(folder).st_mtime_ns
    cached: dict[str, list[int]] = {}
    try:
        with open(path) as f:
            saved = json.load(f)
        if saved["stamp"] == stamp:
            cached = saved["labels"]
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or damaged: read them again
        pass
    todo = [n for n in names if n not in cached]
    if todo:
        found = decode_all(lambda n: class_ids(os.path.join(folder, n + ".png")), todo,
                           f"Reading the classes of {len(todo)} label maps in {folder} (once: kept in {path})")
        cached.update(zip(todo, found))
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_atomically(path, json.dumps({"folder": os.path.abspath(folder), "stamp": stamp, "labels": cached}))
        except OSError:  # a read-only home: read them again next time
            pass
    return {n: cached[n] for n in names}


def _index(photos: str, annotations: str, names: list[str]) -> Index:
    require_files([os.path.join(photos, n + ".jpg") for n in names], "the photo of a label map")
    labels = labels_of(annotations, names)
    return Index(annotations, [(os.path.join(photos, n + ".jpg"), os.path.join(annotations, n + ".png"),
                                frozenset(labels[n])) for n in names])


def _pngs(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: the folder of label maps is missing; {SEE}")
    names = sorted(n[:-4] for n in os.listdir(folder) if n.endswith(".png"))
    if not names:
        raise DataError(f"{folder}: holds no label maps (.png); {SEE}")
    return names


def pascal_index(base: str, split: str) -> Index:
    """VOC2012's labelled photos: "test", those of `ImageSets/Segmentation/val.txt`; "train", every
    other label map of `SegmentationClassAug` (SBD's augmented training set included)."""
    listing = os.path.join(base, "ImageSets", "Segmentation", "val.txt")
    if not os.path.isfile(listing):
        raise DataError(f"{listing}: VOC2012's list of validation images is missing; {SEE}")
    with open(listing) as f:
        val = [line.strip() for line in f if line.strip()]
    annotations = os.path.join(base, "SegmentationClassAug")
    if split == "test":
        names = val
        require_files([os.path.join(annotations, n + ".png") for n in names], "a label map")
    else:
        held_out = set(val)
        names = [n for n in _pngs(annotations) if n not in held_out]
    return _index(os.path.join(base, "JPEGImages"), annotations, names)


def coco_index(base: str, which: str) -> Index:
    """COCO 2014's labelled photos of `which` ("train2014" or "val2014"): `annotations/<which>/*.png`
    label maps beside the photos `<which>/*.jpg`."""
    annotations = os.path.join(base, "annotations", which)
    return _index(os.path.join(base, which), annotations, _pngs(annotations))


def require_files(paths: list[str], what: str) -> None:
    """DataError naming the first of `paths` that is not a file, and how many more are missing."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{missing[0]}: {what} is missing"
                        + (f" (and {len(missing) - 1} more like it)" if len(missing) > 1 else "") + f"; {SEE}")
