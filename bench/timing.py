"""Adaptive wall-clock timing: warm up, then repeat until a time budget is spent."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Policy:
    """How long to time one measurement.

    Attributes:
      warmup: untimed calls first (compilation/tracing is done before, separately).
      min_repeats: timed calls made even when they overrun ``budget_s``.
      max_repeats: timed calls at most.
      budget_s: stop once this much time has been spent timing (after ``min_repeats``).
      cap_s: stop once this much has been spent even before ``min_repeats`` (after one
        call), so a peer taking seconds per call cannot stretch the run by minutes.
    """

    warmup: int = 1
    min_repeats: int = 3
    max_repeats: int = 30
    budget_s: float = 0.5
    cap_s: float = 2.0


@dataclasses.dataclass(frozen=True)
class Timing:
    """Median and minimum seconds of ``repeats`` timed calls."""

    median_s: float
    min_s: float
    repeats: int


def time_call(fn: Callable[[], object], policy: Policy) -> Timing:
    """Times ``fn()`` (which must block until its work is done) under ``policy``.

    Example:
      >>> t = time_call(lambda: sum(range(100)), Policy(min_repeats=2, max_repeats=2))
      >>> t.repeats
      2
    """
    for _ in range(policy.warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while _more(policy, len(times), time.perf_counter() - start):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), min(times), len(times))


def _more(policy: Policy, done: int, spent: float) -> bool:
    if done >= policy.max_repeats or (done and spent >= policy.cap_s):
        return False
    return done < policy.min_repeats or spent < policy.budget_s
