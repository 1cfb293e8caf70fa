"""Drawings like the paper's Fig. 4: support with its mask in green, queries
with the predicted mask in red and their IoU written on them.

The same drawing feeds the TensorBoard image grid of `train.py` and
`tools/visualize.py`.
"""

from __future__ import annotations

import cv2
import numpy as np

from meta_drn_tf.paths import write_atomically

GREEN = (0, 200, 0)
RED = (230, 0, 0)
BLUE = (0, 90, 255)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """RGB float [0, 1] or uint8 -> uint8."""
    if image.dtype == np.uint8:
        return image
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def overlay(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], alpha: float = 0.5) -> np.ndarray:
    """The image with `mask > 0.5` tinted in `colour` and outlined."""
    image = to_uint8(image).copy()
    binary = (np.squeeze(mask) > 0.5).astype(np.uint8)
    tint = np.array(colour, np.float32)
    image[binary > 0] = ((1 - alpha) * image[binary > 0] + alpha * tint).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(image, contours, -1, colour, max(1, image.shape[0] // 112))
    return image


def label(image: np.ndarray, text: str) -> np.ndarray:
    """`text` in the top-left corner on a dark band, readable at any size."""
    image = image.copy()
    scale = max(0.3, image.shape[0] / 400)
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(image, (0, 0), (w + 4, h + base + 4), (0, 0, 0), -1)
    cv2.putText(image, text, (2, h + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return image


def task_row(
    support_image: np.ndarray,
    support_mask: np.ndarray,
    query_images: np.ndarray,
    predictions: np.ndarray,
    ious: np.ndarray | None = None,
    query_masks: np.ndarray | None = None,
    title: str | None = None,
    threshold: float = 0.5,
) -> np.ndarray:
    """One row of Fig. 4: support (green mask), then each query (red predicted mask, IoU).

    With `query_masks`, each query is followed by its ground truth (blue).
    """
    tiles = [label(overlay(support_image, support_mask, GREEN), title or "support")]
    for i, (image, prob) in enumerate(zip(query_images, predictions)):
        tile = overlay(image, np.squeeze(prob) > threshold, RED)
        tiles.append(label(tile, f"IoU {ious[i]:.2f}") if ious is not None else tile)
        if query_masks is not None:
            tiles.append(label(overlay(image, query_masks[i], BLUE), "truth"))
    return np.concatenate(tiles, axis=1)


def episode_grid(episodes: list[dict], queries: int = 3, truth: bool = True, threshold: float = 0.5) -> np.ndarray:
    """One `task_row` per evaluated episode (a task dict with its "probabilities" and "class_name"),
    showing its first `queries` queries, each with its IoU at `threshold` (and the truth)."""
    rows = []
    for e in episodes:
        predicted = np.squeeze(e["probabilities"][:queries], -1) > threshold
        target = np.squeeze(e["query_masks"][:queries], -1) > 0.5
        union = np.logical_or(predicted, target).sum(axis=(1, 2))
        ious = np.where(union > 0, np.logical_and(predicted, target).sum(axis=(1, 2)) / np.maximum(union, 1), 1.0)
        rows.append(task_row(e["support_images"][0], e["support_masks"][0], e["query_images"][:queries],
                             e["probabilities"][:queries], ious, e["query_masks"][:queries] if truth else None,
                             title=e["class_name"], threshold=threshold))
    return grid(rows)


def grid(rows: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Stacks rows of possibly different widths on a white canvas."""
    width = max(r.shape[1] for r in rows)
    out = []
    for r in rows:
        pad = np.full((r.shape[0], width - r.shape[1], 3), 255, np.uint8)
        out += [np.concatenate([r, pad], axis=1), np.full((gap, width, 3), 255, np.uint8)]
    return np.concatenate(out[:-1], axis=0)


def save_png(path: str, image: np.ndarray) -> None:
    """Writes an RGB `(H, W, 3)` or grey `(H, W)` uint8 image, atomically: an interrupted write
    leaves no file at `path`, never a truncated one."""
    ok, data = cv2.imencode(".png", image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: cannot encode the PNG")
    write_atomically(path, data.tobytes())


def side_by_side(tiles: list[np.ndarray]) -> np.ndarray:
    """RGB tiles of any sizes in one row, each scaled to the first tile's height."""
    height = tiles[0].shape[0]
    scaled = [t if t.shape[0] == height else
              cv2.resize(t, (max(1, round(t.shape[1] * height / t.shape[0])), height), interpolation=cv2.INTER_AREA)
              for t in tiles]
    return np.concatenate(scaled, axis=1)


# Distinguishable line colours (RGB), in order.
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127))


def line_chart(series: dict[str, tuple[list[float], list[float]]], title: str, x_label: str, y_label: str,
               size: tuple[int, int] = (520, 820)) -> np.ndarray:
    """A plot of named (x, y) curves with axes, ticks and a legend, as an RGB uint8 image `size` (H, W)."""
    height, width = size
    image = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 70, 170, 40, 50
    xs = [x for x, _ in series.values() for x in x] or [0.0, 1.0]
    ys = [y for _, y in series.values() for y in y] or [0.0, 1.0]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1e-9)
    y0, y1 = min(0.0, min(ys)), max(max(ys), 1e-9) * 1.05

    def point(x, y):
        return (int(left + (x - x0) / (x1 - x0) * (width - left - right)),
                int(height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)))

    font, black, grey = cv2.FONT_HERSHEY_SIMPLEX, (0, 0, 0), (215, 215, 215)
    for i in range(6):  # horizontal grid lines with y ticks
        y = y0 + (y1 - y0) * i / 5
        p = point(x0, y)
        cv2.line(image, p, point(x1, y), grey, 1)
        cv2.putText(image, f"{y:.2f}", (8, p[1] + 4), font, 0.4, black, 1, cv2.LINE_AA)
    for i in range(6):
        x = x0 + (x1 - x0) * i / 5
        p = point(x, y0)
        cv2.putText(image, f"{x:.0f}", (p[0] - 12, p[1] + 18), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.rectangle(image, point(x0, y1), point(x1, y0), black, 1)
    cv2.putText(image, title, (left, 25), font, 0.55, black, 1, cv2.LINE_AA)
    cv2.putText(image, x_label, (width // 2 - 40, height - 12), font, 0.45, black, 1, cv2.LINE_AA)
    cv2.putText(image, y_label, (left + 5, top + 15), font, 0.45, black, 1, cv2.LINE_AA)
    for n, (name, (x, y)) in enumerate(series.items()):
        colour = PALETTE[n % len(PALETTE)]
        points = np.array([point(a, b) for a, b in zip(x, y)], np.int32)
        cv2.polylines(image, [points], False, colour, 2, cv2.LINE_AA)
        for p in points:
            cv2.circle(image, tuple(int(v) for v in p), 3, colour, -1, cv2.LINE_AA)
        legend_y = top + 20 + 22 * n
        cv2.line(image, (width - right + 12, legend_y - 4), (width - right + 36, legend_y - 4), colour, 3)
        cv2.putText(image, name, (width - right + 42, legend_y), font, 0.45, black, 1, cv2.LINE_AA)
    return image
