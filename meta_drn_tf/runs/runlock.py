"""One writer per run directory: `train` holds an OS lock on `MODEL_DIR/.train.lock` while it runs.

    with RunLock("runs/maml"):
        ...  # only this process trains into runs/maml

The lock is `flock` on the file: the kernel drops it when the process ends,
however it ends (`kill -9` included), so a dead run never stays locked and the
file itself means nothing once no process holds it. The holder writes its PID,
host and start time into the file for the message a second `train` prints.
`flock` works across NFS clients on Linux; where the platform has no `fcntl`
(Windows), the lock is skipped.
"""

from __future__ import annotations

import os
import socket
import time

from meta_drn_tf.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

LOCK_FILE = ".train.lock"


class RunLock:
    """An exclusive, non-blocking lock on a run directory (created if needed).

    Args:
        root: the run directory (`--model_dir`).
    """

    def __init__(self, root: str):
        self.root = root
        self.path = os.path.join(root, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Takes the lock or raises ConfigError naming the process that holds it."""
        if fcntl is None:
            return self
        os.makedirs(self.root, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 512).decode(errors="replace").strip() or "a process that has not said which"
            os.close(fd)
            raise ConfigError(
                f"--model_dir {self.root} is being trained by {holder}. One run directory has one writer: wait "
                "for that run to end (or stop it: Ctrl-C saves a checkpoint), or use another --model_dir.") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"PID {os.getpid()} on {socket.gethostname()} (since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')})\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Gives the lock up (closing the file drops the flock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
