"""One candidate on one problem: build, check, time; the row every report reads."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from bench.candidate import Candidate, Problem, Skip
from bench.timing import Policy, time_call


def measure(
    cand: Candidate,
    problem: Problem,
    policy: Policy,
    relative_error: Callable[[np.ndarray], float],
    tolerance: float,
) -> tuple[dict | None, str | None]:
    """``(row, None)``, or ``(None, why)`` when the candidate skipped or failed.

    Args:
      cand: what to build and time.
      problem: the shared problem arrays.
      policy: how long to time forward and forward+backward.
      relative_error: the built forward result -> its error against the caller's reference.
      tolerance: the largest ``relative_error`` that passes the check.

    Returns:
      The row (times in ms, compile seconds, XLA temp bytes, the check), or why there is none.
    """
    start = time.perf_counter()
    try:
        built = cand.build(problem)
        build_s = time.perf_counter() - start  # compile/trace, warm-up and layer set-up
        fwd = time_call(built.forward, policy)
        vag = time_call(built.forward_backward, policy)
    except Skip as e:
        return None, str(e)
    except Exception as e:  # a variant failing on a shape is a result, not a crash
        first_line = str(e).splitlines()[0][:300] if str(e) else ""
        return None, f"failed: {type(e).__name__}: {first_line}"
    err = relative_error(built.result)
    row = {
        "shape": problem.shape.key,
        "candidate": cand.name,
        "family": cand.family,
        "fwd_ms": fwd.median_s * 1e3,
        "fwd_bwd_ms": vag.median_s * 1e3,
        "fwd_min_ms": fwd.min_s * 1e3,
        "fwd_bwd_min_ms": vag.min_s * 1e3,
        "repeats": [fwd.repeats, vag.repeats],
        "build_s": build_s,
        "compile_fwd_s": built.compile_s[0],
        "compile_fwd_bwd_s": built.compile_s[1],
        "temp_fwd_bytes": built.temp_bytes[0],
        "temp_fwd_bwd_bytes": built.temp_bytes[1],
        "check_rel_err": err,
        "check_ok": err <= tolerance,
    }
    return row, None
