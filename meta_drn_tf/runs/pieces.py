"""A training run's pieces, built from its RunConfig: the learner (new, baseline or restored) and the data.

A run is described by a `RunConfig`, saved as `flags.json` in its model_dir.
"""

from __future__ import annotations

import os

from meta_drn_tf.errors import ConfigError
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
        model = build_meta_drn(config.network.image_size, config.network.width, dtype=config.meta.dtype_policy)
        return MetaLearner(model, config.meta, strategy=strategy)


def random_init_learner(config: RunConfig):
    """The baseline: the run's network and algorithm from a random initialisation (another seed)."""
    return build_learner(config.replace(seed=config.seed + 1))


def restore_learner(model_dir: str, which: str = "best", **overrides):
    """The learner of a training run in `model_dir`, with its best (or latest) checkpoint.

    Returns (learner, config); `overrides` that are not None change settings
    that do not shape the model (e.g. data_dir).
    """
    import tensorflow as tf

    config = RunConfig.load(model_dir).replace(**{k: v for k, v in overrides.items() if v is not None})
    directory = os.path.join(model_dir, "best" if which == "best" else "checkpoints")
    learner = build_learner(config)
    # A run still training replaces its checkpoints (keeping the newest few): one deleted between
    # reading its name and its files is followed by the next newest.
    for attempt in range(RESTORE_ATTEMPTS):
        checkpoint = tf.train.latest_checkpoint(directory)
        if checkpoint is None:
            raise ConfigError(f"--model_dir {model_dir}: no checkpoint in {directory}")
        try:
            tf.train.Checkpoint(learner=learner).restore(checkpoint).expect_partial()
            return learner, config
        except tf.errors.NotFoundError:
            if attempt == RESTORE_ATTEMPTS - 1:
                raise ConfigError(f"--model_dir {model_dir}: {checkpoint} vanished while it was read (the run "
                                  "replaced its checkpoints faster than they could be read); try again") from None


def load(config: RunConfig, split: str, progress: bool = True, classes_file: str | None = None,
         min_images: int | None = None):
    """The run's dataset: `split` ("train", "val", "test", "all") or the classes listed in `classes_file`."""
    return load_splits(config, (split,), progress, classes_file, min_images)[split]


def load_splits(config: RunConfig, splits: tuple[str, ...], progress: bool = True, classes_file: str | None = None,
                min_images: int | None = None) -> dict:
    """The run's dataset, several splits decoded in one pass (every bad file reported at once)."""
    from meta_drn_tf import data

    settings = config.data
    return data.load_splits(splits, settings.data_dir or None, config.network.image_size,
                            min_images=min_images or settings.shots + 1, seed=config.seed,
                            split_files=settings.split_files, synthetic_classes=settings.synthetic_classes,
                            synthetic_images=settings.synthetic_images, progress=progress,
                            skip_bad_files=settings.skip_bad_files, classes_file=classes_file)
