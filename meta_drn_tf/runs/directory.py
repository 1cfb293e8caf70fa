"""`RunDirectory`: every path of a training run, and the rules for reusing one."""

from __future__ import annotations

import json
import os
import shutil
import time

from absl import logging

from meta_drn_tf import paths
from meta_drn_tf.errors import ConfigError
from meta_drn_tf.runs.config import FLAGS_FILE, RunConfig
from meta_drn_tf.runs.runlock import LOCK_FILE

# Settings (flags) that define the network and its weights: a run cannot resume under others.
MODEL_SETTINGS = ("algo", "image_size", "width", "lslr", "per_step_norm")
# Settings whose change makes a resumed run differ from an uninterrupted one: refused on resume, so that
# flags.json keeps saying how the run was trained (the data may move: --data_dir may change, once set).
RUN_SETTINGS = MODEL_SETTINGS + ("data_dir", "shots", "queries", "meta_batch_size", "seed", "tasks_per_epoch",
                                 "synthetic_classes", "synthetic_images", "inner_steps", "inner_lr", "precision",
                                 "tf32", "fss_split", "dataset", "fold")
MOVABLE_SETTINGS = ("data_dir",)

# The run's own marker: a folder is a run's when it holds this file, which lists the top-level names the
# run (and the commands reading it) write there: all that --fresh may delete.
MARKER = ".meta_drn_tf_run.json"
RESUMPTIONS = "resumptions.jsonl"  # one line per resumption whose flags differ from flags.json's
RUN_ENTRIES = (FLAGS_FILE, "flags.txt", "checkpoints", "best", "logs", "test", "export", "best_model.keras",
               RESUMPTIONS, LOCK_FILE)
# Reports, and the temporary files of atomic writes in flight.
RUN_PREFIXES = ("eval_", ".flags.json.", ".flags.txt.", ".best_model.keras.", f".{MARKER}.", f".{RESUMPTIONS}.")


def written_by_a_run(entry: str, entries: tuple = RUN_ENTRIES, prefixes: tuple = RUN_PREFIXES) -> bool:
    """Whether a top-level name in a run directory is one a run or its commands write (by `entries`
    and `prefixes`: those its marker lists)."""
    return entry in entries or entry == MARKER or entry.startswith(prefixes)


