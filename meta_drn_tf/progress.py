"""Progress bars: Keras's on a terminal, plain lines in a log file or a pipe.

    bar = progress.bar(total, unit_name="image")
    bar.update(done, [("loss", 0.3)])

Keras's `Progbar` redraws its line with carriage returns and ANSI colours whenever Python runs on
a POSIX system, whether or not its output is a terminal: a redirected log fills with escape codes.
"""

from __future__ import annotations

import sys
import time

import keras
import numpy as np


class PlainProgbar(keras.utils.Progbar):
    """A `keras.utils.Progbar` that writes plain lines: at most one every `interval` seconds, and one
    at the end (Keras's own summary line). No carriage returns, no colours.

    Args:
        target: the total number of units.
        interval: the fewest seconds between two lines.
        **kwargs: as for `keras.utils.Progbar` (`unit_name`, `stateful_metrics`); `verbose` is 2.
    """

    def __init__(self, target: int, interval: float = 30.0, **kwargs):
        super().__init__(target, verbose=2, **kwargs)
        self.interval = interval
        self._last_line = time.time()

    def update(self, current, values=None, finalize=None):
        super().update(current, values, finalize)
        done = current >= self.target if finalize is None else finalize
        now = time.time()
        if done or now - self._last_line < self.interval:
            return
        self._last_line = now
        figures = "".join(f" - {name}: {self._average(name):.4g}" for name in self._values_order)
        print(f"{current}/{self.target} {self.unit_name}s - {now - self._start:.0f}s{figures}", flush=True)

    def _average(self, name: str) -> float:
        value, count = self._values[name]  # Keras keeps (sum, count); a stateful metric's count is 1
        return float(np.mean(value)) / max(1, count)


def bar(target: int, **kwargs) -> keras.utils.Progbar:
    """Keras's progress bar where standard output is a terminal, else a `PlainProgbar`."""
    if hasattr(sys.stdout, "isatty") and sys.stdout.isatty():
        return keras.utils.Progbar(target, **kwargs)
    return PlainProgbar(target, **kwargs)
