"""The embedded default dataset: procedural object families, deterministic by seed.

A class is an object family: a shape family (ellipse, polygon, star, ring,
cross, crescent, blob) with its own proportions, a colour palette and a
texture (solid, stripes, checks, dots). Each image draws one or two members
of the family in a random pose, scale, position and deformation over a
cluttered textured background; about half the images also contain distractor
objects of other families. The mask covers only the visible pixels of the
class's own objects, so a model needs the support to know *which* object to
segment.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from meta_drn_tf.data.bank import ImageBank

SHAPES = ("ellipse", "polygon", "star", "ring", "cross", "crescent", "blob")
TEXTURES = ("solid", "stripes", "checks", "dots")


def class_spec(seed: int, class_id: int) -> dict:
    """The parameters that define synthetic class `class_id`."""
    rng = np.random.default_rng([seed, class_id, 0])
    hue = rng.uniform(0, 180)
    palette = [
        _hsv_to_rgb(hue, rng.uniform(150, 255), rng.uniform(150, 255)),
        _hsv_to_rgb((hue + rng.uniform(30, 150)) % 180, rng.uniform(100, 255), rng.uniform(60, 255)),
    ]
    return {
        "shape": SHAPES[class_id % len(SHAPES)],
        "texture": TEXTURES[(class_id // len(SHAPES)) % len(TEXTURES)],
        "aspect": rng.uniform(0.5, 1.0),
        "vertices": int(rng.integers(3, 8)),
        "inner": rng.uniform(0.35, 0.6),
        "period": rng.uniform(0.08, 0.2),
        "palette": palette,
    }


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    hsv = np.array([[[h, s, v]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _outline(spec: dict, rng: np.random.Generator) -> list[np.ndarray]:
    """Polygon(s) of a family member in unit coordinates (radius ~1); several parts are xor-ed."""
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    circle = np.stack([np.cos(t), np.sin(t)], 1)
    shape = spec["shape"]
    if shape == "ellipse":
        parts = [circle * [1.0, spec["aspect"]]]
    elif shape == "polygon":
        a = np.linspace(0, 2 * np.pi, spec["vertices"], endpoint=False)
        parts = [np.stack([np.cos(a), np.sin(a)], 1)]
    elif shape == "star":
        n = spec["vertices"] + 2
        a = np.linspace(0, 2 * np.pi, 2 * n, endpoint=False)
        r = np.where(np.arange(2 * n) % 2 == 0, 1.0, spec["inner"])
        parts = [np.stack([r * np.cos(a), r * np.sin(a)], 1)]
    elif shape == "ring":
        parts = [circle, circle * spec["inner"]]
    elif shape == "cross":
        parts = _cross(spec["inner"] * 0.6)
    elif shape == "crescent":
        parts = [circle, circle * 0.85 + [0.45, 0.0]]
    else:  # blob: a circle with smooth random radius
        k = np.arange(1, 4)[:, None]
        amp = rng.uniform(0.05, 0.2, (3, 1))
        phase = rng.uniform(0, 2 * np.pi, (3, 1))
        r = 1 + (amp * np.sin(k * t[None] + phase)).sum(0)
        parts = [circle * r[:, None] * [1.0, spec["aspect"]]]
    return [np.asarray(p, np.float64) for p in parts]


def _cross(w: float) -> list[np.ndarray]:
    return [np.array([[-1, -w], [-w, -w], [-w, -1], [w, -1], [w, -w], [1, -w],
                      [1, w], [w, w], [w, 1], [-w, 1], [-w, w], [-1, w]], np.float64)]


def _draw_member(canvas: np.ndarray, spec: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draws one object of a family at a random pose/scale/position; returns its mask."""
    parts = _outline(spec, rng)
    scale = rng.uniform(0.12, 0.3) * size
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shear = np.eye(2) + rng.uniform(-0.25, 0.25, (2, 2))  # deformation
    centre = rng.uniform(scale, size - scale, 2)
    mask = np.zeros((size, size), np.uint8)
    for part in parts:
        jitter = 1 + rng.uniform(-0.06, 0.06, (len(part), 1))
        pts = (part * jitter) @ (rot @ shear).T * scale + centre
        layer = np.zeros_like(mask)
        cv2.fillPoly(layer, [np.round(pts * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
        mask ^= layer
    texture = _texture(spec, size, rng, angle)
    canvas[mask > 0] = texture[mask > 0]
    return mask


def _texture(spec: dict, size: int, rng: np.random.Generator, angle: float) -> np.ndarray:
    a, b = spec["palette"]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    period = spec["period"]
    kind = spec["texture"]
    if kind == "solid":
        pick = np.zeros_like(xx)
    elif kind == "stripes":
        u = np.cos(angle) * xx + np.sin(angle) * yy
        pick = (np.floor(u / period) % 2).astype(np.float32)
    elif kind == "checks":
        pick = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
    else:  # dots
        cx = (xx / period) % 1 - 0.5
        cy = (yy / period) % 1 - 0.5
        pick = (cx**2 + cy**2 < 0.09).astype(np.float32)
    shade = rng.uniform(0.85, 1.15)
    tex = (a[None, None] * (1 - pick[..., None]) + b[None, None] * pick[..., None]) * shade
    return np.clip(tex, 0, 255)


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A cluttered textured background: a colour gradient, clutter strokes, noise."""
    c0, c1 = rng.uniform(0, 255, (2, 3))
    g = np.linspace(0, 1, size, dtype=np.float32)
    direction = rng.uniform(0, 1)
    ramp = direction * g[None, :, None] + (1 - direction) * g[:, None, None]
    canvas = c0 * (1 - ramp) + c1 * ramp
    for _ in range(int(rng.integers(4, 10))):
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        p1 = tuple(int(v) for v in rng.integers(0, size, 2))
        p2 = tuple(int(v) for v in rng.integers(0, size, 2))
        if rng.uniform() < 0.5:
            cv2.line(canvas, p1, p2, colour, max(1, size // 48))
        else:
            cv2.rectangle(canvas, p1, p2, colour, -1 if rng.uniform() < 0.3 else max(1, size // 64))
    canvas += rng.normal(0, 12, canvas.shape)
    return canvas


def synthetic_image(
    seed: int, class_id: int, image_id: int, size: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """One RGB uint8 image `(size, size, 3)` of class `class_id` and its {0,1} mask."""
    rng = np.random.default_rng([seed, class_id, image_id + 1])
    canvas = _background(size, rng)
    spec = class_spec(seed, class_id)
    members = int(rng.integers(1, 3)) if rng.uniform() < 0.3 else 1
    distractors = int(rng.integers(1, 3)) if num_classes > 1 and rng.uniform() < 0.5 else 0
    order = ["member"] * members + ["distractor"] * distractors
    rng.shuffle(order)
    mask = np.zeros((size, size), np.uint8)
    for kind in order:
        if kind == "member":
            mask |= _draw_member(canvas, spec, size, rng)
        else:
            other = (class_id + int(rng.integers(1, num_classes))) % num_classes
            covered = _draw_member(canvas, class_spec(seed, other), size, rng)
            mask[covered > 0] = 0  # an occluded part of the class object is not visible
    image = cv2.GaussianBlur(np.clip(canvas, 0, 255).astype(np.uint8), (3, 3), 0)
    return image, mask


def synthetic_bank(
    num_classes: int = 64,
    images_per_class: int = 10,
    image_size: int = 224,
    seed: int = 0,
    first_class: int = 0,
) -> ImageBank:
    """Classes `first_class .. first_class+num_classes-1` of the synthetic family set.

    Distractors are drawn from the classes of this range. Class names are
    `synthetic_<id>`; the same (seed, id) always gives the same images.
    """
    names, images, masks = [], [], []
    total = first_class + num_classes
    for c in range(first_class, total):
        pairs = [synthetic_image(seed, c, i, image_size, total) for i in range(images_per_class)]
        # An object fully occluded by distractors leaves an empty mask: draw again.
        pairs = [p if p[1].any() else synthetic_image(seed, c, i + 1000, image_size, total)
                 for i, p in enumerate(pairs)]
        names.append(f"synthetic_{c:04d}")
        images.append(np.stack([x for x, _ in pairs]))
        masks.append(np.stack([y for _, y in pairs]))
    return ImageBank.from_lists(names, images, masks)


def synthetic_splits(num_classes: int, seed: int, image_size: int, images_per_class: int = 10) -> dict[str, ImageBank]:
    """Train / val / test banks of disjoint synthetic classes (700/60/240 proportions)."""
    n_val = max(2, round(0.06 * num_classes))
    n_test = max(2, round(0.24 * num_classes))
    n_train = num_classes - n_val - n_test
    if n_train < 2:
        raise ValueError(f"need more synthetic classes than {num_classes} for a train/val/test split")
    bank = synthetic_bank(num_classes, images_per_class, image_size, seed)
    names = bank.class_names
    return {
        "train": bank.subset(names[:n_train]),
        "val": bank.subset(names[n_train : n_train + n_val]),
        "test": bank.subset(names[n_train + n_val :]),
    }


def write_fss_layout(bank: ImageBank, out_dir: str) -> None:
    """Writes a bank as `out_dir/<class>/<n>.jpg` + `<n>.png` (masks 0/255), like FSS-1000."""
    for c, name in enumerate(bank.class_names):
        folder = os.path.join(out_dir, name)
        os.makedirs(folder, exist_ok=True)
        for i in range(bank.counts[c]):
            cv2.imwrite(os.path.join(folder, f"{i + 1}.jpg"), cv2.cvtColor(bank.images[c, i], cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(os.path.join(folder, f"{i + 1}.png"), bank.masks[c, i] * 255)
