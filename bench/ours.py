"""Every jlocalconv implementation, and "auto", as benchmark candidates."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

import jlocalconv
from bench import jax_measure
from bench.candidate import Built, Candidate, Problem
from bench.suite import Shape
from jlocalconv import implementations


def candidates() -> list[Candidate]:
    """One candidate per name in ``jlocalconv.implementations.names()`` (discovered now)."""
    return [
        Candidate(f"jlocalconv:{name}", "jlocalconv", functools.partial(_build, name))
        for name in implementations.names()
    ]


def auto_choice(shape: Shape) -> str | None:
    """The implementation "auto" picks for ``shape`` on the default backend, if knowable."""
    try:
        dtype = jnp.dtype(shape.dtype)
        backend = jax.default_backend()
        return implementations.choose(shape.geometry(), shape.batch, shape.filters, dtype, backend)
    except Exception:  # choose()'s signature belongs to another module
        return None


def _build(name: str, problem: Problem) -> Built:
    s = problem.shape
    # bf16 operands accumulate (and return) in float32, the library's mixed-precision path.
    accumulate = jnp.float32 if s.dtype != "float32" else None

    def fn(x, k):
        return jlocalconv.local_conv(
            x,
            k,
            s.kernel_size,
            s.strides,
            padding=s.padding,
            dilation=s.dilation or 1,
            preferred_element_type=accumulate,
            implementation=name,
        )

    return jax_measure.build(fn, *jax_measure.operands(problem))
