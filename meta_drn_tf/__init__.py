"""meta_drn_tf: meta-learned 1-shot image segmentation (Meta-DRN) in TensorFlow / Keras 3."""

import os
import sys

# TensorFlow's C++ runtime messages (CPU feature notes, CUDA probing on CPU machines) would
# bury the progress bars. A value the user set wins; `--verbosity=0` on a command brings them
# back (meta_drn_tf.cli), which needs to know whether this default was applied.
TF_LOG_LEVEL_DEFAULTED = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"


def __getattr__(name: str):
    # `meta_drn_tf.Segmenter` without importing TensorFlow with the package.
    if name == "Segmenter":
        from meta_drn_tf.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module 'meta_drn_tf' has no attribute {name!r}")

if sys.argv and sys.argv[0] == "-m":
    # `python -m meta_drn_tf.X` is starting an app (argv[0] is "-m" while the package is
    # imported): start TensorFlow quietly before the app's module imports it.
    from meta_drn_tf import cli

    cli.start_tensorflow(cli.verbosity_in(sys.argv))
