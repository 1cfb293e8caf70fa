"""Where training stands (`TrainState`) and its two checkpoint series: the latest and the best."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf
from absl import logging

from meta_drn_tf.errors import ConfigError, NonFiniteLoss
from meta_drn_tf.runs.checkpoint_files import (
    KEEP_LATEST,
    SHAPE_MISMATCH,
    read_problem,
    saved_checkpoints,
    set_aside,
    write_state,
)


class TrainState(tf.Module):
    """Where training stands; checkpointed with the learner.

    Task t of the stream is a pure function of (seed, t), so `global_step` is also the
    data position: a run restored from a checkpoint continues exactly where it was.
    """

    def __init__(self):
        super().__init__(name="train_state")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        # The best validation soft IoU so far (the attribute's name is its key in every checkpoint).
        self.best = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_val_soft_iou")
        self.wait = tf.Variable(0, dtype=tf.int64, trainable=False, name="plateau_wait")
        self.bad_batches = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_batches")


class Checkpoints:
    """The learner and the state, saved in two series: `latest` (resume) and `best` (by validation).

    Args:
        learner: the MetaLearner whose `meta_variables` must be finite to be saved.
        state: the TrainState saved with it.
        latest_dir: the resume series' folder.
        best_dir: the best checkpoint's folder.
        chief: False on a multi-worker run's other workers, which must take part in every save
            but write into scratch folders (removed when `resources` closes) instead of the run.
        resources: where the scratch folders' removal is registered.
    """

    def __init__(self, learner, state: TrainState, latest_dir: str, best_dir: str, chief: bool = True,
                 resources: contextlib.ExitStack | None = None):
        self.learner, self.state, self.chief = learner, state, chief
        self.resume_dir, self.best_dir = latest_dir, best_dir  # the run's own, which every worker resumes from
        self.checkpoint = tf.train.Checkpoint(learner=learner, state=state)
        if not chief:
            scratch = tempfile.mkdtemp(prefix="worker_ckpt_")
            latest_dir, best_dir = scratch, scratch + "_best"
            for folder in (latest_dir, best_dir):
                resources.callback(shutil.rmtree, folder, ignore_errors=True)
        self._managers(latest_dir, best_dir)

    def _managers(self, latest_dir: str, best_dir: str) -> None:
        if self.chief:  # a state file a crash left unreadable would make the manager forget the run
            for folder in (latest_dir, best_dir):
                write_state(folder)
        self.latest = tf.train.CheckpointManager(self.checkpoint, latest_dir, max_to_keep=KEEP_LATEST)
        self.best = tf.train.CheckpointManager(self.checkpoint, best_dir, max_to_keep=1, checkpoint_name="best")

    def resume(self) -> str | None:
        """Restores the run's newest intact checkpoint (every worker reads the chief's); its path, or
        None for a new run. Damaged newer ones are named, and set aside by the chief."""
        candidates = saved_checkpoints(self.resume_dir, self.best_dir)
        damaged = []
        for path in candidates:
            problem = read_problem(self.checkpoint, path)
            if problem is None:
                if damaged:
                    logging.warning("damaged checkpoint(s) %s; resuming from %s, the newest intact one%s",
                                    "; ".join(f"{p}: {why}" for p, why in damaged), path,
                                    " (the damaged files are kept in damaged/)" if self.chief else "")
                    if self.chief:
                        set_aside([p for p, _ in damaged])
                        self._managers(self.latest.directory, self.best.directory)
                return path
            damaged.append((path, problem))
        if damaged and all(SHAPE_MISMATCH in why for _, why in damaged):  # intact, for another network
            raise ConfigError(f"the run's checkpoints do not fit the network {os.path.dirname(self.resume_dir)}/"
                              f"flags.json describes ({damaged[0][1]}); was flags.json edited? Restore its --width "
                              "and --image_size. The checkpoints are intact: --fresh would delete them.")
        if damaged:
            raise ConfigError(f"every checkpoint of the run is damaged ({'; '.join(f'{p}: {w}' for p, w in damaged)}); "
                              "nothing to resume from. --fresh deletes the run and starts over.")
        return None

    def save(self, series: str, why: str) -> str:
        """A checkpoint of the current state in `series` ("latest" or "best"); never of non-finite weights."""
        if not all(np.isfinite(v.numpy()).all() for v in self.learner.meta_variables):
            raise NonFiniteLoss(f"weights are not finite; not saving ({why}). "
                                f"Last good checkpoint: {self.latest.latest_checkpoint}")
        manager = self.best if series == "best" else self.latest
        return manager.save(checkpoint_number=int(self.state.global_step))

    def restore_best(self) -> str:
        """Restores the best checkpoint (the latest when validation never improved); its path."""
        for path in saved_checkpoints(self.best.directory) + saved_checkpoints(self.latest.directory):
            problem = read_problem(self.checkpoint, path)
            if problem is None:
                return path
            logging.warning("checkpoint %s is damaged (%s): trying the next", path, problem)
        raise ConfigError(f"no intact checkpoint in {self.best.directory} or {self.latest.directory}")
