"""Where training stands (`TrainState`) and its two checkpoint series: the latest and the best."""

from __future__ import annotations

import contextlib
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from meta_drn_tf.errors import NonFiniteLoss


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
        self.learner, self.state, self.resume_dir = learner, state, latest_dir
        self.checkpoint = tf.train.Checkpoint(learner=learner, state=state)
        if not chief:
            scratch = tempfile.mkdtemp(prefix="worker_ckpt_")
            latest_dir, best_dir = scratch, scratch + "_best"
            for folder in (latest_dir, best_dir):
                resources.callback(shutil.rmtree, folder, ignore_errors=True)
        self.latest = tf.train.CheckpointManager(self.checkpoint, latest_dir, max_to_keep=2)
        self.best = tf.train.CheckpointManager(self.checkpoint, best_dir, max_to_keep=1, checkpoint_name="best")

    def resume(self) -> str | None:
        """Restores the run's latest checkpoint (every worker reads the chief's); its path, or None."""
        path = tf.train.latest_checkpoint(self.resume_dir)
        if path:
            self.checkpoint.restore(path).assert_existing_objects_matched()
        return path

    def save(self, series: str, why: str) -> str:
        """A checkpoint of the current state in `series` ("latest" or "best"); never of non-finite weights."""
        if not all(np.isfinite(v.numpy()).all() for v in self.learner.meta_variables):
            raise NonFiniteLoss(f"weights are not finite; not saving ({why}). "
                                f"Last good checkpoint: {self.latest.latest_checkpoint}")
        manager = self.best if series == "best" else self.latest
        return manager.save(checkpoint_number=int(self.state.global_step))

    def restore_best(self) -> str:
        """Restores the best checkpoint (the latest when validation never improved); its path."""
        path = self.best.latest_checkpoint or self.latest.latest_checkpoint
        self.checkpoint.restore(path)
        return path
