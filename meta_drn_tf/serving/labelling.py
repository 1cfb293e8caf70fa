"""What the labelling web app does, without the page: one person's examples, photos and masks.

    session = LabellingSession(segmenter)               # one per person: adaptations are not shared
    fit = session.adapt([example_rgb], [example_mask])  # the (first) example's own probabilities
    problems = session.segment(["a.jpg", "b.png"], progress=print)
    pictures = session.overlays(threshold=0.4)           # (overlay, caption) per photo: no re-adaptation
    zip_bytes = session.masks_zip(threshold=0.4)        # <name>.png, 0/255 at each photo's size

Probabilities are kept per photo, so a new threshold redraws without running the
network; a new example re-adapts once. Unreadable files are named in `problems`,
never raised: a page shows them.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator

import cv2
import numpy as np

from meta_drn_tf.data.images import MAX_IMAGE_PIXELS, binary_mask, decode, header_size, read, read_photo
from meta_drn_tf.errors import DataError
from meta_drn_tf.paths import unique_stems
from meta_drn_tf.results import visualize
from meta_drn_tf.serving.segment_files import IMAGE_SUFFIXES
from meta_drn_tf.serving.segmenter import Segmenter, stack_examples

# What the page accepts: each uploaded file (gradio refuses larger ones) and what one zip unpacks to.
MAX_UPLOAD = "500mb"
MAX_UNZIPPED_BYTES = 2**30
# One image file in a zip (camera photos are tens of MB): each is unpacked and decoded before the next, so
# the page's memory holds about two of these at a time, whatever a zip declares or holds.
MAX_MEMBER_BYTES = 2**28
# The photos of one segmentation, in all: each is decoded, kept with its probabilities (7 bytes a pixel)
# and passes through the network at its own size once.
MAX_PAGE_PIXELS = 50_000_000


def mask_from_painting(layers: list[np.ndarray]) -> np.ndarray:
    """{0, 1} mask of the pixels any painted layer covers (RGBA layers: alpha above zero)."""
    painted = [np.asarray(layer)[..., 3] > 0 for layer in layers if layer is not None and np.ndim(layer) == 3]
    if not painted:
        return np.zeros((0, 0), np.uint8)
    return np.logical_or.reduce(painted).astype(np.uint8)


def mask_from_upload(image: np.ndarray) -> np.ndarray:
    """{0, 1} mask of an uploaded mask picture, in any encoding `segment` reads (0/255, 0/1, palette...)."""
    return binary_mask(np.asarray(image))


def read_examples(photo_paths: list[str], mask_paths: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Further examples from files: photos and their masks, in the same order (ValueError naming a bad one)."""
    if len(photo_paths) != len(mask_paths):
        raise ValueError(f"{len(photo_paths)} more example photo(s) but {len(mask_paths)} mask(s): give one mask "
                         "for each photo, in the same order")
    # DataError (a ValueError) names a file that cannot be decoded.
    return ([read_photo(photo) for photo in photo_paths],
            [mask_from_upload(read(mask, cv2.IMREAD_UNCHANGED)) for mask in mask_paths])


def _decode(name: str, data: bytes) -> np.ndarray:
    """RGB uint8 of an uploaded image; DataError names it when it cannot be read or is too large."""
    return cv2.cvtColor(decode(name, data), cv2.COLOR_BGR2RGB)


def safe_name(name: str) -> str:
    """A zip member's name as a relative path that stays inside any folder: separators normalised,
    empty, `.`, `..` and drive parts dropped (`x/../../a.jpg` -> `x/a.jpg`, `/abs/a.jpg` -> `abs/a.jpg`)."""
    parts = [part.replace(":", "_") for part in re.split(r"[\\/]+", name) if part not in ("", ".", "..")]
    return "/".join(parts) or "unnamed"


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int) -> bytes | None:
    """A member's bytes, decompressed a chunk at a time; None once they pass `budget` bytes (a zip's
    headers can declare any size: only what really comes out is counted)."""
    chunks, size = [], 0
    with archive.open(info) as member:
        while chunk := member.read(2**20):
            chunks.append(chunk)
            size += len(chunk)
            if size > budget:
                return None
    return b"".join(chunks)


class ZipProblem(ValueError):
    """A zip that cannot be read on: not a zip, damaged, or unpacking to more than the page takes."""


def _zip_members(path: str) -> Iterator[tuple[str, bytes | None]]:
    """(safe name, bytes) of each image in a zip, one at a time (the caller decodes each before the next
    is unpacked); bytes None for a member larger than any photo (MAX_MEMBER_BYTES). ZipProblem stops it."""
    zip_name = os.path.basename(path)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = [i for i in archive.infolist()
                     if i.filename.lower().endswith(IMAGE_SUFFIXES) and not i.filename.startswith("__MACOSX")]
            budget = MAX_UNZIPPED_BYTES - sum(i.file_size for i in infos)  # what the headers declare, first
            budget = MAX_UNZIPPED_BYTES if budget >= 0 else -1
            for info in sorted(infos, key=lambda i: i.filename):
                data = _read_member(archive, info, min(budget, MAX_MEMBER_BYTES)) if budget >= 0 else None
                if data is None and budget <= MAX_MEMBER_BYTES:
                    raise ZipProblem(f"{zip_name}: unpacks to more than the page's {MAX_UNZIPPED_BYTES // 2**20} "
                                     "MiB; upload its photos in several zips")
                budget -= len(data or b"")
                yield safe_name(info.filename), data
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError):  # damaged, encrypted
        raise ZipProblem(f"{zip_name}: not a readable zip file (damaged, encrypted or of an unknown kind)") from None


