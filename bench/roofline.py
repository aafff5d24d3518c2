"""The roofline bound ``max(FLOPs / peak, bytes / bandwidth)``, measured on this machine.

What is counted (the same for every candidate, independent of how it computes):

- forward: ``2 * B * P * D * F`` FLOPs (B batch, P output positions, D = prod(window) * C,
  F filters) and ``inputs + kernel + result`` bytes, each read or written once;
- forward+backward: three times the forward FLOPs (result, input gradient, kernel
  gradient) and ``3 * (inputs + kernel) + 2 * result`` bytes (forward: read x, k, write y;
  backward: read dy, x, k, write dx, dk).

Peak is XLA's jitted float32 matmul (2048^3) and bandwidth a jitted elementwise add of two
128 MiB float32 arrays (read two, write one), both timed in the same run.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from bench.suite import Shape
from bench.timing import Policy, time_call


@dataclasses.dataclass(frozen=True)
class Machine:
    """Measured float32 matmul peak (FLOP/s) and streaming bandwidth (bytes/s)."""

    peak_flops: float
    bandwidth: float


@dataclasses.dataclass(frozen=True)
class Work:
    """FLOPs and bytes of one forward or forward+backward pass."""

    flops: float
    bytes: float


def measure_machine(matmul_n: int = 2048, add_items: int = 1 << 25, budget_s: float = 1.0):
    """Times a jitted ``matmul_n``-cubed matmul and an add of two ``add_items`` arrays.

    Returns:
      A :class:`Machine`; the median of several calls after a warm-up.
    """
    policy = Policy(min_repeats=3, max_repeats=20, budget_s=budget_s)
    a = jnp.asarray(np.random.default_rng(0).standard_normal((matmul_n, matmul_n), np.float32))
    matmul = jax.jit(jnp.matmul).lower(a, a).compile()
    t_mm = time_call(lambda: matmul(a, a).block_until_ready(), policy).median_s
    v = jnp.ones((add_items,), jnp.float32)
    add = jax.jit(jnp.add).lower(v, v).compile()
    t_add = time_call(lambda: add(v, v).block_until_ready(), policy).median_s
    return Machine(peak_flops=2 * matmul_n**3 / t_mm, bandwidth=3 * 4 * add_items / t_add)


def work(shape: Shape, backward: bool) -> Work:
    """The counted FLOPs and bytes (module docstring) of ``shape``'s forward or fwd+bwd.

    The result is counted in float32 for bf16 shapes (jlocalconv accumulates in float32).
    """
    geom = shape.geometry()
    itemsize = 4 if shape.dtype == "float32" else 2
    flops = 2.0 * shape.batch * geom.output_items * geom.feature_dim * shape.filters
    x = float(np.prod(shape.input_shape)) * itemsize
    k = float(shape.kernel_items()) * itemsize
    y = float(shape.batch * geom.output_items * shape.filters) * 4
    if backward:
        return Work(3 * flops, 3 * (x + k) + 2 * y)
    return Work(flops, x + k + y)


def bound(w: Work, machine: Machine) -> tuple[float, str]:
    """Seconds of the roofline bound and what limits it (``"compute"`` or ``"memory"``)."""
    compute, memory = w.flops / machine.peak_flops, w.bytes / machine.bandwidth
    return (compute, "compute") if compute >= memory else (memory, "memory")
