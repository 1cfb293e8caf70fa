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


# How the problems of `creatable_folder` and `creatable_file` begin when writing is what fails (a storage
# problem: `unwritable`).
UNWRITABLE = ("cannot be written", "cannot be made in")


def _writable(folder: str) -> str | None:
    """None when `folder` can be written, else why not (a read-only file system, or permissions)."""
    if hasattr(os, "statvfs") and os.statvfs(folder).f_flag & os.ST_RDONLY:
        return "read-only file system"
    return None if os.access(folder, os.W_OK | os.X_OK) else "permissions"


def creatable_folder(path: str) -> str | None:
    """A folder that exists or can be made: nothing on the way is a file, and it can be written."""
    if not path:
        return "is empty; give a folder"
    if os.path.exists(path):
        if not os.path.isdir(path):
            return "is a file, not a folder"
        why = _writable(path)
        return f"cannot be written ({why})" if why else None
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"cannot be made: {parent} is a file"
    why = _writable(parent)
    return f"cannot be made in {parent} ({why})" if why else None


def unwritable(problem: str) -> bool:
    """Whether a problem of `problems` (or a flag's validation error) says a folder cannot be written."""
    return any(f": {words}" in problem for words in UNWRITABLE)


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
    except OSError as e:
        e.filename = e.filename or path  # a failed write() names no file: the message must
        raise
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def unique_stems(paths: list[str], suffixes: tuple[str, ...] = ("",)) -> list[str]:
    """Output names (without extension) for `paths`, one each, such that no two outputs collide.

    An input's name is its file name without extension where that is unique; where names collide
    (also through `suffixes`: `a.jpg`'s `a_overlay` and `a_overlay.jpg`'s `a_overlay`), the colliding
    inputs take their path relative to the inputs' common folder, then with their extension
    (`a_jpg`); the same path given twice is numbered (`a_jpg`, `a_jpg-2`).
    """
    folders = [os.path.dirname(os.path.normpath(p)) for p in paths]
    common = os.path.commonpath(folders) if paths and len({os.path.isabs(p) for p in paths}) == 1 else ""

    def name(path: str, depth: int) -> str:
        stem, extension = os.path.splitext(os.path.relpath(os.path.normpath(path), common or os.curdir))
        return [os.path.basename(stem), stem, stem + extension.replace(".", "_")][depth]

    def clashing(stems: list[str]) -> list[int]:
        owners: dict[str, set[int]] = {}
        for i, stem in enumerate(stems):
            for suffix in suffixes:
                owners.setdefault(stem + suffix, set()).add(i)
        return sorted({i for group in owners.values() if len(group) > 1 for i in group})

    depths = [0] * len(paths)
    stems = [name(p, 0) for p in paths]
    while (found := [i for i in clashing(stems) if depths[i] < 2]):
        for i in found:
            depths[i] += 1
            stems[i] = name(paths[i], depths[i])
    seen: dict[str, int] = {}
    for i, stem in enumerate(stems):  # what is left: one path given several times
        seen[stem] = seen.get(stem, 0) + 1
        stems[i] = stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"
    return stems
