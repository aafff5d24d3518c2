"""Every jlocalconv implementation, and "auto", as benchmark candidates."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

import jlocalconv
from bench import jax_measure
from bench.candidate import Built, Candidate, Problem
from bench.suite import Shape
from jlocalconv import autotune, implementations


def candidates(autotuned: bool = False) -> list[Candidate]:
    """One candidate per name in ``jlocalconv.implementations.names()`` (discovered now),
    and ``"autotune"`` if ``autotuned``."""
    extra = ("autotune",) if autotuned else ()
    return [
        Candidate(f"jlocalconv:{name}", "jlocalconv", functools.partial(_build, name))
        for name in (*implementations.names(), *extra)
    ]


def auto_choice(shape: Shape) -> str | None:
    """The implementation "auto" picks for ``shape`` on the default backend, if knowable."""
    try:
        dtype = jnp.dtype(shape.dtype)
        backend = jax.default_backend()
        return implementations.choose(shape.geometry(), shape.batch, shape.filters, dtype, backend)
    except Exception:  # choose()'s signature belongs to another module
        return None


def autotune_choice(shape: Shape) -> str:
    """The implementation ``implementation="autotune"`` runs for ``shape`` (measured once).

    The same problem key as :func:`_build`'s calls (bf16 accumulates in float32), so the
    candidate built with ``"autotune"`` afterwards reuses this choice.
    """
    dtype = jnp.dtype(shape.dtype)
    geom = shape.geometry()
    x = jax.ShapeDtypeStruct(shape.input_shape, dtype)
    k = jax.ShapeDtypeStruct(geom.kernel_shape(shape.filters), dtype)
    return autotune.pick(geom, x, k, None, _accumulation(shape))


def _accumulation(shape: Shape) -> jnp.dtype | None:
    """bf16 operands accumulate (and return) in float32, the library's mixed precision."""
    return jnp.dtype(jnp.float32) if shape.dtype != "float32" else None


def _build(name: str, problem: Problem) -> Built:
    return jax_measure.build(local_conv_fn(name, problem.shape), *jax_measure.operands(problem))


def local_conv_fn(name: str, s: Shape) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``(x, k) -> local_conv(...)`` with ``implementation=name``, as the bench runs ``s``."""
    accumulate = _accumulation(s)

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

    return fn
