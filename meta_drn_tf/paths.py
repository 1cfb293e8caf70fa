"""What a path given on the command line must be, checked before any work starts.

Each check returns None for a usable path, else what is wrong with it, worded
to follow the flag in a one-line error (`--out masks: is a file, not a folder`).
The apps register them as flag validators (`cli.check_paths`); training checks
its RunConfig with `problems` (RunConfig itself does not: a saved run is loaded on
machines where its dataset may live elsewhere).
"""

from __future__ import annotations

import os
from collections.abc import Callable


def existing_file(path: str) -> str | None:
    """A file that exists and can be read."""
    if not os.path.exists(path):
        return "no such file"
    if os.path.isdir(path):
        return "is a folder, not a file"
    return None if os.access(path, os.R_OK) else "cannot be read (permissions)"


def existing_path(path: str) -> str | None:
    """A file or folder that exists."""
    return None if os.path.exists(path) else "no such file or folder"


def existing_folder(path: str) -> str | None:
    """A folder that exists and can be listed."""
    if not os.path.exists(path):
        return "no such folder"
    if not os.path.isdir(path):
        return "is a file, not a folder"
    return None if os.access(path, os.R_OK | os.X_OK) else "cannot be read (permissions)"


def creatable_folder(path: str) -> str | None:
    """A folder that exists or can be made: nothing on the way is a file, and it can be written."""
    if not path:
        return "is empty; give a folder"
    if os.path.exists(path):
        if not os.path.isdir(path):
            return "is a file, not a folder"
        return None if os.access(path, os.W_OK | os.X_OK) else "cannot be written (permissions)"
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"cannot be made: {parent} is a file"
    return None if os.access(parent, os.W_OK | os.X_OK) else f"cannot be made in {parent} (permissions)"


def creatable_file(path: str) -> str | None:
    """A file that can be written: not a folder, in a folder that exists or can be made."""
    if not path:
        return "is empty; give a file name"
    if os.path.isdir(path):
        return "is a folder, not a file"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return "cannot be written (permissions)"
    return creatable_folder(os.path.dirname(os.path.abspath(path)))


KINDS: dict[str, Callable[[str], str | None]] = {
    "file": existing_file, "folder": existing_folder, "path": existing_path,
    "new_folder": creatable_folder, "new_file": creatable_file,
}


def problems(checks: dict[str, tuple[str, str | None]]) -> list[str]:
    """`--flag value: what is wrong` for each {flag: (kind, value)} whose value is set and unusable."""
    found = []
    for flag, (kind, value) in checks.items():
        problem = KINDS[kind](value) if value else None
        if problem:
            found.append(f"--{flag} {value}: {problem}")
    return found


def write_atomically(path: str, data: str | bytes) -> None:
    """Writes `data` (text as UTF-8) to `path` through a temporary file and a rename: a reader (or an
    interrupted writer) never leaves or sees half a file, and two writers leave one whole file."""
    folder, name = os.path.split(os.path.abspath(path))
    partial = os.path.join(folder, f".{name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
