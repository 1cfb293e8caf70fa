"""TF Serving SavedModels with the 1-shot adaptation inside the graph.

Layout: `<export_base>/<version>/` with integer versions (TF Serving's
`model_base_path` is `<export_base>`). Signatures:

- `serving_default`: support_images uint8 `[k,H,W,3]`, support_masks float32
  `[k,H,W]` in [0, 1], query_images uint8 `[n,H',W',3]`, threshold float32
  `[t]` (send `[]` for 0.5, or `[0.35]`) -> probabilities float32 `[n,H',W']`
  and masks uint8 `[n,H',W']`. The inner loop (with learned rates and per-step norms)
  runs in the graph; images of any size are resized to the training size and
  the masks come back at the query's own size.
- `adapt_and_segment_float`: the same with float32 images in [0, 1].
- `segment_initial`: query_images uint8, threshold -> the same outputs from
  the meta-learned initialisation alone (no adaptation).
- `adapt` (support_images uint8, support_masks) -> fast_weights float32 `[P]`
  (the adapted weights, flattened) and `segment_adapted` (fast_weights,
  query_images uint8, threshold) -> the outputs above: adapt once, then
  segment any number of query batches (what `meta_drn_tf.Segmenter` does).

Malformed requests (empty support, an empty support mask, sizes that do not
match, mask values or float pixels outside [0, 1], non-finite fast weights,
more than one threshold) fail with an InvalidArgument error naming the problem; wrong
ranks and dtypes are refused by the signature itself. A float16 export adapts
with the trained loss scale; an adaptation that overflows anyway fails with an
InvalidArgument error saying so, never silent all-zero masks.

The graphs are device-neutral by default: the stock kernel policy
(`kernels.py`: TensorFlow's own ops, which TF Serving runs with cuDNN on a GPU
and with its CPU kernels elsewhere); its dilated convolutions go through
space-to-batch (SpaceToBatchND/BatchToSpaceND around each one), because
TensorFlow's CPU kernels have no dilated convolution gradients. `kernels="gpu"`
writes the stock ops with dilated convolutions and their gradients as single
ops, which cuDNN runs as such: for GPU servers (a CPU server cannot adapt with
it). `kernels="cpu"` writes the CPU-tuned forms (faster on CPU servers, never
what a GPU should run). The SavedModel records which it holds: its `kernels`
variable ("stock", "gpu" or "cpu").
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil

import tensorflow as tf

from meta_drn_tf.meta import Adapter
from meta_drn_tf.network.config import NetworkConfig
from meta_drn_tf.network.model import build_meta_drn

DEFAULT_THRESHOLD = 0.5


class ServingModule(tf.Module):
    """The exported object: the network's weights, its learned extras, the serving functions."""

    def __init__(self, adapter: Adapter, network: NetworkConfig, inner_steps: int | None = None):
        super().__init__(name="meta_drn_segmenter")
        self.adapter = adapter
        self._size = network.image_size
        self._inner_steps = inner_steps or adapter.config.inner_steps
        # Saved with the model: which kernel forms its graphs hold, and what rebuilds its network
        # (`Segmenter.export_tflite`).
        policy = adapter.kernel_policy()
        self.kernels = tf.Variable("gpu" if policy.dilated_gradients_in_one_op else policy.name, trainable=False,
                                   name="kernels")
        self.image_size = tf.Variable(network.image_size, trainable=False, name="image_size")
        self.width = tf.Variable(network.width, trainable=False, dtype=tf.float32, name="width")

    def _resize(self, images: tf.Tensor) -> tf.Tensor:
        return tf.image.resize(images, [self._size, self._size], method="bilinear")

    def _outputs(self, logits: tf.Tensor, out_size: tf.Tensor, threshold: tf.Tensor) -> dict:
        # NaN fails both comparisons: a threshold outside (0, 1) would give all or no pixels, silently.
        checks = [tf.debugging.Assert(tf.reduce_all((threshold > 0.0) & (threshold < 1.0)),
                                      ["threshold values must lie strictly between 0 and 1, got", threshold]),
                  tf.debugging.Assert(tf.size(threshold) <= 1, ["send one threshold (or none for 0.5), got",
                                                                threshold])]
        with tf.control_dependencies(checks):
            threshold = tf.cond(tf.size(threshold) > 0, lambda: threshold[0],
                                lambda: tf.constant(DEFAULT_THRESHOLD))
        probabilities = tf.sigmoid(tf.image.resize(logits, out_size, method="bilinear"))[..., 0]
        return {"probabilities": probabilities, "masks": tf.cast(probabilities > threshold, tf.uint8)}

    def _adapt(self, support_images, support_masks) -> list[tf.Tensor]:
        """The fast weights adapted to a float support set (checked, resized to the training size)."""
        # Loaded signatures do not check ranks at run time; EnsureShape does.
        support_images = tf.ensure_shape(support_images, [None, None, None, 3], name="support_images_rank")
        support_masks = tf.ensure_shape(support_masks, [None, None, None], name="support_masks_rank")
        k = tf.shape(support_images)[0]
        checks = [
            tf.debugging.assert_positive(k, message="the support set is empty: send at least one image and mask"),
            tf.debugging.assert_all_finite(support_images, "support_images must be finite (no NaN or infinity)"),
            tf.debugging.assert_equal(tf.shape(support_masks), tf.shape(support_images)[:3],
                                      message="support_masks must be [k,H,W] with the support images' k, H and W"),
            tf.debugging.assert_greater_equal(tf.reduce_min(support_masks), 0.0,
                                              message="support_masks values must lie in [0, 1]"),
            tf.debugging.assert_less_equal(tf.reduce_max(support_masks), 1.0,
                                           message="support_masks values must lie in [0, 1]"),
            # An empty mask would adapt the network to find nothing: mark the object in every example.
            tf.debugging.Assert(tf.reduce_all(tf.reduce_max(support_masks, axis=[1, 2]) > 0.0),
                                ["a support mask is empty: mark the object in every example"]),
        ]
        with tf.control_dependencies(checks):
            support = self._resize(support_images)
            masks = tf.cast(self._resize(support_masks[..., None]) > 0.5, tf.float32)
        weights = self.adapter.adapt(support, masks, inner_steps=self._inner_steps)
        if self.adapter.config.precision != "float16":
            return weights
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(w)) for w in weights])
        check = tf.debugging.Assert(finite, ["float16 adaptation overflowed (non-finite fast weights): export "
                                             "with --precision=float32 or bfloat16, or lower the inner rate"])
        with tf.control_dependencies([check]):
            return [tf.identity(w) for w in weights]

    def _segment(self, weights, query_images, threshold) -> dict:
        """Outputs for float query images under `weights`, at the queries' own size."""
        query_images = tf.ensure_shape(query_images, [None, None, None, 3], name="query_images_rank")
        checks = [tf.debugging.assert_positive(tf.shape(query_images)[0], message="no query images"),
                  tf.debugging.assert_all_finite(query_images, "query_images must be finite (no NaN or infinity)")]
        with tf.control_dependencies(checks):
            queries = self._resize(query_images)
        return self._outputs(self.adapter.logits(weights, queries), tf.shape(query_images)[1:3], threshold)

    def _pixel_range(self, images, name: str) -> list:
        """Checks that float pixels are finite, then that they lie in [0, 1] (0-255 values would be taken
        as glaring white)."""
        images = tf.debugging.assert_all_finite(images, f"{name} must be finite (no NaN or infinity)")
        return [tf.debugging.assert_greater_equal(tf.reduce_min(images), 0.0, message=f"{name} must lie in [0, 1]"),
                tf.debugging.assert_less_equal(tf.reduce_max(images), 1.0, message=f"{name} must lie in [0, 1] "
                                               "(uint8 pixels divided by 255)")]

    def _adapt_and_segment(self, support_images, support_masks, query_images, threshold):
        return self._segment(self._adapt(support_images, support_masks), query_images, threshold)

    def _flatten(self, weights) -> tf.Tensor:
        return tf.concat([tf.reshape(tf.cast(w, tf.float32), [-1]) for w in weights], 0)

    def _unflatten(self, flat) -> list[tf.Tensor]:
        variables = self.adapter.model.trainable_variables
        sizes = [int(v.shape.num_elements()) for v in variables]
        flat = tf.debugging.assert_all_finite(tf.ensure_shape(flat, [sum(sizes)], name="fast_weights_size"),
                                              "fast_weights must be finite (no NaN or infinity): send what adapt "
                                              "returned")
        parts = tf.split(flat, sizes)
        return [tf.cast(tf.reshape(p, v.shape), v.dtype) for p, v in zip(parts, variables)]

    def _images(self, uint8_images):
        return tf.cast(uint8_images, tf.float32) / 255.0

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.uint8, name="support_images"),
        tf.TensorSpec([None, None, None], tf.float32, name="support_masks"),
        tf.TensorSpec([None, None, None, 3], tf.uint8, name="query_images"),
        tf.TensorSpec([None], tf.float32, name="threshold"),
    ], autograph=False)
    def serving_default(self, support_images, support_masks, query_images, threshold):
        return self._adapt_and_segment(self._images(support_images), support_masks,
                                       self._images(query_images), threshold)

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.float32, name="support_images"),
        tf.TensorSpec([None, None, None], tf.float32, name="support_masks"),
        tf.TensorSpec([None, None, None, 3], tf.float32, name="query_images"),
        tf.TensorSpec([None], tf.float32, name="threshold"),
    ], autograph=False)
    def adapt_and_segment_float(self, support_images, support_masks, query_images, threshold):
        # Only here can pixels leave [0, 1] (the uint8 signatures divide by 255 themselves).
        with tf.control_dependencies(self._pixel_range(support_images, "support_images")
                                     + self._pixel_range(query_images, "query_images")):
            return self._adapt_and_segment(support_images, support_masks, query_images, threshold)

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.uint8, name="query_images"),
        tf.TensorSpec([None], tf.float32, name="threshold"),
    ], autograph=False)
    def segment_initial(self, query_images, threshold):
        return self._segment(self.adapter.initial_weights(), self._images(query_images), threshold)


    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.uint8, name="support_images"),
        tf.TensorSpec([None, None, None], tf.float32, name="support_masks"),
    ], autograph=False)
    def adapt(self, support_images, support_masks):
        return {"fast_weights": self._flatten(self._adapt(self._images(support_images), support_masks))}

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.float32, name="fast_weights"),
        tf.TensorSpec([None, None, None, 3], tf.uint8, name="query_images"),
        tf.TensorSpec([None], tf.float32, name="threshold"),
    ], autograph=False)
    def segment_adapted(self, fast_weights, query_images, threshold):
        return self._segment(self._unflatten(fast_weights), self._images(query_images), threshold)


