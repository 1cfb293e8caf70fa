"""The one timing loop of the benchmarks in tools/: a warm-up call, then the median of timed calls.

    from timing import timed
    first_s, times = timed(lambda: step(batch).numpy(), repeats=5)
    seconds = statistics.median(times)

Each call must return only when its work is done (fetch a result: `.numpy()`); the first call,
which traces and compiles, is timed apart.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timed(call: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    """(seconds of the first call, seconds of each of `repeats` calls after it)."""
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return first, times


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    """The median seconds of `repeats` calls of `call` after a warm-up call."""
    return statistics.median(timed(call, repeats)[1])