class RunDirectory:
    """Every path of a training run, spelled once."""

    def __init__(self, root: str):
        self.root = root
        self.config = os.path.join(root, FLAGS_FILE)
        self.marker = os.path.join(root, MARKER)
        self.checkpoints = os.path.join(root, "checkpoints")
        self.best_checkpoints = os.path.join(root, "best")
        self.test = os.path.join(root, "test")
        self.export = os.path.join(root, "export")
        self.best_model = os.path.join(root, "best_model.keras")

    def logs(self, name: str) -> str:
        """TensorBoard event folder `name` ("train", "validation")."""
        return os.path.join(self.root, "logs", name)

    def is_run(self) -> bool:
        """Whether a run claimed this folder: its marker (or, for runs of meta_drn_tf 0.2.0 and older,
        which had none, its flags.json) is there."""
        return os.path.isfile(self.marker) or os.path.isfile(self.config)

    def _owned(self) -> tuple[tuple, tuple]:
        """(names, prefixes) the marker lists (a run older than the marker: the ones runs write)."""
        try:
            with open(self.marker) as f:
                listed = json.load(f)
            return tuple(listed["entries"]), tuple(listed["prefixes"])
        except (OSError, ValueError, KeyError, TypeError):
            return RUN_ENTRIES, RUN_PREFIXES

    def foreign_entries(self) -> list[str]:
        """The top-level names here that the run does not own (the user's own files), sorted; in a folder
        no run claimed, every name but a lock file."""
        if not os.path.isdir(self.root):
            return []
        if not self.is_run():
            return sorted(e for e in os.listdir(self.root) if e != LOCK_FILE)
        entries, prefixes = self._owned()
        return sorted(e for e in os.listdir(self.root) if not written_by_a_run(e, entries, prefixes))

    def refuse_foreign(self, fresh: bool = False) -> None:
        """Raises ConfigError when this is no run's folder yet holds files: a new run's place must be new
        or empty (--fresh would later delete its own files among the user's), and `fresh` clears a run only."""
        found = [] if self.is_run() else self.foreign_entries()
        if found and fresh:
            raise ConfigError(f"--fresh: --model_dir {self.root} holds files but no training run ({MARKER} is "
                              "missing); not deleting them. Give a run's directory or a new one.")
        if found:
            raise ConfigError(f"--model_dir {self.root} already holds files and no training run ({MARKER} is "
                              f"missing): {', '.join(found[:3])}{', ...' if len(found) > 3 else ''}; give a new or "
                              "empty folder for the run")

    def clear(self) -> None:
        """Deletes what the run wrote (for --fresh): the names its marker lists, keeping the lock file its
        writer holds, the marker and everything else; a folder with no run is refused."""
        if not os.path.isdir(self.root):
            return
        self.refuse_foreign(fresh=True)
        entries, prefixes = self._owned()
        for entry in os.listdir(self.root):
            if entry not in (LOCK_FILE, MARKER) and written_by_a_run(entry, entries, prefixes):
                path = os.path.join(self.root, entry)
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
        kept = self.foreign_entries()
        if kept:
            logging.warning("--fresh kept %d file(s) in %s that the run did not write: %s", len(kept), self.root,
                            ", ".join(kept[:5]) + (" ..." if len(kept) > 5 else ""))

    def differences(self, config: RunConfig) -> dict[str, tuple]:
        """{flag: (the run's value, `config`'s)} where `config` differs from the saved run; ConfigError
        when it differs in a setting a resumed run cannot change (the network's shape, the task stream)."""
        self.refuse_foreign()
        if not os.path.exists(self.config):
            return {}
        saved_config = RunConfig.load(self.root)
        saved, new = saved_config.to_flags(), config.to_flags()
        # LSLR rates and per-step norms have one entry per inner step.
        per_step = saved_config.meta.lslr or saved_config.meta.per_step_norm
        shaping = MODEL_SETTINGS + (("inner_steps",) if per_step else ())
        # A dataset that moved keeps its flag set; from or to the embedded synthetic one (unset) is another.
        moved = [k for k in MOVABLE_SETTINGS if saved[k] and new[k]]
        for names, why in [(shaping, "the network it trained differs"),
                           ([k for k in RUN_SETTINGS if k not in moved], "it would train otherwise than "
                            "flags.json records")]:
            changed = [k for k in names if saved[k] != new[k]]
            if changed:
                raise ConfigError(
                    f"--model_dir {self.root} holds a run with " + ", ".join(f"--{k}={saved[k]}" for k in changed)
                    + " but this command has " + ", ".join(f"--{k}={new[k]}" for k in changed)
                    + f" ({why}). Use the run's flags (--flagfile={os.path.join(self.root, 'flags.txt')}), "
                    "another --model_dir, or --fresh to delete the run and start afresh.")
        return {k: (saved[k], new[k]) for k in new if k in saved and saved[k] != new[k] and k != "fresh"}

    def claim(self, config: RunConfig) -> None:
        """Marks this folder as the run's and saves `config` for a new run; for a resumed run, refuses
        settings it cannot change (`differences`) and records the others in RESUMPTIONS: flags.json
        keeps the flags the run was started with."""
        changed = self.differences(config)
        if not os.path.isfile(self.marker):
            os.makedirs(self.root, exist_ok=True)
            paths.write_atomically(self.marker, json.dumps({"entries": list(RUN_ENTRIES),
                                                            "prefixes": list(RUN_PREFIXES)}, indent=1) + "\n")
        if not os.path.exists(self.config):
            config.save(self.root)
            return
        if changed:
            record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "changed": {k: list(v) for k, v in changed.items()}}
            path = os.path.join(self.root, RESUMPTIONS)
            earlier = ""
            if os.path.isfile(path):
                with open(path) as f:
                    earlier = f.read()
            paths.write_atomically(path, earlier + json.dumps(record) + "\n")  # whole lines, or none
            logging.warning("resuming with %s (recorded in %s; flags.json keeps the run's own flags)",
                            ", ".join(f"--{k}={new!r} (the run's: {old!r})" for k, (old, new) in changed.items()),
                            RESUMPTIONS)
