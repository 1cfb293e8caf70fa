"""Stopping training cleanly on SIGTERM (a scheduler's preemption) and SIGINT (Ctrl-C).

    with StopRequest() as stops:
        with stops.deferred():
            ...  # a meta-step: a signal here is recorded; the loop checks `stops.requested`
        ...      # elsewhere a signal raises StopSignal at once

While the trainer is inside `deferred()` (a meta-step with its bookkeeping, the
end of an epoch) a signal is only recorded: the loop finishes the step, saves a
checkpoint and stops. Outside it (start-up, validation, the final test) the
handler raises `StopSignal` at once: nothing there changes the training state,
so the trainer can save what it has and stop without waiting. A second Ctrl-C
raises KeyboardInterrupt at once, for a user who will not wait for the step.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading


class StopSignal(BaseException):
    """Raised by the handler outside `deferred()`.

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
        self._deferring = 0
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
    def deferred(self):
        """Within this block, a signal is only recorded."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1

    def _handle(self, signum: int, frame) -> None:
        del frame
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if not self._deferring:
            raise StopSignal(signum)
        again = " (Ctrl-C again stops at once, without saving)" if signum == signal.SIGINT else ""
        # os.write: print() may be in the middle of a write this handler interrupted.
        os.write(2, f"\n{signal.Signals(signum).name}: finishing the current meta-step, then saving a "
                    f"checkpoint{again}\n".encode())