def _file_members(path: str) -> Iterator[tuple[str, bytes]]:
    with open(path, "rb") as f:
        yield os.path.basename(path), f.read()


def read_photos(paths: list[str], max_pixels: int = MAX_PAGE_PIXELS) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """(name, RGB image) of every image in `paths` (image files, or zips of them), and the problems; the
    photos past `max_pixels` in all (read off their headers, before decoding) are left out and named."""
    photos, problems, pixels = [], [], 0
    for path in paths:
        try:
            for name, data in (_zip_members if path.lower().endswith(".zip") else _file_members)(path):
                if data is None:
                    problems.append(f"{name}: more than {MAX_MEMBER_BYTES // 2**20} MiB, larger than any photo "
                                    "the page reads")
                    continue
                width, height = header_size(data) or (0, 0)
                if width * height <= MAX_IMAGE_PIXELS and pixels + width * height > max_pixels:  # else: below
                    problems.append(f"{name}: left out: the photos of one segmentation may hold "
                                    f"{max_pixels // 10**6} megapixels in all; segment the rest in another round")
                    continue
                try:
                    photos.append((name, _decode(name, data)))
                    pixels += width * height
                except DataError as e:
                    problems.append(str(e))
        except ZipProblem as e:
            problems.append(str(e))
    return photos, problems


class LabellingSession:
    """One person's work: an adapted copy of the segmenter, their photos and the probabilities.

    Args:
        segmenter: the loaded model; this session adapts its own copy (`Segmenter.copy`).
    """

    def __init__(self, segmenter: Segmenter):
        self.segmenter = segmenter.copy()
        self.example: tuple[np.ndarray, np.ndarray] | None = None
        self.photos: list[tuple[str, np.ndarray, np.ndarray]] = []  # name, image, probabilities

    def adapt(self, images: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
        """Adapts to the examples (uint8 RGB images, {0,1} masks of their sizes; the others are resized
        to the first one's size), once per set of examples; the first example's own probabilities."""
        images = [np.asarray(image)[..., :3].astype(np.uint8) for image in images]
        masks = [np.asarray(mask).astype(np.uint8) for mask in masks]
        for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
            if image.shape[0] * image.shape[1] > MAX_PAGE_PIXELS:  # the page decoded it: the network need not
                raise ValueError(f"example {i + 1}: {image.shape[1]}x{image.shape[0]} pixels, more than the "
                                 f"{MAX_PAGE_PIXELS // 10**6} megapixels the page adapts to; downscale it first")
            if mask.shape != image.shape[:2]:
                raise ValueError(f"example {i + 1}: the mask is {mask.shape[1]}x{mask.shape[0]} but the photo is "
                                 f"{image.shape[1]}x{image.shape[0]}: paint on the photo, or upload its own mask")
            if not mask.any():
                raise ValueError(f"example {i + 1}: the mask is empty: paint the object, or upload a mask")
        images, masks = stack_examples(images, masks)
        if self.example is None or not all(map(np.array_equal, self.example, (images, masks))):
            self.segmenter.adapt(images, masks.astype(np.float32))  # once per set of examples, not per photo
            self.example = (images, masks)
        return self.segmenter.segment(images[:1])[0]

    def segment(self, paths: list[str], progress: Callable[[int, int], None] | None = None) -> list[str]:
        """Segments the photos in `paths` (files or zips) with the adapted network; the problems found."""
        if self.example is None:
            raise ValueError("give an example first: a photo with the object painted or its mask")
        photos, problems = read_photos(paths)
        self.photos = []
        for i, (name, image) in enumerate(photos):
            self.photos.append((name, image, self.segmenter.segment(image[None])[0]))
            if progress:
                progress(i + 1, len(photos))
        return problems

    def overlays(self, threshold: float) -> list[tuple[np.ndarray, str]]:
        """(photo with its mask in red, caption) for every photo, at `threshold`."""
        return [(visualize.overlay(image, probabilities > threshold, visualize.RED),
                 f"{name}: {100 * (probabilities > threshold).mean():.0f}% object")
                for name, image, probabilities in self.photos]

    def masks_zip(self, threshold: float) -> bytes:
        """A zip of `<name>.png` per photo: its mask at its own size, 0 = background, 255 = object."""
        buffer = io.BytesIO()
        # a.jpg twice, or in two folders of a zip; safe names: the zip unpacks inside the folder it is unpacked in
        names = [safe_name(stem) for stem in unique_stems([safe_name(name) for name, _, _ in self.photos])]
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for stem, (_, _, probabilities) in zip(names, self.photos):
                ok, png = cv2.imencode(".png", ((probabilities > threshold) * 255).astype(np.uint8))
                archive.writestr(stem + ".png", png.tobytes())
        return buffer.getvalue()
