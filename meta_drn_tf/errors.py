"""Errors a user causes, each with a message that names the file or flag and what to do.

The command-line apps turn them into one line on stderr and an exit code
(`meta_drn_tf.cli`); from Python they are ordinary exceptions.
"""

from __future__ import annotations

import errno
import os
import re
import shutil


class ConfigError(ValueError):
    """A setting cannot be used: a flag value, a run directory, a missing run."""


class DataError(ValueError):
    """A file of the dataset (or an input image) cannot be used; the message names it."""


class Unwritable(ConfigError):
    """A folder the command must write cannot be written (read-only file system, permissions): found
    before any work, and a storage problem like a write that fails (the same exit code)."""


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


class Terminated(RuntimeError):
    """A command other than training received SIGTERM; raised where it was, so that what it was
    writing is cleaned up on the way out (files are written whole or not at all)."""


# Storage failures a user can fix, as errno values and as TensorFlow's C++ runtime words them.
STORAGE_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                  errno.EROFS: "the folder is on a read-only file system"}
STORAGE_WORDS = {"No space left on device": "the disk is full", "Disk quota exceeded": "the disk quota is used up",
                 "Read-only file system": "the folder is on a read-only file system"}


def storage_problem(error: BaseException) -> str | None:
    """One line for a write that failed for lack of space or a read-only folder (an OSError or a
    TensorFlow error), naming the file and the free space there; None for any other error."""
    why = STORAGE_ERRNOS.get(getattr(error, "errno", None)) if isinstance(error, OSError) else None
    if isinstance(error, PermissionError) and _refused_creation(error.filename):
        why = "the folder cannot be written (permissions)"
    text = str(getattr(error, "message", None) or error)
    why = why or next((words for needle, words in STORAGE_WORDS.items() if needle in text), None)
    if why is None:
        return None
    path = getattr(error, "filename", None) or _path_in(text)
    where = f"cannot write {path}" if path else "cannot write"
    return (f"{where}: {why}{_free_space(path)}. Nothing half-written was left: free space (or give another "
            "folder) and run the same command again.")


def _refused_creation(path: object) -> bool:
    """Whether a PermissionError on `path` was a file being made in a folder that cannot be written (not
    a file that cannot be read)."""
    if not isinstance(path, str) or os.path.exists(path):
        return False
    folder = os.path.dirname(os.path.abspath(path))
    return os.path.isdir(folder) and not os.access(folder, os.W_OK | os.X_OK)


def _path_in(text: str) -> str | None:
    """The first file path in an error's text, preferring one below an existing folder other than the
    root (TensorFlow's device names, /job:localhost/replica:0/..., are not paths)."""
    found = [m[1] for m in re.finditer(r"(?<![\w:])(/[^\s:;,'\"\]\[]+)", text) if m[1] != "/job"]
    for path in found:
        folder = os.path.dirname(path)
        while folder and folder != "/" and not os.path.isdir(folder):
            folder = os.path.dirname(folder)
        if folder and folder != "/":
            return path
    return found[0] if found else None


def _free_space(path: str | None) -> str:
    folder = path
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    if not folder:
        return ""
    return f" ({shutil.disk_usage(folder).free / 2**20:.1f} MiB free in {folder})"
