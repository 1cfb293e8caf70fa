"""`RunDirectory`: every path of a training run, and the rules for reusing one."""

from __future__ import annotations

import os
import shutil

from absl import logging

from meta_drn_tf.errors import ConfigError
from meta_drn_tf.runs.config import FLAGS_FILE, RunConfig
from meta_drn_tf.runs.runlock import LOCK_FILE

# Settings (flags) that define the network and its weights: a run cannot resume under others.
MODEL_SETTINGS = ("algo", "image_size", "width", "lslr", "per_step_norm")
# Settings whose change makes a resumed run differ from an uninterrupted one.
RUN_SETTINGS = MODEL_SETTINGS + ("data_dir", "shots", "queries", "meta_batch_size", "seed", "tasks_per_epoch",
                                 "synthetic_classes", "synthetic_images", "inner_steps", "inner_lr")


class RunDirectory:
    """Every path of a training run, spelled once."""

    def __init__(self, root: str):
        self.root = root
        self.config = os.path.join(root, FLAGS_FILE)
        self.checkpoints = os.path.join(root, "checkpoints")
        self.best_checkpoints = os.path.join(root, "best")
        self.test = os.path.join(root, "test")
        self.export = os.path.join(root, "export")
        self.best_model = os.path.join(root, "best_model.keras")

    def logs(self, name: str) -> str:
        """TensorBoard event folder `name` ("train", "validation")."""
        return os.path.join(self.root, "logs", name)

    def clear(self) -> None:
        """Deletes the run (for --fresh), keeping the lock file its writer holds; refuses a folder
        that holds files but no run, which is not this program's to delete."""
        if not os.path.isdir(self.root):
            return
        entries = [e for e in os.listdir(self.root) if e != LOCK_FILE]
        if entries and not os.path.exists(self.config):
            raise ConfigError(f"--fresh: --model_dir {self.root} holds files but no training run ({FLAGS_FILE} is "
                              "missing); not deleting them. Give a run's directory or a new one.")
        for entry in entries:
            path = os.path.join(self.root, entry)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)

    def claim(self, config: RunConfig) -> None:
        """Saves `config` here; refuses one whose model-shaping settings differ from the saved run's."""
        if os.path.exists(self.config):
            saved_config = RunConfig.load(self.root)
            saved, new = saved_config.to_flags(), config.to_flags()
            # LSLR rates and per-step norms have one entry per inner step.
            per_step = saved_config.meta.lslr or saved_config.meta.per_step_norm
            shaping = MODEL_SETTINGS + (("inner_steps",) if per_step else ())
            changed = [k for k in shaping if saved[k] != new[k]]
            if changed:
                raise ConfigError(
                    f"--model_dir {self.root} holds a run with " + ", ".join(f"--{k}={saved[k]}" for k in changed)
                    + " but this command has " + ", ".join(f"--{k}={new[k]}" for k in changed)
                    + ". Use another --model_dir, the run's flags, or --fresh to delete it and start afresh.")
            for k in RUN_SETTINGS:
                if saved[k] != new[k] and k not in shaping:
                    logging.warning("--%s changed from %r to %r: the resumed run will differ from the original",
                                    k, saved[k], new[k])
        config.save(self.root)
