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
