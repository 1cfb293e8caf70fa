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


# What a run (and the commands reading it) write at its top level: all that --fresh may delete.
RUN_ENTRIES = (FLAGS_FILE, "flags.txt", "checkpoints", "best", "logs", "test", "export", "best_model.keras", LOCK_FILE)
RUN_PREFIXES = ("eval_", ".flags.json.", ".flags.txt.", ".best_model.keras.")  # reports; atomic writes in flight


def written_by_a_run(entry: str) -> bool:
    """Whether a top-level name in a run directory is one a run or its commands write."""
    return entry in RUN_ENTRIES or entry.startswith(RUN_PREFIXES)


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

    def foreign_entries(self) -> list[str]:
        """The top-level names here that no run writes (the user's own files), sorted."""
        if not os.path.isdir(self.root):
            return []
        return sorted(e for e in os.listdir(self.root) if not written_by_a_run(e))

    def refuse_foreign(self) -> None:
        """Raises ConfigError when this is no run's folder yet holds files (a new run's place must be
        new or empty: --fresh would later delete its own files among the user's)."""
        found = [] if os.path.exists(self.config) else self.foreign_entries()
        if found:
            raise ConfigError(f"--model_dir {self.root} already holds files that are not a training run's "
                              f"({', '.join(found[:3])}{', ...' if len(found) > 3 else ''}); give a new or empty "
                              "folder for the run")

    def clear(self) -> None:
        """Deletes what the run wrote (for --fresh), keeping the lock file its writer holds and
        everything else: a folder with no run is refused, and files no run writes are kept."""
        if not os.path.isdir(self.root):
            return
        if not os.path.exists(self.config) and self.foreign_entries():
            raise ConfigError(f"--fresh: --model_dir {self.root} holds files but no training run ({FLAGS_FILE} is "
                              "missing); not deleting them. Give a run's directory or a new one.")
        for entry in os.listdir(self.root):
            if entry != LOCK_FILE and written_by_a_run(entry):
                path = os.path.join(self.root, entry)
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
        kept = self.foreign_entries()
        if kept:
            logging.warning("--fresh kept %d file(s) in %s that no run writes: %s", len(kept), self.root,
                            ", ".join(kept[:5]) + (" ..." if len(kept) > 5 else ""))

    def claim(self, config: RunConfig) -> None:
        """Saves `config` here; refuses one whose model-shaping settings differ from the saved run's, and a
        new run in a folder that already holds files of other kinds (--fresh would later delete its own
        files among them)."""
        self.refuse_foreign()
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
