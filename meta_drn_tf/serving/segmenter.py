"""`Segmenter`: one labelled example of a new class in, masks for more images out (NumPy in, NumPy out).

    from meta_drn_tf import Segmenter

    segmenter = Segmenter.load("runs/quickstart")      # a training run, or a SavedModel ("saved_models/meta_drn")
    segmenter.adapt(support_images, support_masks)     # uint8 (k, H, W, 3) RGB; (k, H, W) masks in {0, 1}
    probabilities = segmenter.segment(images)          # uint8 (n, H', W', 3) -> float32 (n, H', W')
    masks = probabilities > 0.5
    segmenter.export_tflite("cat.tflite", quantize="int8")   # the adapted network, for phones

Both sources run the exported graph functions (`saved_model.ServingModule`): a
run's in memory, a SavedModel's as TF Serving loads them, so this is also a
tested client of the served model. `adapt` runs the inner loop once;
`segment` then applies the adapted weights to any number of batches. Images
of any size are resized to the training size inside the graph and the
probabilities come back at each image's own size. A SavedModel exported
before the `adapt` signature existed re-adapts inside every `segment` call
(`serving_default`): the same result, more work. `export_tflite` writes the
adapted network as a TensorFlow Lite file (`serving.tflite`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import numpy as np

from meta_drn_tf.errors import ConfigError
from meta_drn_tf.runs.config import FLAGS_FILE


def saved_model_version(path: str) -> str:
    """`path` if it is a SavedModel, else the newest integer version under it (TF Serving's layout)."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = sorted((int(d) for d in os.listdir(path) if re.fullmatch(r"\d+", d)) if os.path.isdir(path) else [])
    for version in reversed(versions):
        candidate = os.path.join(path, str(version))
        if os.path.isfile(os.path.join(candidate, "saved_model.pb")):
            return candidate
    raise ConfigError(f"--model {path}: neither a training run ({FLAGS_FILE}) nor a SavedModel "
                      "(saved_model.pb, or integer version folders holding one)")


def stack_examples(images: list[np.ndarray], masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Labelled examples as one `(k, H, W, 3)` and one `(k, H, W)` array at the first example's size
    (the others resized: images by area, masks to the nearest pixel)."""
    import cv2

    h, w = images[0].shape[:2]
    return (np.stack([cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA) for image in images]),
            np.stack([cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST) for mask in masks]))


class Segmenter:
    """Adapts a meta-learned Meta-DRN to a support set once, then segments images.

    Args:
        module: the graph functions - a `saved_model.ServingModule` or a loaded SavedModel.
        description: where they came from (shown by the command-line app).
    """

    def __init__(self, module: object, description: str):
        self._module = module
        self.description = description
        self._support: tuple | None = None
        self._fast_weights = None

    @classmethod
    def from_run(cls, model_dir: str, checkpoint: str = "best", inner_steps: int | None = None,
                 kernels: str = "auto") -> Segmenter:
        """A training run's network (its best or latest checkpoint) and test-time inner loop, in the
        kernel forms `kernels` chooses for this machine ("auto", "stock" or "cpu")."""
        from meta_drn_tf.runs import learners
        from meta_drn_tf.serving import saved_model

        learner, config = learners.restore_learner(model_dir, checkpoint)
        module = saved_model.serving_module(learner, config.network,
                                            inner_steps=inner_steps or config.trainer.eval_inner_steps,
                                            kernels=kernels)
        return cls(module, f"run {model_dir} ({config.meta.algorithm}, {checkpoint} checkpoint, "
                           f"{config.network.image_size}px)")

    @classmethod
    def from_saved_model(cls, path: str, trust: bool = False) -> Segmenter:
        """An exported SavedModel: a version folder, or a model_base_path (its newest version).

        A SavedModel is a program: unless `trust`, its graphs are read first, without running anything,
        and one holding an op no export of this project holds is refused (`trust.UntrustedModel`).
        """
        import tensorflow as tf
        from absl import logging

        from meta_drn_tf.serving import trust as trusted

        version = saved_model_version(path)
        if not trust:
            trusted.check_saved_model(version, flag="--trust_model (trust=True from Python)")
        # Exports leave out their custom gradients' own gradient functions on purpose (a server never
        # differentiates the adaptation): TensorFlow's warning about each signature is noise here.
        verbosity = logging.get_verbosity()
        logging.set_verbosity(logging.ERROR)
        try:
            module = tf.saved_model.load(version)
        except (OSError, IndexError, ValueError, tf.errors.OpError) as e:  # a missing or truncated file
            reason = (getattr(e, "message", None) or str(e) or type(e).__name__).splitlines()[0][:160]
            raise ConfigError(f"--model {version}: the SavedModel is damaged ({reason}); export it again "
                              "from its training run (python -m meta_drn_tf.export) or give another "
                              "version") from None
        finally:
            logging.set_verbosity(verbosity)
        # Exports of 0.1.0 (kept loading until 1.0, with the adapt and network branches below; tested on
        # tests/data/legacy_0.1.0) record no kernel forms, no adapt signature and no network size.
        kernels = f" ({module.kernels.numpy().decode()} kernels)" if hasattr(module, "kernels") else ""
        return cls(module, f"SavedModel {version}{kernels}")

    @classmethod
    def load(cls, path: str, checkpoint: str = "best", kernels: str = "auto", trust: bool = False) -> Segmenter:
        """A training run if `path` holds one (in the kernel forms `kernels` chooses), else a SavedModel
        (whose forms were chosen at export; refused when it holds ops no export of this project holds,
        unless `trust`: see `from_saved_model`)."""
        if os.path.isfile(os.path.join(path, FLAGS_FILE)):
            return cls.from_run(path, checkpoint, kernels=kernels)
        if not os.path.exists(path):
            raise ConfigError(f"--model {path}: no such file or directory")
        return cls.from_saved_model(path, trust=trust)

    def copy(self) -> Segmenter:
        """A segmenter on the same graph functions with no adaptation (one per user of a shared model)."""
        return Segmenter(self._module, self.description)

    def adapt(self, images: np.ndarray, masks: np.ndarray) -> Segmenter:
        """Adapts to labelled examples: uint8 RGB `(k, H, W, 3)` and masks `(k, H, W)` in [0, 1].

        One example may be passed without the leading k axis. Returns self.
        """
        images, masks = np.asarray(images), np.asarray(masks, np.float32)
        if images.ndim == 3:
            images, masks = images[None], masks[None]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"support images must be uint8 (k, H, W, 3), got {images.dtype} {images.shape}")
        if masks.shape != images.shape[:3]:
            raise ValueError(f"support masks must be (k, H, W) = {images.shape[:3]}, got {masks.shape}")
        if masks.min() < 0 or masks.max() > 1:
            raise ValueError("support mask values must lie in [0, 1]")
        import tensorflow as tf

        self._support = (tf.constant(images), tf.constant(masks))
        has_adapt = hasattr(self._module, "adapt")  # 0.1.0 exports (until 1.0): adapt with every segment
        self._fast_weights = self._module.adapt(*self._support)["fast_weights"] if has_adapt else None
        return self

    def segment(self, images: np.ndarray) -> np.ndarray:
        """Foreground probabilities float32 `(n, H, W)` of uint8 RGB images `(n, H, W, 3)` of one size."""
        if self._support is None:
            raise RuntimeError("call adapt() with at least one labelled example first")
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (n, H, W, 3), got {images.dtype} {images.shape}")
        import tensorflow as tf

        queries, threshold = tf.constant(images), tf.constant([], tf.float32)
        if self._fast_weights is not None:
            out = self._module.segment_adapted(self._fast_weights, queries, threshold)
        else:
            out = self._module.serving_default(*self._support, queries, threshold)
        return out["probabilities"].numpy()

    @property
    def network(self):
        """The `NetworkConfig` of the network: its training size S (its input is S x S) and width."""
        from meta_drn_tf.network.config import NetworkConfig

        if not hasattr(self._module, "width"):  # 0.1.0 exports (until 1.0)
            raise ConfigError(f"{self.description} does not record its network's size (exported before "
                              "TFLite support): export it again with python -m meta_drn_tf.export")
        return NetworkConfig(int(self._module.image_size.numpy()), float(self._module.width.numpy()))

    @property
    def image_size(self) -> int:
        """The training size S: the network's input is S x S."""
        return self.network.image_size

    def adapted_network(self) -> tuple:
        """The network at the training size and its adapted weights, `(keras.Model, [np.ndarray])`
        in the order of `model.trainable_variables` (what `export_tflite` folds into a file)."""
        if self._support is None:
            raise RuntimeError("call adapt() with at least one labelled example first")
        from meta_drn_tf.network.model import build_meta_drn

        model = build_meta_drn(self.network)
        fast = self._fast_weights if self._fast_weights is not None else self._module.adapt(*self._support)[
            "fast_weights"]
        shapes = [v.shape for v in model.trainable_variables]
        parts = np.split(fast.numpy(), np.cumsum([int(np.prod(shape)) for shape in shapes])[:-1])
        return model, [part.reshape(shape) for part, shape in zip(parts, shapes)]

    def export_tflite(self, path: str, quantize: str = "none",
                      progress: Callable[[int, int], None] | None = None) -> str:
        """Writes the adapted network as a TensorFlow Lite file; returns `path`.

        The file takes one uint8 RGB image `[1, S, S, 3]` at the training size S (resize other
        sizes first) and returns float32 probabilities `[1, S, S]`; no adaptation runs on the
        device. `quantize`: "none", "float16", "int8" or "int16x8" (`meta_drn_tf.serving.tflite`);
        int16x8's ranges are calibrated on the examples given to `adapt` and augmentations of them
        (`progress(done, total)` is called after each one: minutes for a 224 px network on a CPU).
        """
        model, weights = self.adapted_network()
        from meta_drn_tf import paths
        from meta_drn_tf.serving import tflite

        calibration = tflite.calibration_images(self._support[0].numpy(), self.image_size) if (
            quantize == "int16x8") else None
        paths.write_atomically(path, tflite.convert(model, weights, quantize, calibration, progress))
        return path
