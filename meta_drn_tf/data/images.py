"""Image and mask files, decoded with their size checked first: what every data set reader uses.

A file's header says its size before any pixel is decoded, so a small file that declares a huge
image is refused at the cost of reading its header (`decode`). Photos come back as RGB uint8
`(H, W, 3)`; masks as {0,1} uint8 `(H, W)` from any binary encoding (`binary_mask`), label maps as
their class ids `(H, W)` (`read_label_map`).
"""

from __future__ import annotations

import os
import struct

import cv2
import numpy as np

from meta_drn_tf.errors import DataError

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


def decode(name: str, data: bytes | None, mode: int = cv2.IMREAD_COLOR,
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


def read(path: str, mode: int = cv2.IMREAD_COLOR, min_side: int = MIN_IMAGE_SIDE) -> np.ndarray:
    """Decodes an image file (any format OpenCV reads) with OpenCV's `mode`; DataError names the file."""
    if not os.path.isfile(path):
        return decode(path, None, mode, min_side)
    with open(path, "rb") as f:
        return decode(path, f.read(), mode, min_side)


def read_photo(path: str) -> np.ndarray:
    """Decodes an image file as RGB uint8 `(H, W, 3)` at its own size."""
    return cv2.cvtColor(read(path), cv2.COLOR_BGR2RGB)


def binary_mask(raw: np.ndarray) -> np.ndarray:
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


def read_mask(path: str, expected_shape: tuple[int, int], missing: str = "each <n>.jpg needs a <n>.png mask "
              "beside it") -> np.ndarray:
    """Decodes a binary mask in any encoding `binary_mask` knows, at its own size, checking it has its
    image's `expected_shape` (H, W); a label map of several objects is refused."""
    raw = _read_annotation(path, cv2.IMREAD_UNCHANGED, expected_shape, missing)
    if raw.ndim == 2 and raw.max() < 128 and len(values := np.unique(raw)) > 2:
        # Not antialiasing (whose peak is bright): labels of several objects, of which only the highest
        # would count as the object.
        raise DataError(f"{path}: holds the values {', '.join(map(str, values[:5]))}"
                        f"{', ...' if len(values) > 5 else ''}, a label map rather than a mask; give a binary "
                        "mask of one object (0/255 or 0/1)")
    return binary_mask(raw)


def read_label_map(path: str, expected_shape: tuple[int, int] | None = None,
                   missing: str = "each photo needs its label map") -> np.ndarray:
    """A label map's class ids `(H, W)` uint8 at its own size (checked against its photo's
    `expected_shape` when given): a grey PNG's values, or a palette PNG's indices (PASCAL VOC's
    colours stand for its classes' indices)."""
    from PIL import Image

    raw = _read_annotation(path, cv2.IMREAD_UNCHANGED, expected_shape, missing)
    if raw.ndim == 2:
        return raw if raw.dtype == np.uint8 else np.minimum(raw, 255).astype(np.uint8)
    with Image.open(path) as image:  # OpenCV expanded a palette to colours; its indices are the labels
        if image.mode != "P":
            raise DataError(f"{path}: a colour image, not a label map (one class id a pixel, grey or palette PNG)")
        return np.asarray(image, np.uint8)


def _read_annotation(path: str, mode: int, expected_shape: tuple[int, int] | None, missing: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise DataError(f"{path}: mask is missing ({missing})")
    raw = read(path, mode, min_side=1)  # its image's size
    if expected_shape is not None and raw.shape[:2] != tuple(expected_shape):
        raise DataError(
            f"{path}: mask is {raw.shape[1]}x{raw.shape[0]} but its image is "
            f"{expected_shape[1]}x{expected_shape[0]}; a mask must have its image's size"
        )
    return raw


def resize_photo(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` at `size` (H, W): area-averaged when shrinking, bilinear when enlarging."""
    return _resize(image, size, cv2.INTER_AREA)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A {0,1} mask at `size` (H, W): bilinear, then split at one half (the edge stays where it was)."""
    return (_resize(mask.astype(np.float32), size, cv2.INTER_LINEAR) >= 0.5).astype(np.uint8)


def _resize(array: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    h, w = size
    if array.shape[:2] == (h, w):
        return array
    if array.shape[0] < h or array.shape[1] < w:
        interpolation = cv2.INTER_LINEAR  # INTER_AREA is for shrinking
    return cv2.resize(array, (w, h), interpolation=interpolation)
