"""Training augmentation of the paper (§V-B): flip, rotate, zoom, warp, lighting.

The paper names fastai's transforms; the ranges here are fastai's defaults
(rotate ±10°, zoom up to 1.1, perspective warp 0.2, lighting 0.2). Flip,
rotation, zoom and warp are composed into *one* projective transform per
image, applied to the image (bilinear) and to its mask (nearest neighbour, so
masks stay binary) with the same op Keras's RandomRotation/RandomZoom/
RandomPerspective use (ImageProjectiveTransformV3). Lighting touches the image
only. Randomness is stateless, keyed by the caller, so a task's augmentation
is a pure function of (seed, task index) - what makes resumed runs exact;
Keras's preprocessing layers draw from a stateful SeedGenerator instead.
"""

from __future__ import annotations

import math

import tensorflow as tf

MAX_ROTATE_DEGREES = 10.0
MAX_ZOOM = 1.1
MAX_WARP = 0.2
MAX_LIGHTING = 0.2


def random_projective_transforms(n: int | tf.Tensor, height: int, width: int, key: tf.Tensor) -> tf.Tensor:
    """`(n, 8)` projective transforms (output -> input pixel maps) of random flip/rotate/zoom/warp."""
    keys = tf.random.experimental.stateless_split(key, 5)
    flip = tf.where(tf.random.stateless_uniform([n], keys[0]) < 0.5, -1.0, 1.0)
    angle = tf.random.stateless_uniform([n], keys[1], -1.0, 1.0) * (MAX_ROTATE_DEGREES * math.pi / 180)
    zoom = tf.random.stateless_uniform([n], keys[2], 1.0, MAX_ZOOM)
    warp = tf.random.stateless_uniform([n, 2], keys[3], -1.0, 1.0) * MAX_WARP
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    zero, one = tf.zeros([n]), tf.ones([n])
    # Centred coordinates: u = (x - cx) / cx. In them: A = R(angle) / zoom * flip_x,
    # and the perspective row [wx, wy, 1] tilts the plane (fastai's "warp").
    a = tf.stack([cos * flip, -sin, zero, sin * flip, cos, zero, warp[:, 0] * flip, warp[:, 1], one], 1)
    a = tf.reshape(a, [n, 3, 3])
    to_centred = tf.constant([[1 / cx, 0, -1.0], [0, 1 / cy, -1.0], [0, 0, 1]], tf.float32)
    from_centred = tf.constant([[cx, 0, cx], [0, cy, cy], [0, 0, 1]], tf.float32)
    m = tf.linalg.matmul(tf.linalg.matmul(from_centred[None], a), to_centred[None])
    m = m / m[:, 2:3, 2:3]
    return tf.reshape(m, [n, 9])[:, :8]


def apply_transforms(images: tf.Tensor, transforms: tf.Tensor, interpolation: str) -> tf.Tensor:
    """Warps `(n, H, W, C)` float images with `(n, 8)` transforms (edges reflected)."""
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation=interpolation,
        fill_mode="REFLECT",
    )


def random_lighting(images: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """Random brightness and contrast per image, results clipped to [0, 1]."""
    n = tf.shape(images)[0]
    keys = tf.random.experimental.stateless_split(key, 2)
    brightness = tf.random.stateless_uniform([n, 1, 1, 1], keys[0], -0.5, 0.5) * MAX_LIGHTING
    log_contrast = tf.random.stateless_uniform([n, 1, 1, 1], keys[1], -1.0, 1.0) * math.log(1 + MAX_LIGHTING)
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    return tf.clip_by_value((images - mean) * tf.exp(log_contrast) + mean + brightness, 0.0, 1.0)


def augment_task(images: tf.Tensor, masks: tf.Tensor, key: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Augments `(n, H, W, 3)` images in [0, 1] and their `(n, H, W, 1)` binary masks."""
    keys = tf.random.experimental.stateless_split(key, 2)
    height, width = images.shape[1], images.shape[2]
    transforms = random_projective_transforms(tf.shape(images)[0], height, width, keys[0])
    images = apply_transforms(images, transforms, "BILINEAR")
    masks = apply_transforms(masks, transforms, "NEAREST")
    return random_lighting(images, keys[1]), masks
