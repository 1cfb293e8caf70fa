"""Export a trained run as a TF Serving SavedModel with in-graph 1-shot adaptation.

    python -m meta_drn_tf.export --model_dir=runs/maml [--export_dir=saved_models/maml] [--precision=bfloat16]
        [--kernels=stock|gpu|cpu]

Writes `<export_dir>/<version>/` (the next free integer version); point TF
Serving's model_base_path at <export_dir>. See meta_drn_tf/serving/saved_model.py for the
signatures.
"""

from __future__ import annotations

import os

from absl import flags

from meta_drn_tf import cli
from meta_drn_tf.cli import shared_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The flags of `python -m meta_drn_tf.export`."""
    from meta_drn_tf.meta.config import PRECISION_POLICIES

    flags.DEFINE_string("model_dir", None, "A training run's directory.", required=True)
    flags.DEFINE_string("export_dir", None, "TF Serving model_base_path (default: saved_models/<run name>).")
    flags.DEFINE_enum("precision", None, PRECISION_POLICIES, "Compute precision (default: the run's).")
    flags.DEFINE_integer("inner_steps", None, "Inner steps inside the graph (default: the run's test-time setting).")
    shared_flags.define_checkpoint()
    shared_flags.define_export_kernels()
    shared_flags.define_tf32()
    flags.adopt_module_key_flags(shared_flags)  # listed by --help as this command's own

    cli.check_paths(model_dir="folder", export_dir="new_folder")
    flags.register_validator("inner_steps", lambda n: n is None or n >= 1, message="must be at least 1")


def main(argv):
    del argv
    from meta_drn_tf.runs import learners
    from meta_drn_tf.serving import saved_model

    learner, config = learners.restore_learner(FLAGS.model_dir, FLAGS.checkpoint)
    name = os.path.basename(os.path.normpath(FLAGS.model_dir))
    export_dir = FLAGS.export_dir or os.path.join("saved_models", name)
    path = saved_model.export(learner, export_dir, config.network,
                              inner_steps=FLAGS.inner_steps or config.trainer.eval_inner_steps,
                              precision=FLAGS.precision, kernels=FLAGS.kernels)
    print(f"SavedModel written to {path} ({FLAGS.kernels} kernels)")


if __name__ == "__main__":
    cli.run(main, define_flags)
