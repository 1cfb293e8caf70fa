"""The field's few-shot segmentation benchmarks, each read in its own on-disk layout into an index of
files (nothing decoded but, once, the label maps that say which classes an image holds).

    benchmark = read_benchmark("pascal5i", "/data/VOC2012", fold=0)   # a Benchmark
    benchmark.samples["cat"][0]                                        # Sample(image, annotation, label)

FSS-1000, PerSeg and the cross-domain sets (Deepglobe, ISIC2018, Chest X-ray) come with one binary
mask per photo; PASCAL-5i and COCO-20i with label maps (a class's pixels hold its id, 255 is "ignore"),
from which a class's mask is `label == id` (`data/label_maps.py`). docs/field.md gives each layout,
where to get it and the command that evaluates it.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Callable

from meta_drn_tf.data import fss1000, label_maps
from meta_drn_tf.errors import DataError

SEE = label_maps.SEE
# The cross-domain benchmark's protocol: 600 episodes, classes in turn, averaged over 5 seeds.
CROSS_DOMAIN = {"episodes": 600, "seeds": 5, "draw": "class_in_turn"}


@dataclasses.dataclass(frozen=True)
class Sample:
    """One photo of a class, with where its mask comes from.

    Args:
        image: the photo's path.
        annotation: its binary mask's path, or the label map's holding the class.
        label: the class's id in that label map; None for a binary mask.
    """

    image: str
    annotation: str
    label: int | None = None


@dataclasses.dataclass
class Benchmark:
    """The classes of one benchmark (a fold, a split) and their samples, with the field's protocol.

    Args:
        name: what reports call it, e.g. "PASCAL-5i fold 0".
        samples: each class's samples, in a fixed order.
        episodes: the field's number of episodes (0: one per sample, each the query once).
        fixed_support: each class's first samples are the supports of every episode (PerSeg).
        seeds: how many seeds the field averages over (5 for the cross-domain sets).
        draw: how a query is drawn: "each" (every sample once per round, in a seeded order: FSS-1000,
            PASCAL-5i), "random_class" (a class drawn uniformly, then its query: COCO-20i) or
            "class_in_turn" (episode i's class is the (i mod n)-th, its query drawn: the cross-domain sets).
    """

    name: str
    samples: dict[str, list[Sample]]
    episodes: int = 0
    fixed_support: bool = False
    seeds: int = 1
    draw: str = "each"

    @property
    def class_names(self) -> list[str]:
        return list(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.samples)

    @property
    def num_samples(self) -> int:
        return sum(len(s) for s in self.samples.values())


def _located(root: str, inside: str, marker: str, flag: str = "--data_dir") -> str:
    """`root`, or its subfolder `inside` (the name the field's code expects under its data path), as
    long as `marker` is under it; DataError naming where it was looked for otherwise."""
    if not os.path.isdir(root):
        raise DataError(f"{flag} {root}: no such directory")
    for folder in (root, os.path.join(root, inside)):
        if os.path.exists(os.path.join(folder, marker)):
            return folder
    raise DataError(f"{flag} {root}: {marker} is missing (looked in {root} and {os.path.join(root, inside)}); {SEE}")


def _binary_classes(name: str, classes: dict[str, list[tuple[str, str]]], **protocol) -> Benchmark:
    """A benchmark of photos with one binary mask each, every mask checked to exist."""
    label_maps.require_files([mask for pairs in classes.values() for _, mask in pairs], "the mask")
    samples = {c: [Sample(image, mask) for image, mask in pairs] for c, pairs in classes.items() if pairs}
    if not samples:
        raise DataError(f"{name}: no photos found; {SEE}")
    return Benchmark(name, samples, **protocol)


def read_fss1000(root: str, split: str = "test", split_files: dict[str, str] | None = None,
                 validation: str = "fss1000_val") -> Benchmark:
    """FSS-1000 (`ROOT/<class>/<n>.jpg` + `<n>.png`), a split of its classes (`fss1000.split_classes`):
    the field's episodes are one per photo of the 240 test classes (2,400), each with a support of its
    class drawn at random."""
    found = fss1000.discover_classes(root)
    names = sorted(found) if split == "all" else fss1000.split_classes(list(found), split, split_files=split_files,
                                                                      validation=validation)
    classes = {c: [(image, fss1000.mask_path(image)) for image in found[c]] for c in names}
    return _binary_classes(f"FSS-1000 {split}", classes)


def read_perseg(root: str) -> Benchmark:
    """PerSeg (`Images/<object>/NN.jpg`, `Annotations/<object>/NN.png`): each object's first photo is
    the support of all its others (the personalisation protocol)."""
    base = _located(root, "PerSeg", "Images")
    objects = sorted(d for d in os.listdir(os.path.join(base, "Images"))
                     if os.path.isdir(os.path.join(base, "Images", d)))
    classes = {}
    for name in objects:
        photos = sorted(glob.glob(os.path.join(base, "Images", name, "*.jpg")))
        classes[name] = [(p, os.path.join(base, "Annotations", name, os.path.basename(p)[:-4] + ".png"))
                         for p in photos]
    return _binary_classes("PerSeg", classes, fixed_support=True)


def read_deepglobe(root: str) -> Benchmark:
    """Deepglobe as the cross-domain benchmark prepares it: `<class>/test/origin/*.jpg` with
    `<class>/test/groundtruth/*.png`, classes 1-6 (land-cover types); 600 episodes, 5 seeds."""
    base = _located(root, "Deepglobe", os.path.join("1", "test", "origin"))
    classes = {}
    for name in sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d, "test", "origin"))):
        photos = sorted(glob.glob(os.path.join(base, name, "test", "origin", "*.jpg")))
        classes[name] = [(p, os.path.join(base, name, "test", "groundtruth", os.path.basename(p)[:-4] + ".png"))
                         for p in photos]
    return _binary_classes("Deepglobe", classes, **CROSS_DOMAIN)


ISIC_PHOTOS, ISIC_MASKS = "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"


def read_isic(root: str) -> Benchmark:
    """ISIC2018 as the cross-domain benchmark prepares it: photos in `ISIC2018_Task1-2_Training_Input/
    <class>/ISIC_n.jpg`, masks `ISIC2018_Task1_Training_GroundTruth/ISIC_n_segmentation.png`, three
    lesion classes; 600 episodes, 5 seeds."""
    base = _located(root, "ISIC", ISIC_PHOTOS)
    photos_dir = os.path.join(base, ISIC_PHOTOS)
    classes = {}
    for name in sorted(d for d in os.listdir(photos_dir) if os.path.isdir(os.path.join(photos_dir, d))):
        photos = sorted(glob.glob(os.path.join(photos_dir, name, "*.jpg")))
        classes[name] = [(p, os.path.join(base, ISIC_MASKS, os.path.basename(p)[:-4] + "_segmentation.png"))
                         for p in photos]
    if not classes:
        raise DataError(f"{photos_dir}: no class folders (1, 2, 3) of photos; {SEE}")
    return _binary_classes("ISIC2018", classes, **CROSS_DOMAIN)


def read_chest_xray(root: str) -> Benchmark:
    """Chest X-ray (lung segmentation): `CXR_png/<name>.png` photos, `masks/<name>_mask.png` (or
    `masks/<name>.png`) masks; one class; 600 episodes, 5 seeds. The photos are PNG files."""
    base = _located(root, "LungSegmentation", "masks")
    pairs = []
    for mask in sorted(glob.glob(os.path.join(base, "masks", "*.png"))):
        stem = os.path.basename(mask)[:-4].removesuffix("_mask")
        pairs.append((os.path.join(base, "CXR_png", stem + ".png"), mask))
    label_maps.require_files([photo for photo, _ in pairs], "the photo of a mask")
    return _binary_classes("Chest X-ray", {"lung": pairs}, **CROSS_DOMAIN)


def read_pascal5i(root: str, fold: int, split: str = "test") -> Benchmark:
    """PASCAL-5i: VOC2012 photos with SegmentationClassAug label maps. Fold i's test classes are VOC's
    5i+1..5i+5 (on VOC2012's val images), its training classes the other 15 (on every other labelled
    image); 1,000 episodes."""
    base = _located(root, "VOC2012", "SegmentationClassAug")
    _located(base, "", "JPEGImages")
    test = [5 * fold + i + 1 for i in range(5)]
    ids = test if split == "test" else [c for c in range(1, 21) if c not in test]
    index = label_maps.pascal_index(base, split)
    return _label_map_benchmark(f"PASCAL-5i fold {fold} {split}", index, ids, label_maps.PASCAL_CLASSES)


def read_coco20i(root: str, fold: int, split: str = "test") -> Benchmark:
    """COCO-20i: COCO 2014 photos with label-map PNGs (class k of the 80 holds k + 1). Fold i's test
    classes are i, i+4, ..., i+76 (on val2014), its training classes the other 60 (on train2014);
    1,000 episodes."""
    base = _located(root, "COCO2014", "annotations")
    test = [fold + 4 * k + 1 for k in range(20)]
    ids = test if split == "test" else [c for c in range(1, 81) if c not in test]
    index = label_maps.coco_index(base, "val2014" if split == "test" else "train2014")
    return _label_map_benchmark(f"COCO-20i fold {fold} {split}", index, ids, label_maps.COCO_CLASSES,
                                draw="random_class")


def _label_map_benchmark(name: str, index: label_maps.Index, ids: list[int], names: tuple[str, ...],
                         **protocol) -> Benchmark:
    samples = {names[c - 1]: [Sample(photo, labels, c) for photo, labels, present in index.entries if c in present]
               for c in ids}
    empty = [c for c, s in samples.items() if not s]
    if len(empty) == len(samples):
        raise DataError(f"{name}: no image holds any of its classes ({', '.join(empty[:5])}, ...) in "
                        f"{index.folder}; {SEE}")
    return Benchmark(name, {c: s for c, s in samples.items() if s}, episodes=1000, **protocol)


def subset(benchmark: Benchmark, classes_file: str) -> Benchmark:
    """`benchmark` with only the classes listed in `classes_file` (one a line), in its order."""
    names = fss1000.listed_classes(classes_file, benchmark.class_names, benchmark.name)
    return dataclasses.replace(benchmark, samples={n: benchmark.samples[n] for n in names})


# --dataset: (reader of root, fold, split; whether it has folds; the splits it has).
DATASETS: dict[str, tuple[Callable[..., Benchmark], bool, tuple[str, ...]]] = {
    "fss1000": (lambda root, fold, split: read_fss1000(root, split), False, ("train", "val", "test", "all")),
    "pascal5i": (read_pascal5i, True, ("train", "test")),
    "coco20i": (read_coco20i, True, ("train", "test")),
    "deepglobe": (lambda root, fold, split: read_deepglobe(root), False, ("test",)),
    "isic": (lambda root, fold, split: read_isic(root), False, ("test",)),
    "chest_xray": (lambda root, fold, split: read_chest_xray(root), False, ("test",)),
    "perseg": (lambda root, fold, split: read_perseg(root), False, ("test",)),
}


def read_benchmark(dataset: str, root: str, fold: int = 0, split: str = "test") -> Benchmark:
    """The `split` of `dataset` (a DATASETS key) found at `root`: for PASCAL-5i and COCO-20i, of `fold`
    (0-3); DataError naming what is missing and where it was expected."""
    reader, has_folds, splits = DATASETS[dataset]
    if split not in splits:
        raise DataError(f"--dataset={dataset} has no {split} split (it has: {', '.join(splits)}); the field "
                        "evaluates it only")
    if has_folds and fold not in range(4):
        raise DataError(f"--fold={fold}: {dataset} has folds 0 to 3")
    return reader(root, fold, split)
