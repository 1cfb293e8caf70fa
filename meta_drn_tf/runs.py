"""A training run's pieces, shared by train, evaluate, export and the tools (no flags here).

A run is described by a configuration dict - the flags of `meta_drn_tf.train`
- saved as `flags.json` in its model_dir.
"""

from __future__ import annotations

import json
import os

from meta_drn_tf.errors import ConfigError

FLAGS_FILE = "flags.json"


def build_learner(cfg: dict, strategy=None):
    """The model and MetaLearner a run's flags describe (variables under `strategy`)."""
    import keras
    import tensorflow as tf

    from meta_drn_tf.meta import MetaConfig, MetaLearner
    from meta_drn_tf.model import build_meta_drn

    config = MetaConfig(algorithm=cfg["algo"], inner_lr=cfg["inner_lr"], inner_steps=cfg["inner_steps"],
                        meta_lr=cfg["meta_lr"], weight_decay=cfg["weight_decay"],
                        precision=cfg["precision"], jit_compile=cfg.get("jit_compile", False))
    strategy = strategy or tf.distribute.get_strategy()
    keras.utils.set_random_seed(cfg["seed"])
    with strategy.scope():
        model = build_meta_drn(cfg["image_size"], cfg["width"], dtype=config.dtype_policy)
        return MetaLearner(model, config, strategy=strategy)


def random_init_learner(cfg: dict):
    """The baseline: the run's network and algorithm from a random initialisation (another seed)."""
    return build_learner({**cfg, "seed": cfg["seed"] + 1})


def restore_learner(model_dir: str, which: str = "best", **overrides):
    """The learner of a training run in `model_dir`, with its best (or latest) checkpoint.

    Returns (learner, cfg); `overrides` change settings that do not shape the
    model (e.g. inner_steps for a test-time inner loop).
    """
    import tensorflow as tf

    path = os.path.join(model_dir, FLAGS_FILE)
    if not os.path.isfile(path):
        raise ConfigError(f"--model_dir {model_dir}: no training run there ({FLAGS_FILE} is missing)")
    with open(path) as f:
        cfg = {**json.load(f), **{k: v for k, v in overrides.items() if v is not None}}
    directory = os.path.join(model_dir, "best" if which == "best" else "checkpoints")
    checkpoint = tf.train.latest_checkpoint(directory)
    if checkpoint is None:
        raise ConfigError(f"--model_dir {model_dir}: no checkpoint in {directory}")
    learner = build_learner(cfg)
    tf.train.Checkpoint(learner=learner).restore(checkpoint).expect_partial()
    return learner, cfg


def split_files(cfg: dict) -> dict[str, str] | None:
    files = {k: cfg[f"{k}_classes_file"] for k in ("val", "test") if cfg.get(f"{k}_classes_file")}
    return files or None


def load(cfg: dict, split: str, progress: bool = True, classes_file: str | None = None, min_images: int | None = None):
    """The run's dataset: `split` ("train", "val", "test", "all") or the classes listed in `classes_file`."""
    return load_splits(cfg, (split,), progress, classes_file, min_images)[split]


def load_splits(cfg: dict, splits: tuple[str, ...], progress: bool = True, classes_file: str | None = None,
                min_images: int | None = None) -> dict:
    """The run's dataset, several splits decoded in one pass (every bad file reported at once)."""
    from meta_drn_tf import data

    return data.load_splits(splits, cfg["data_dir"] or None, cfg["image_size"],
                            min_images=min_images or cfg["shots"] + 1, seed=cfg["seed"],
                            split_files=split_files(cfg), synthetic_classes=cfg["synthetic_classes"],
                            synthetic_images=cfg["synthetic_images"], progress=progress,
                            skip_bad_files=cfg.get("skip_bad_files", False), classes_file=classes_file)
