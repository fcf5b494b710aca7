"""Interleaved latency measurement of several bound runners.

Why interleave: on a shared machine clock speed, cache contents and neighbours' load drift over
seconds.  Timing A for a while and then B for a while puts that drift into the A/B ratio; calling
A, B, A, B, ... (rotating who goes first each round) spreads it evenly over both, so the ratio of
their medians is stable even when the absolute numbers are not.

Why blocks (:func:`block_latencies`): onnxruntime's default keeps an idle session's threads
spinning for a while after each call.  Interleaved call by call, those spinning threads steal the
cores of the session being timed, so interleaving needs spinning off -- and with spinning off every
parallel operator pays a thread wake-up, which a server running one model with onnxruntime's
defaults never does.  To time that deployed setting, each timer runs a block of consecutive calls
and the blocks alternate, rotating who goes first, so slow drift still falls on every timer alike.
Measured on onnxruntime 1.32 (2 cores): after a session's last call its threads keep spinning for
20-40 ms, and the next session's first calls run up to 4x slow; so each block starts with a pause
(the other pools go idle) and a few discarded calls (this one's threads and caches warm up).
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


def block_latencies(
    timers: dict[Hashable, Callable[[], float]],
    warmup: int = 10,
    iterations: int = 50,
    *,
    rounds: int = 6,
    settle: int = 3,
    pause: float = 0.05,
    max_seconds: float | None = None,
    min_iterations: int = 5,
) -> dict[Hashable, list[float]]:
    """Call every timer ``warmup`` times (discarded), then ``rounds`` rounds of one block per timer.

    A block is a ``pause`` (seconds: the previous timer's spinning threads go idle), ``settle``
    discarded calls and ``ceil(iterations / rounds)`` kept ones.  The order of the blocks rotates
    every round; a timer stops once it has ``iterations`` samples.  ``max_seconds`` stops after a round once every
    timer has at least ``min_iterations`` samples.
    """
    keys = list(timers)
    for _ in range(max(warmup, 0)):
        for key in keys:
            timers[key]()
    iterations = max(iterations, 1)
    rounds = max(1, min(rounds, iterations))
    block = -(-iterations // rounds)
    samples: dict[Hashable, list[float]] = {key: [] for key in keys}
    started = time.perf_counter()
    for round_index in range(rounds):
        shift = round_index % len(keys) if keys else 0
        for key in keys[shift:] + keys[:shift]:
            todo = min(block, iterations - len(samples[key]))
            if todo <= 0:
                continue
            if pause > 0:
                time.sleep(pause)
            for _ in range(max(settle, 0)):
                timers[key]()
            samples[key].extend(float(timers[key]()) for _ in range(todo))
        enough = all(len(values) >= min(min_iterations, iterations) for values in samples.values())
        if max_seconds is not None and enough and time.perf_counter() - started > max_seconds:
            break
    return samples
