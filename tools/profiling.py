"""What tools/profile_step.py and tools/profile_memory.py share: the flags of the step they profile,
the profiled step itself, and reading the profiler's trace.

    from profiling import define_step_flags, profiled_step, read_trace   # tools/profiling.py

    def define_flags() -> None:
        define_step_flags()            # --algo, --size, --width, --precision, --queries
"""

from __future__ import annotations

import glob
import os
import re

from absl import flags

FLAGS = flags.FLAGS


def define_step_flags() -> None:
    """The profiled step's flags, with the library's lists as their choices (after TensorFlow starts)."""
    from meta_drn_tf.meta import PAPER_ALGORITHMS
    from meta_drn_tf.meta.config import PRECISION_POLICIES

    flags.DEFINE_enum("algo", "maml", PAPER_ALGORITHMS, "Algorithm.")
    flags.DEFINE_integer("size", 224, "Image size.")
    flags.DEFINE_float("width", 1.0, "Network width.")
    flags.DEFINE_enum("precision", "float32", list(PRECISION_POLICIES), "Compute precision.")
    flags.DEFINE_integer("queries", 1, "Query images per task (q).")


TF_OP = re.compile(r"^[\w./\-]+:_?[A-Z][A-Za-z0-9]*$")  # "resblock3/conv2/conv/Conv2D:Conv2D"


def op_name_and_type(event_name: str) -> tuple[str, str]:
    """A TF_OP event's op name and type, oneDNN's kernels under the op they run (`_MklNativeConv2D` ->
    `Conv2D`): TensorFlow swaps them in on AVX512 hosts, and the tables read the same on every host."""
    op_name, kind = event_name.rsplit(":", 1)
    return op_name, re.sub(r"^_Mkl(Native)?", "", kind)


def read_trace(xplane_path: str):
    """The profiler's XSpace protocol buffer from a `*.xplane.pb` file."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as f:
        space.ParseFromString(f.read())
    return space


def layer_group(op_name: str) -> str:
    """The Fig. 1 group an op belongs to, from its name scope (gradients keep the forward's scope)."""
    from meta_drn_tf.network.model import GROUPS

    for part in op_name.split("/"):
        for group in GROUPS:
            if part.startswith(group):
                return group
    return "other (loss, updates, optimizer)"


def profiled_step(steps: int, logdir: str, host_tracer_level: int = 2) -> str:
    """Builds the flags' learner and a task (k = 1, q = --queries), warms up, profiles `steps` meta-steps into
    `logdir`; returns the trace's path (`*.xplane.pb`)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from meta_drn_tf.meta import MetaConfig, MetaLearner
    from meta_drn_tf.network.config import NetworkConfig
    from meta_drn_tf.network.model import build_meta_drn

    config = MetaConfig(FLAGS.algo, precision=FLAGS.precision)
    keras.utils.set_random_seed(0)
    learner = MetaLearner(build_meta_drn(NetworkConfig(FLAGS.size, FLAGS.width), config.dtype_policy), config)
    rng = np.random.default_rng(0)
    s = FLAGS.size
    batch = {"support_images": rng.uniform(size=(1, 1, s, s, 3)).astype("float32"),
             "support_masks": (rng.uniform(size=(1, 1, s, s, 1)) > 0.7).astype("float32"),
             "query_images": rng.uniform(size=(1, FLAGS.queries, s, s, 3)).astype("float32"),
             "query_masks": (rng.uniform(size=(1, FLAGS.queries, s, s, 1)) > 0.7).astype("float32")}
    learner.meta_train_step(batch)["loss"].numpy()  # trace and warm up outside the profile
    options = tf.profiler.experimental.ProfilerOptions(host_tracer_level=host_tracer_level)
    tf.profiler.experimental.start(logdir, options)
    for _ in range(steps):
        learner.meta_train_step(batch)["loss"].numpy()
    tf.profiler.experimental.stop()
    return max(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")), key=os.path.getmtime)
