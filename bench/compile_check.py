"""value_and_grad compile time of "auto" against lax's, measured for the issue-13 target.

The per-candidate compile times of the report's tables are one compile each, and on a
shared 2-core machine one compile varies by up to 1.7x between runs (the suite's "same":
1.40x lax's in one run, 2.37x in the next, the very same programs). A bound of 2x lax's
is judged here instead on the median of ``repeats`` compiles of each, "auto" and lax
alternated so that drift hits both alike; each compile traces anew (a fresh ``jit`` of a
fresh function, as a notebook's first call does) after a ``gc.collect()``.
"""

from __future__ import annotations

import functools
import gc
import statistics
import time
from collections.abc import Callable, Iterable

import jax

from bench import jax_measure, ours
from bench.candidate import Problem
from bench.peers import lax_local
from bench.suite import Shape

REPEATS = 3


def ratios(shapes: Iterable[Shape], repeats: int = REPEATS) -> dict[str, dict[str, float]]:
    """``{shape key: {"auto_s", "lax_s", "ratio"}}``: median value_and_grad compile seconds
    of "auto" and of ``jax.lax.conv_general_dilated_local``, and auto's over lax's.

    Example (compiles, so not run as a doctest):
      ``ratios(bench.suite.SUITE[:1], repeats=1)["base"]["ratio"]``
    """
    out = {}
    for shape in shapes:
        problem = Problem.make(shape)
        x, k, g = jax_measure.operands(problem)
        lax_kernel = lax_local.lax_kernel(problem)
        # A fresh function per compile: jit caches traces by function.
        contenders = {
            "auto": (functools.partial(ours.local_conv_fn, "auto", shape), k),
            "lax": (functools.partial(lax_local.local_conv_fn, problem.geom), lax_kernel),
        }
        seconds: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(repeats):
            for name, (make, kernel) in contenders.items():
                seconds[name].append(_compile_seconds(make(), x, kernel, g))
        auto, lax = (statistics.median(seconds[n]) for n in ("auto", "lax"))
        out[shape.key] = {"auto_s": auto, "lax_s": lax, "ratio": auto / lax}
    return out


def _compile_seconds(fn: Callable, x: jax.Array, k: jax.Array, g: jax.Array) -> float:
    gc.collect()
    start = time.perf_counter()
    jax.jit(jax_measure.value_and_grad(fn)).lower(x, k, g).compile()
    return time.perf_counter() - start
