"""Segmentation losses and IoU metrics: the paper's (eq. 9, the mean of per-query IoUs, with
confidence intervals) and the field's (HSNet's protocol: per class, intersections and unions summed
over its episodes; FB-IoU)."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

THRESHOLDS = (0.5, 0.35)


def full_precision(x: tf.Tensor) -> tf.Tensor:
    """`x` in float32, or float64 if it already is (half precision never reaches a loss)."""
    x = tf.convert_to_tensor(x)
    return x if x.dtype == tf.float64 else tf.cast(x, tf.float32)


def bce_loss(logits: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
    """Mean per-pixel sigmoid cross-entropy (the paper's loss), in full precision."""
    logits = full_precision(logits)
    labels = tf.cast(masks, logits.dtype)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))


def non_finite(probabilities: tf.Tensor) -> tf.Tensor:
    """Per image, whether any predicted value is NaN or infinite (an overflowed adaptation).

    Shapes: `(n, H, W, 1)` -> `(n,)` bool.
    """
    return tf.reduce_any(~tf.math.is_finite(full_precision(probabilities)), axis=[1, 2, 3])


def soft_iou(probabilities: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
    """Per-image soft IoU, eq. 9: sum(P*T) / sum(P + T - P*T); 1 where both are empty; 0 where the
    prediction is not finite (a NaN would otherwise fail the union test and score 1).

    Shapes: `(n, H, W, 1)` -> `(n,)`.
    """
    p = full_precision(probabilities)
    t = tf.cast(masks, p.dtype)
    inter = tf.reduce_sum(p * t, axis=[1, 2, 3])
    union = tf.reduce_sum(p + t - p * t, axis=[1, 2, 3])
    score = tf.where(union > 0, inter / tf.maximum(union, 1e-12), tf.ones_like(union))
    return tf.where(non_finite(p), tf.zeros_like(score), score)


def binary_iou(probabilities: tf.Tensor, masks: tf.Tensor, threshold: float) -> tf.Tensor:
    """Per-image IoU of the mask `probabilities > threshold`; 1 where both are empty; 0 where the
    prediction is not finite (NaN > threshold is false: it would pass as an empty mask)."""
    score = soft_iou(tf.cast(probabilities > threshold, tf.float32), masks)
    return tf.where(non_finite(probabilities), tf.zeros_like(score), score)


def mean_with_ci(values, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation confidence interval."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float("nan")
    z = {0.95: 1.959964, 0.99: 2.575829, 0.9: 1.644854}[confidence]
    return float(v.mean()), float(z * v.std(ddof=1) / math.sqrt(v.size))


def areas(predicted: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None) -> np.ndarray:
    """Intersections and unions of the background and the foreground of one prediction, as HSNet's
    protocol counts them: pixels under `ignore` (a label map's 255) count in neither.

    Args:
        predicted: the predicted mask `(H, W)`, bool or {0, 1}; None for a prediction that was not
            finite, counted as wrong at every pixel.
        truth: the true mask `(H, W)`, bool or {0, 1}.
        ignore: pixels to leave out `(H, W)` bool, or None.

    Returns:
        int64 `(2, 2)`: [[background intersection, foreground intersection],
        [background union, foreground union]].
    """
    truth = np.asarray(truth).astype(bool)
    valid = np.ones(truth.shape, bool) if ignore is None else ~np.asarray(ignore, bool)
    if predicted is None:
        n = int(valid.sum())
        return np.array([[0, 0], [n, n]], np.int64)
    predicted = np.asarray(predicted).astype(bool)
    counts = np.empty((2, 2), np.int64)
    for k, (p, t) in enumerate(((~predicted, ~truth), (predicted, truth))):
        counts[0, k] = np.count_nonzero(p & t & valid)
        counts[1, k] = np.count_nonzero((p | t) & valid)
    return counts


def areas_at_thresholds(probabilities: np.ndarray, truth: np.ndarray,
                        ignore: np.ndarray | None = None) -> dict[float, np.ndarray]:
    """{threshold: `areas(probabilities > threshold, truth, ignore)`} at each of THRESHOLDS; a
    prediction holding NaN or inf anywhere is counted as wrong at every pixel. Shapes: `(H, W)` each."""
    finite = bool(np.isfinite(probabilities).all())
    return {t: areas(probabilities > t if finite else None, truth, ignore) for t in THRESHOLDS}


class SummedIoU:
    """The field's scores of a set of episodes: per class, the intersections and unions of all its
    queries summed, then divided (HSNet's protocol, which HSNet, VAT, DCAMA, Matcher and PATNet report).

        scores = SummedIoU()
        scores.add("cat", areas(prediction > 0.5, mask, ignore))
        scores.miou(), scores.fb_iou()
    """

    def __init__(self):
        self.counts: dict[str, np.ndarray] = {}

    def add(self, class_name: str, counts: np.ndarray) -> None:
        """Adds one query's `areas(...)` to its class."""
        self.counts[class_name] = self.counts.get(class_name, np.zeros((2, 2), np.int64)) + counts

    def per_class(self) -> dict[str, float]:
        """Each class's foreground IoU: summed intersection / summed union (0 when both are empty, as
        HSNet divides by at least 1)."""
        return {name: float(c[0, 1] / max(c[1, 1], 1)) for name, c in self.counts.items()}

    def miou(self) -> float:
        """mIoU: the mean over classes of each class's summed foreground IoU."""
        return float(np.mean(list(self.per_class().values()))) if self.counts else float("nan")

    def fb_iou(self) -> float:
        """FB-IoU: the mean of the background's and the foreground's IoU, each summed over every class."""
        if not self.counts:
            return float("nan")
        total = sum(self.counts.values())
        return float(np.mean(total[0] / np.maximum(total[1], 1)))
