"""Segmenting image files into mask files: the work of `python -m meta_drn_tf.segment`, as functions.

    paths = image_paths(["photos/"])          # files, folders, globs; FSS-1000's masks left out
    outputs = output_files(output_names(paths), "masks/", overlay=False)
    todo, existing, skipped = usable_images(paths, outputs)
    segmenter.adapt(*read_support(["cat.jpg"], ["cat.png"]))
    write_masks(segmenter, paths, todo, outputs, threshold=0.5)

Each takes what it needs as arguments (the command passes its flags); every PNG is written
atomically, so an interrupted folder is continued by leaving out the images whose files exist.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable

import cv2
import numpy as np

from meta_drn_tf import progress
from meta_drn_tf.data.fss1000 import decode_all, problem_list
from meta_drn_tf.data.images import read, read_mask, read_photo
from meta_drn_tf.errors import ConfigError, DataError
from meta_drn_tf.paths import unique_stems
from meta_drn_tf.results import visualize
from meta_drn_tf.serving.segmenter import stack_examples

# Names of image files in a folder (others are found by their content, `cv2.haveImageReader`).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def image_paths(patterns: list[str]) -> list[str]:
    """Image files named by `patterns` (files, folders, globs), sorted within each, duplicates removed;
    a PNG beside a photo of the same name (FSS-1000's layout: 1.jpg and its mask 1.png) is that
    photo's mask, not a photo (`image_and_mask_paths` returns both)."""
    return image_and_mask_paths(patterns)[0]


def _is_image_file(path: str) -> bool:
    # By name as well as by content: an empty or damaged photo is listed, then named as unreadable.
    return os.path.isfile(path) and (path.lower().endswith(IMAGE_SUFFIXES) or cv2.haveImageReader(path))


def image_and_mask_paths(patterns: list[str]) -> tuple[list[str], list[str]]:
    """(photos, masks beside them) among the files `patterns` name (see `image_paths`)."""
    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = [os.path.join(pattern, f) for f in sorted(os.listdir(pattern))]
            found = [p for p in found if _is_image_file(p)]
        else:
            found = sorted(glob.glob(pattern))
        if not found:
            raise ConfigError(f"--images={pattern}: matches no image file")
        paths += [p for p in found if p not in paths]
    masks = masks_beside_photos(paths)
    if masks:
        print(f"Left out {len(masks)} mask(s) beside their photos (e.g. {masks[0]}): FSS-1000's layout")
    left_out = set(masks)
    return [p for p in paths if p not in left_out], masks


def masks_beside_photos(paths: list[str]) -> list[str]:
    """The PNGs among `paths` that share their folder and name with another of them that is not a PNG."""
    stems = {os.path.splitext(p)[0] for p in paths if os.path.splitext(p)[1].lower() != ".png"}
    return [p for p in paths if os.path.splitext(p)[1].lower() == ".png" and os.path.splitext(p)[0] in stems]


def output_names(paths: list[str], overlay: bool = False) -> list[str]:
    """`<name>` of each image: its file name without extension, or where two outputs would collide, its
    path relative to the images' common folder (`paths.unique_stems`)."""
    return unique_stems(paths, ("", "_overlay") if overlay else ("",))


def read_support(images: list[str], masks: list[str]):
    """The labelled examples as uint8 arrays, resized to the first example's size."""
    if len(images) != len(masks):
        raise ConfigError(f"{len(images)} --support image(s) but {len(masks)} --support_mask(s): give one mask each")
    pictures, outlines = [], []
    for image_path, mask_path in zip(images, masks):
        pictures.append(read_photo(image_path))
        outlines.append(read_mask(mask_path, pictures[-1].shape[:2]))
        if not outlines[-1].any():
            raise DataError(f"{mask_path}: the mask is empty; mark the object in the example with bright pixels")
    return stack_examples(pictures, outlines)


def output_files(names: list[str], out: str, overlay: bool) -> list[list[str]]:
    """The files each image gets in `out`: its mask, and its overlay with `overlay`."""
    return [[os.path.join(out, f"{n}.png")] + ([os.path.join(out, f"{n}_overlay.png")] if overlay else [])
            for n in names]


def refuse_overwriting(inputs: list[str], outputs: list[list[str]], out: str, replace: bool = False,
                       skip_existing: bool = False) -> None:
    """ConfigError when an output file (in the folder `out`) would replace one of the `inputs` (photos,
    examples, the masks beside photos: never), or a file already there unless `replace` or
    `skip_existing` (which continues an earlier run: its finished images are left out, and the
    files of one it left half-done are its own)."""
    taken = {os.path.realpath(p): p for p in inputs}
    for path in (p for files in outputs for p in files):
        if os.path.realpath(path) in taken:
            raise ConfigError(f"--out {out}: writing {path} would overwrite the input "
                              f"{taken[os.path.realpath(path)]}; choose another --out folder")
    if replace or skip_existing:
        return
    there = [p for files in outputs for p in files if os.path.lexists(p)]
    if there:
        raise ConfigError(f"--out {out}: {len(there)} file(s) to write are there already (e.g. {there[0]}); not "
                          "replacing them. Choose another --out folder, pass --skip_existing to keep them and "
                          "segment the rest, or --overwrite to replace them")


def is_written(path: str) -> bool:
    """Whether `path` is a whole PNG (what `--skip_existing` counts as done): not empty, its header readable."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False
    return head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24 and os.path.getsize(path) > 33


def remove_stale_partials(outputs: list[list[str]]) -> None:
    """Deletes the temporary files (`paths.write_atomically`) a killed run left beside `outputs`: those
    of processes no longer running."""
    names: dict[str, set[str]] = {}
    for path in (p for files in outputs for p in files):
        folder, name = os.path.split(path)
        names.setdefault(folder or os.curdir, set()).add(name)
    for folder, owned in names.items():  # each folder listed once: thousands of photos go to one
        for entry in os.listdir(folder) if os.path.isdir(folder) else []:
            match = re.fullmatch(r"\.(.+)\.(\d+)\.partial", entry)
            if match and match[1] in owned and not _running(int(match[2])):
                os.remove(os.path.join(folder, entry))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def unreadable(paths: list[str]) -> dict[int, str]:
    """{index: why} of the images that cannot be decoded, checked in parallel with a progress bar."""
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # each bad file is reported below, once

    def problem(path: str) -> str | None:
        # A reduced decode reads the whole file (truncation and corruption show) at a fraction of
        # the cost of a full one (JPEGs decode scaled in the DCT): the images are decoded again later.
        try:
            read(path, cv2.IMREAD_REDUCED_GRAYSCALE_8)
        except DataError as e:
            return str(e)
        return None

    problems = decode_all(problem, paths, f"Checking {len(paths)} image(s)", progress=len(paths) > 1)
    return {i: why for i, why in enumerate(problems) if why}


def usable_images(paths: list[str], outputs: list[list[str]], skip_existing: bool = False,
                  skip_bad_files: bool = False) -> tuple[list[int], int, list[str]]:
    """(indices to segment, how many already have their files, problems of the skipped bad files).

    Args:
        paths: the images.
        outputs: the files each gets (`output_files`).
        skip_existing: leave out the images whose files all exist (an interrupted folder).
        skip_bad_files: leave out the images that cannot be decoded; otherwise a DataError lists them.
    """
    todo = [i for i in range(len(paths)) if not (skip_existing and all(map(is_written, outputs[i])))]
    existing = len(paths) - len(todo)
    if existing:
        print(f"{existing} image(s) already segmented (--skip_existing)")
    bad = {todo[i]: why for i, why in unreadable([paths[i] for i in todo]).items()}
    if bad and not skip_bad_files:
        raise DataError(problem_list(f"--images: {len(bad)} image(s) cannot be read (fix or remove them, or pass "
                                     "--skip_bad_files to segment the rest):", list(bad.values())))
    return [i for i in todo if i not in bad], existing, list(bad.values())


def batches_of_one_size(paths: list[str], indices: list[int], batch_size: int):
    """(indices, uint8 images) batches of consecutive images of `indices` that share a size, read as needed."""
    batch, images = [], []
    for i in indices:
        image = read_photo(paths[i])
        if images and (image.shape != images[0].shape or len(images) == batch_size):
            yield batch, np.stack(images)
            batch, images = [], []
        batch.append(i)
        images.append(image)
    if images:
        yield batch, np.stack(images)


def write_masks(segmenter, paths: list[str], todo: list[int], outputs: list[list[str]], threshold: float = 0.5,
                batch_size: int = 8, support_tile: np.ndarray | None = None) -> None:
    """Segments `paths[i]` for each i of `todo` with an adapted `segmenter`, `batch_size` images of one
    size at a time, into `outputs[i]`: its mask (0/255, foreground where the probability exceeds
    `threshold`) and, where `outputs[i]` names a second file, an overlay beside `support_tile`."""
    for folder in {os.path.dirname(path) for files in outputs for path in files}:
        os.makedirs(folder, exist_ok=True)  # names that keep their subfolder (`paths.unique_stems`)
    remove_stale_partials([outputs[i] for i in todo])
    bar = progress.bar(len(todo), unit_name="image")
    for indices, batch in batches_of_one_size(paths, todo, batch_size):
        masks = segmenter.segment(batch) > threshold
        for i, image, mask in zip(indices, batch, masks):
            if len(outputs[i]) > 1:  # first: the mask, written last, marks an image as done for --skip_existing
                picture = visualize.side_by_side([visualize.overlay(image, mask, visualize.RED), support_tile])
                visualize.save_png(outputs[i][1], picture)
            visualize.save_png(outputs[i][0], (mask * 255).astype(np.uint8))
        bar.add(len(indices))


def calibration_bar() -> Callable[[int, int], None]:
    """A console progress bar over an int16x8 file's calibration images, made at its first call."""
    bars = []

    def report(done: int, total: int) -> None:
        if not bars:
            print(f"Calibrating the int16x8 file on {total} images (the examples and augmentations of them)")
            bars.append(progress.bar(total, unit_name="image"))
        bars[0].update(done)

    return report
