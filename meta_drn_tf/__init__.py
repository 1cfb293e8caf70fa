"""meta_drn_tf: meta-learned 1-shot image segmentation (Meta-DRN) in TensorFlow / Keras 3."""

import os

# TensorFlow's C++ start-up chatter (CUDA probing on CPU machines, CPU feature notes) would
# bury the progress bars; a value the user set wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
