"""Errors a user causes, each with a message that names the file or flag and what to do.

The command-line apps turn them into one line on stderr and an exit code
(`meta_drn_tf.cli`); from Python they are ordinary exceptions.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting cannot be used: a flag value, a run directory, a missing run."""


class DataError(ValueError):
    """A file of the dataset (or an input image) cannot be used; the message names it."""


class NonFiniteLoss(RuntimeError):
    """Training met a non-finite loss or gradient; the message names the last good checkpoint."""


class WorkerLost(RuntimeError):
    """Multi-worker training lost contact with another worker."""


class Stopped(RuntimeError):
    """Training stopped on a signal after saving a checkpoint (or with nothing left to save).

    Args:
        message: what was saved and how to resume.
        preempted: True for SIGTERM (a scheduler's preemption: run the command again),
            False for SIGINT (Ctrl-C: the user asked for it).
    """

    def __init__(self, message: str, preempted: bool):
        super().__init__(message)
        self.preempted = preempted
