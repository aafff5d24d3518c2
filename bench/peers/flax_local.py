"""``flax.linen.ConvLocal`` (which wraps ``jax.lax.conv_general_dilated_local``)."""

from __future__ import annotations

import jax.numpy as jnp

from bench import jax_measure
from bench.candidate import Built, Candidate, Problem
from bench.peers import require
from bench.peers.lax_local import lax_kernel


def candidates(options) -> list[Candidate]:
    del options
    linen = require("flax.linen")
    return [Candidate("flax.ConvLocal", "jax", lambda problem: _build(linen, problem))]


def _build(linen, problem: Problem) -> Built:
    geom, dtype = problem.geom, jnp.dtype(problem.shape.dtype)
    layer = linen.ConvLocal(
        features=problem.shape.filters,
        kernel_size=geom.kernel_size,
        strides=geom.strides,
        padding=list(geom.padding),
        kernel_dilation=geom.dilation,
        use_bias=False,
        dtype=dtype,
        param_dtype=dtype,
    )
    x, _, g = jax_measure.operands(problem)

    def fn(x, kernel):
        return layer.apply({"params": {"kernel": kernel}}, x)

    return jax_measure.build(fn, x, lax_kernel(problem), g)
