"""Segmentation losses and IoU metrics (paper eq. 9), with confidence intervals."""

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
