"""A run's checkpoint files, read from the folder itself: which there are, which are intact, and
what to do with damaged ones. The `checkpoint` state file is rewritten from them, never trusted alone:
a crash mid-save, a full disk or a copy can damage it as well as the checkpoints it names."""

from __future__ import annotations

import os
import re

import tensorflow as tf

KEEP_LATEST = 3  # several: when the newest is damaged, training resumes from the one before
# What reading a damaged checkpoint raises: a missing or truncated file (NotFoundError, DataLossError,
# "IndexError: Read less bytes than requested"), one of another model (AssertionError, ValueError).
READ_ERRORS = (tf.errors.OpError, ValueError, IndexError, AssertionError)
CHECKPOINT_FILE = re.compile(r"^(.+)-(\d+)\.(index|data-\d{5}-of-\d{5})$")


def saved_checkpoints(*folders: str) -> list[str]:
    """The checkpoints whose files lie in `folders` (intact or not), newest (highest step) first.

    Read from the files, not from the `checkpoint` state file, which a crash or a disk can damage too.
    """
    found = {}
    for folder in folders:
        for name in os.listdir(folder) if os.path.isdir(folder) else ():
            match = CHECKPOINT_FILE.match(name)
            if match:
                found[os.path.join(folder, f"{match[1]}-{match[2]}")] = int(match[2])
    return sorted(found, key=lambda path: (found[path], "best" not in os.path.basename(path)), reverse=True)


# How TensorFlow words a checkpoint written for a network of another shape (an edited flags.json).
SHAPE_MISMATCH = "incompatible tensor with shape"


def read_problem(checkpoint: tf.train.Checkpoint, path: str) -> str | None:
    """Restores `path` into `checkpoint`; None when it is intact, else what is wrong with it (one line).

    Every tensor is read first, apart from the live objects: a damaged file then never leaves some
    of them (or values deferred for ones not built yet) restored from it.
    """
    try:
        reader = tf.train.load_checkpoint(path)
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
        # Every object asked for must be there; the file may hold more (a segmenter reads the learner
        # of a checkpoint that also holds the training state): expect_partial keeps that quiet.
        checkpoint.restore(path).assert_existing_objects_matched().expect_partial()
    except READ_ERRORS as e:
        message = getattr(e, "message", None) or str(e) or type(e).__name__
        return message.splitlines()[0][:200]
    return None


def set_aside(paths: list[str]) -> None:
    """Moves damaged checkpoints' files into a `damaged/` folder beside them: out of the way, not lost."""
    for path in paths:
        folder, name = os.path.split(path)
        os.makedirs(os.path.join(folder, "damaged"), exist_ok=True)
        for entry in os.listdir(folder):
            if entry.startswith(name + "."):
                os.replace(os.path.join(folder, entry), os.path.join(folder, "damaged", entry))


def write_state(folder: str) -> None:
    """Rewrites `folder`'s `checkpoint` state file from the checkpoints whose files are there."""
    found = saved_checkpoints(folder)
    state = os.path.join(folder, "checkpoint")
    if not found:
        if os.path.exists(state):
            os.replace(state, state + ".damaged")
        return
    tf.compat.v1.train.update_checkpoint_state(folder, found[0], all_model_checkpoint_paths=found[::-1])
