"""Meta-train Meta-DRN: the main job.

    python -m meta_drn_tf.train --flagfile=flags/maml.flags --data_dir=/data/fss1000 --model_dir=runs/maml
    python -m meta_drn_tf.train --flagfile=flags/quickstart.flags      # CPU, embedded synthetic data

The flags are the fields of `meta_drn_tf.config.RunConfig`; the training
itself is `meta_drn_tf.training.train` (usable from Python without absl).
Re-running the same command resumes from the latest checkpoint in --model_dir.
"""

from __future__ import annotations

import dataclasses
import os

from absl import flags

from meta_drn_tf import cli, config
from meta_drn_tf.config import RunConfig, define_flags
from meta_drn_tf.errors import NonFiniteLoss, WorkerLost  # noqa: F401  (NonFiniteLoss: part of this API)

define_flags()
flags.adopt_module_key_flags(config)  # --helpshort lists them as this app's flags
FLAGS = flags.FLAGS


def default_config(**overrides) -> RunConfig:
    """The flags' defaults with `overrides`, as a RunConfig (for `train()` from Python)."""
    return RunConfig(**overrides)


def train(config: RunConfig) -> dict:
    """Runs (or resumes) the training `config` describes; see `meta_drn_tf.training`."""
    from meta_drn_tf import training

    return training.train(config)


def main(argv):
    del argv
    import tensorflow as tf

    run = RunConfig(**{f.name: FLAGS[f.name].value for f in dataclasses.fields(RunConfig)})
    try:
        train(run)
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError) as e:
        raise WorkerLost(
            f"lost contact with another worker ({type(e).__name__}: {e.message.splitlines()[0]}). Restart every "
            f"worker with the same command to resume from the last checkpoint in "
            f"{os.path.join(run.model_dir, 'checkpoints')}.") from e


if __name__ == "__main__":
    cli.run(main)
