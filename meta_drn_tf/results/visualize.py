"""Drawings like the paper's Fig. 4: support with its mask in green, queries
with the predicted mask in red and their IoU written on them.

The same drawing feeds the TensorBoard image grid of `train.py` and
`tools/draw_fig4.py`.
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
    """A plot of named (x, y) curves with axes, ticks and a legend, as an RGB uint8 image `size` (H, W).

    Drawn by matplotlib (its Agg canvas: no display, no pyplot state), which picks readable ticks.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    figure = Figure(figsize=(size[1] / dpi, size[0] / dpi), dpi=dpi, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for n, (name, (x, y)) in enumerate(series.items()):
        axes.plot(x, y, color=np.array(PALETTE[n % len(PALETTE)]) / 255, linewidth=2, marker="o", markersize=3,
                  label=name)
    axes.set_title(title)
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.grid(True, color="0.85")
    if series:
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
