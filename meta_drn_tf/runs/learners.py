"""A training run's learner, built from its RunConfig: new, the random-initialisation baseline, or restored.

A run is described by a `RunConfig`, saved as `flags.json` in its model_dir.
"""

from __future__ import annotations

import os

from meta_drn_tf.errors import ConfigError
from meta_drn_tf.runs.checkpoint_files import SHAPE_MISMATCH, read_problem, saved_checkpoints
from meta_drn_tf.runs.config import RunConfig

RESTORE_ATTEMPTS = 3


def build_learner(config: RunConfig, strategy=None):
    """The model and MetaLearner a run describes (variables under `strategy`)."""
    import keras
    import tensorflow as tf

    from meta_drn_tf.meta import MetaLearner
    from meta_drn_tf.network.model import build_meta_drn

    strategy = strategy or tf.distribute.get_strategy()
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = build_meta_drn(config.network, config.meta.dtype_policy)
        return MetaLearner(model, config.meta, strategy=strategy)


def random_init_learner(config: RunConfig):
    """The baseline: the run's network and algorithm from a random initialisation (another seed)."""
    return build_learner(config.replace(seed=config.seed + 1))


def restore_learner(model_dir: str, which: str = "best", **overrides):
    """The learner of a training run in `model_dir`, with its best (or latest) checkpoint.

    Returns (learner, config); `overrides` that are not None change settings
    that do not shape the model (e.g. data_dir). A damaged checkpoint ends in a
    ConfigError naming it and the intact one to use instead.
    """
    import tensorflow as tf

    config = RunConfig.load(model_dir).replace(**{k: v for k, v in overrides.items() if v is not None})
    folders = {"best": os.path.join(model_dir, "best"), "latest": os.path.join(model_dir, "checkpoints")}
    learner = build_learner(config)
    checkpoint = tf.train.Checkpoint(learner=learner)
    # A run still training replaces its checkpoints (keeping the newest few): one deleted between
    # listing and reading is followed by the next newest.
    for _ in range(RESTORE_ATTEMPTS):
        found = saved_checkpoints(folders[which])
        if not found:
            raise ConfigError(f"--model_dir {model_dir}: no checkpoint in {folders[which]}")
        problem = read_problem(checkpoint, found[0])
        if problem is None:
            return learner, config
        if SHAPE_MISMATCH in problem:  # the network flags.json describes is another one
            raise ConfigError(f"checkpoint {found[0]} does not fit the network {model_dir}/flags.json describes "
                              f"({problem}); was flags.json edited? Restore its --width and --image_size")
        if saved_checkpoints(folders[which])[:1] == found[:1]:  # still there: damaged, not replaced
            raise ConfigError(f"checkpoint {found[0]} is damaged ({problem}); {_instead(checkpoint, folders, which)}")
    raise ConfigError(f"--model_dir {model_dir}: its checkpoints were replaced faster than they could be read "
                      "(the run is saving); try again")


def _instead(checkpoint, folders: dict, which: str) -> str:
    """What to use when the `which` series' newest checkpoint is damaged."""
    other = "latest" if which == "best" else "best"
    for path in saved_checkpoints(folders[other]):
        if read_problem(checkpoint, path) is None:
            return f"use --checkpoint={other} ({path} is intact)"
    if which == "latest" and len(saved_checkpoints(folders[which])) > 1:
        return "run train again with the same flags: it resumes from the newest intact checkpoint"
    return "no other checkpoint of the run is intact: retrain, or restore the run from a backup"
