"""Interleaved latency measurement of several bound runners.

Why interleave: on a shared machine clock speed, cache contents and neighbours' load drift over
seconds.  Timing A for a while and then B for a while puts that drift into the A/B ratio; calling
A, B, A, B, ... (rotating who goes first each round) spreads it evenly over both, so the ratio of
their medians is stable even when the absolute numbers are not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


def interleaved_latencies(
    timers: dict[Hashable, Callable[[], float]],
    warmup: int = 10,
    iterations: int = 50,
    *,
    max_seconds: float | None = None,
    min_iterations: int = 5,
) -> dict[Hashable, list[float]]:
    """Call every timer ``warmup`` times (discarded), then ``iterations`` rounds of one call each.

    Each timer is a ``run_once() -> milliseconds`` from :meth:`Runner.timer`.  The order inside a
    round rotates every round.  ``max_seconds`` stops early (after at least ``min_iterations``
    rounds) so a slow model cannot hold a shared machine for long.  Returns the kept latencies.
    """
    keys = list(timers)
    for _ in range(max(warmup, 0)):
        for key in keys:
            timers[key]()
    samples: dict[Hashable, list[float]] = {key: [] for key in keys}
    started = time.perf_counter()
    for round_index in range(max(iterations, 1)):
        shift = round_index % len(keys) if keys else 0
        for key in keys[shift:] + keys[:shift]:
            samples[key].append(float(timers[key]()))
        if max_seconds is not None and round_index + 1 >= min_iterations and time.perf_counter() - started > max_seconds:
            break
    return samples
