"""Meta-train Meta-DRN: the main job.

    python -m meta_drn_tf.train --flagfile=flags/maml.flags --data_dir=/data/fss1000 --model_dir=runs/maml
    python -m meta_drn_tf.train --flagfile=flags/quickstart.flags      # CPU, embedded synthetic data

The flags are the leaves of `meta_drn_tf.runs.config.RunConfig`; the
training itself is `meta_drn_tf.training.trainer.train` (usable from Python
without absl). Re-running the same command resumes from the latest checkpoint
in --model_dir.
"""

from __future__ import annotations

import os

from meta_drn_tf import cli


def define_flags() -> None:
    """The flags of `python -m meta_drn_tf.train`: one per RunConfig leaf."""
    from absl import flags

    from meta_drn_tf.runs import config

    config.define_flags()
    flags.adopt_module_key_flags(config)  # --helpshort lists them as this app's flags


def main(argv):
    del argv
    import tensorflow as tf

    from meta_drn_tf.errors import WorkerLost
    from meta_drn_tf.runs.config import from_flag_values
    from meta_drn_tf.training.trainer import train

    run = from_flag_values()
    try:
        train(run)
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError) as e:
        raise WorkerLost(
            f"lost contact with another worker ({type(e).__name__}: {e.message.splitlines()[0]}). Restart every "
            f"worker with the same command to resume from the last checkpoint in "
            f"{os.path.join(run.model_dir, 'checkpoints')}.") from e


if __name__ == "__main__":
    cli.run(main, define_flags)
