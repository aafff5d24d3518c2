"""``jax.lax.conv_general_dilated_local``: patch extraction + contraction in lax's layout."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from bench import jax_measure
from bench.candidate import Built, Candidate, Problem
from jlocalconv.geometry import Geometry


def candidates(options) -> list[Candidate]:
    del options
    return [Candidate("jax.lax", "jax", _build)]


def dimension_numbers(ndim: int) -> tuple[str, str, str]:
    """Channels-last specs, e.g. ``("NHWC", "HWIO", "NHWC")`` for 2-D."""
    letters = "DHW"[-ndim:]
    lhs = f"N{letters}C"
    return lhs, f"{letters}IO", lhs


def lax_kernel_shape(geom: Geometry, filters: int) -> tuple[int, ...]:
    """lax's kernel layout: ``(*output_shape, C * prod(k), filters)``."""
    return (*geom.output_shape, geom.feature_dim, filters)


def lax_kernel(problem: Problem) -> jnp.ndarray:
    """The Keras kernel in lax's layout (:func:`lax_kernel_shape`).

    Converted once, outside timing: a model using lax would store its kernel this way.
    """
    shape = lax_kernel_shape(problem.geom, problem.shape.filters)
    k = problem.kernel_channels_major().reshape(shape)
    return jnp.asarray(k, jnp.dtype(problem.shape.dtype))


def local_conv_fn(geom: Geometry) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``(x, rhs) -> conv_general_dilated_local(...)`` for ``geom``, channels_last, the
    kernel in lax's layout (:func:`lax_kernel`)."""

    def fn(x, rhs):
        return lax.conv_general_dilated_local(
            x,
            rhs,
            geom.strides,
            geom.padding,
            geom.kernel_size,
            rhs_dilation=geom.dilation,
            dimension_numbers=dimension_numbers(geom.ndim),
        )

    return fn


def _build(problem: Problem) -> Built:
    x, _, g = jax_measure.operands(problem)
    return jax_measure.build(local_conv_fn(problem.geom), x, lax_kernel(problem), g)