# An export's kernel choice -> the device whose stock or CPU forms its graphs hold.
EXPORT_KERNELS = {"stock": "any", "gpu": "gpu", "cpu": "cpu"}
SIGNATURES = ("serving_default", "adapt_and_segment_float", "segment_initial", "adapt", "segment_adapted")


def next_version(export_base: str) -> int:
    """The next free integer version under `export_base` (1 for a new model)."""
    if not os.path.isdir(export_base):
        return 1
    versions = [int(d) for d in os.listdir(export_base) if re.fullmatch(r"\d+", d)]
    return max(versions, default=0) + 1


def export(
    learner: Adapter,
    export_base: str,
    network: NetworkConfig,
    inner_steps: int | None = None,
    precision: str | None = None,
    kernels: str = "stock",
) -> str:
    """Writes a TF Serving SavedModel of `learner` at `<export_base>/<next version>/`.

    Args:
        learner: the trained learner (its model's weights, Meta-SGD's rates).
        export_base: TF Serving's model_base_path.
        network: the learner's network (the run's `network` section: the size it was trained at, its width).
        inner_steps: test-time inner steps (default: training's).
        precision: compute precision of the export (default: the learner's).
        kernels: one of `EXPORT_KERNELS`: "stock" (device-neutral: TensorFlow's own ops), "gpu" (the
            same with dilated convolutions as single ops: GPU servers) or "cpu" (the CPU-tuned forms).

    Returns:
        The version directory written.
    """
    if kernels not in EXPORT_KERNELS:
        raise ValueError(f"an export's kernels are one of {EXPORT_KERNELS}, got {kernels!r}")
    module = serving_module(learner, network, inner_steps, precision,
                            kernels="cpu" if kernels == "cpu" else "stock", device=EXPORT_KERNELS[kernels])
    partial = os.path.join(export_base, f".export.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    # The adaptation's gradients are ops of the signatures' graphs already; the custom gradients'
    # own gradient functions, which a server never runs, would triple the time to save.
    try:
        tf.saved_model.save(module, partial, signatures={name: getattr(module, name) for name in SIGNATURES},
                            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
        return _publish(partial, export_base)
    except BaseException:  # a full disk, SIGTERM, Ctrl-C: no half-written SavedModel stays behind
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _publish(partial: str, export_base: str) -> str:
    """Renames a written SavedModel to the next free version: TF Serving never sees a half-written
    one, and two exports at once take two versions (a rename onto a taken version fails)."""
    while True:
        final = os.path.join(export_base, str(next_version(export_base)))
        try:
            os.rename(partial, final)
            return final
        except OSError:
            if not os.path.isdir(final):
                raise


def serving_module(
    learner: Adapter,
    network: NetworkConfig,
    inner_steps: int | None = None,
    precision: str | None = None,
    kernels: str = "auto",
    device: str | None = None,
) -> ServingModule:
    """What `export` saves, in memory: the adaptation side of `learner` in the export precision, with
    the kernel policy `kernels` chooses for `device` (default: this process's)."""
    precision = precision or learner.config.precision
    config = dataclasses.replace(learner.config, precision=precision, kernels=kernels)
    # A fresh copy in the export precision (the source may be distributed or float16).
    adapter = Adapter(build_meta_drn(network, config.dtype_policy), config, device=device)
    adapter.model.set_weights(learner.model.get_weights())
    for target, source in zip(adapter.extra_variables, learner.extra_variables, strict=True):
        target.assign(source)
    if precision == "float16" and learner.config.precision == "float16":
        adapter.loss_scale.assign(learner.loss_scale)  # the trained scale, not a fresh 2**15
    return ServingModule(adapter, network, inner_steps)
