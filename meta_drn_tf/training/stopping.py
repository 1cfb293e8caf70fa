"""Stopping training cleanly on SIGTERM (a scheduler's preemption) and SIGINT (Ctrl-C).

    with StopRequest() as stops:
        ...  # meta-steps: a signal is recorded; the loop checks `stops.requested` between steps
        with stops.interruptible():
            ...  # validation: a signal raises StopSignal at once

A signal is only recorded by default: the training loop finishes the meta-step
it is in, saves a checkpoint and stops, and no half-done step or save is ever
cut short. Inside `interruptible()` (start-up, validation, the final test:
work that changes no training state) the handler raises `StopSignal` at once,
so the trainer saves what it has without waiting. A second Ctrl-C raises
KeyboardInterrupt at once, for a user who will not wait for the step.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading


class StopSignal(BaseException):
    """Raised by the handler inside `interruptible()`.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the
    way up swallows it.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopRequest:
    """Signal handlers that turn SIGTERM/SIGINT into a request the training loop honours.

    Args:
        signals: the signals to handle (multi-worker training leaves SIGTERM to
            `tf.distribute.experimental.PreemptionCheckpointHandler`).
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.signum: int | None = None
        self._interruptible = 0
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """Whether a signal has arrived."""
        return self.signum is not None

    @property
    def preempted(self) -> bool:
        """Whether it was SIGTERM (preemption) rather than SIGINT (the user)."""
        return self.signum == signal.SIGTERM

    def __enter__(self) -> StopRequest:
        # Python only lets the main thread install handlers; elsewhere signals keep their defaults.
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def __exit__(self, *exc) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous = {}

    @contextlib.contextmanager
    def interruptible(self):
        """Within this block a signal (or one recorded before it) raises StopSignal at once."""
        self._interruptible += 1
        try:
            if self.signum is not None:
                raise StopSignal(self.signum)
            yield
        finally:
            self._interruptible -= 1

    def _handle(self, signum: int, frame) -> None:
        del frame
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if self._interruptible:
            raise StopSignal(signum)
        again = " (Ctrl-C again stops at once, without saving)" if signum == signal.SIGINT else ""
        # os.write: print() may be in the middle of a write this handler interrupted.
        os.write(2, f"\n{signal.Signals(signum).name}: finishing the current meta-step, then saving a "
                    f"checkpoint{again}\n".encode())
