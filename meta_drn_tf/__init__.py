"""meta_drn_tf: meta-learned 1-shot image segmentation (Meta-DRN) in TensorFlow / Keras 3.

The commands users type are the modules at this level (`python -m meta_drn_tf.train`,
`evaluate`, `export`, `segment`, `summary`, `app`), beside five leaves the library shares
(`errors`, `hardware`, `paths`, `progress`, `settings`); the library lives in the subpackages:
`network` (layers, the model, kernel policy), `meta` (adaptation, meta-learning, one module
per algorithm), `data` (datasets, the field's benchmarks, episodes), `runs` (a run's
configuration `RunConfig`, its directory and learner), `training` (trainer, controller and
actions, evaluation), `serving` (SavedModel export, `Segmenter`, TFLite, mask files),
`results` (metrics and pictures) and `cli` (what every command shares). `bench` holds
measurement code the product never imports. docs/architecture.md draws them.
"""

from importlib import metadata as _metadata

try:
    # One source of truth: pyproject.toml's version, as pip installed it.
    __version__ = _metadata.version("meta_drn_tf")
except _metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = "0+unknown"


def __getattr__(name: str):
    # `meta_drn_tf.Segmenter` without importing TensorFlow with the package.
    if name == "Segmenter":
        from meta_drn_tf.serving.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module 'meta_drn_tf' has no attribute {name!r}")
