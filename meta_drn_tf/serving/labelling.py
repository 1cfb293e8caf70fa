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
import zipfile
from collections.abc import Callable

import cv2
import numpy as np

from meta_drn_tf import visualize
from meta_drn_tf.data.fss1000 import decode_bytes, decode_image, decode_mask, read_rgb
from meta_drn_tf.errors import DataError
from meta_drn_tf.paths import unique_stems
from meta_drn_tf.serving.segmenter import Segmenter, stack_examples

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# What the page accepts: each uploaded file (gradio refuses larger ones) and what one zip unpacks to.
MAX_UPLOAD = "500mb"
MAX_UNZIPPED_BYTES = 2**30


def mask_from_painting(layers: list[np.ndarray]) -> np.ndarray:
    """{0, 1} mask of the pixels any painted layer covers (RGBA layers: alpha above zero)."""
    painted = [np.asarray(layer)[..., 3] > 0 for layer in layers if layer is not None and np.ndim(layer) == 3]
    if not painted:
        return np.zeros((0, 0), np.uint8)
    return np.logical_or.reduce(painted).astype(np.uint8)


def mask_from_upload(image: np.ndarray) -> np.ndarray:
    """{0, 1} mask of an uploaded mask picture, in any encoding `segment` reads (0/255, 0/1, palette...)."""
    return decode_mask(np.asarray(image))


def read_examples(photo_paths: list[str], mask_paths: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Further examples from files: photos and their masks, in the same order (ValueError naming a bad one)."""
    if len(photo_paths) != len(mask_paths):
        raise ValueError(f"{len(photo_paths)} more example photo(s) but {len(mask_paths)} mask(s): give one mask "
                         "for each photo, in the same order")
    # DataError (a ValueError) names a file that cannot be decoded.
    return ([read_rgb(photo) for photo in photo_paths],
            [mask_from_upload(decode_image(mask, cv2.IMREAD_UNCHANGED)) for mask in mask_paths])


def _decode(name: str, data: bytes) -> np.ndarray:
    """RGB uint8 of an uploaded image; DataError names it when it cannot be read or is too large."""
    return cv2.cvtColor(decode_bytes(name, np.frombuffer(data, np.uint8)), cv2.COLOR_BGR2RGB)


def _zip_members(path: str) -> tuple[list[tuple[str, bytes]], str | None]:
    """The images in a zip, or the problem that stops it being read (not a zip; unpacking too much)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = [i for i in archive.infolist()
                     if i.filename.lower().endswith(IMAGE_SUFFIXES) and not i.filename.startswith("__MACOSX")]
            unpacked = sum(i.file_size for i in infos)
            if unpacked > MAX_UNZIPPED_BYTES:
                return [], (f"{os.path.basename(path)}: unpacks to {unpacked / 2**20:.0f} MiB, more than the page's "
                            f"{MAX_UNZIPPED_BYTES // 2**20} MiB; upload its photos in several zips")
            return [(i.filename, archive.read(i)) for i in sorted(infos, key=lambda i: i.filename)], None
    except zipfile.BadZipFile:
        return [], f"{os.path.basename(path)}: not a readable zip file"


def read_photos(paths: list[str]) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """(name, RGB image) of every image in `paths` (image files, or zips of them), and the problems."""
    photos, problems = [], []
    for path in paths:
        if path.lower().endswith(".zip"):
            members, problem = _zip_members(path)
            problems += [problem] if problem else []
        else:
            with open(path, "rb") as f:
                members = [(os.path.basename(path), f.read())]
        for name, data in members:
            try:
                photos.append((name, _decode(name, data)))
            except DataError as e:
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
        names = unique_stems([name for name, _, _ in self.photos])  # a.jpg twice, or in two folders of a zip
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for stem, (_, _, probabilities) in zip(names, self.photos):
                ok, png = cv2.imencode(".png", ((probabilities > threshold) * 255).astype(np.uint8))
                archive.writestr(stem + ".png", png.tobytes())
        return buffer.getvalue()
