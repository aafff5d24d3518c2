"""The roofline bound ``max(FLOPs / peak, bytes / bandwidth)``, measured on this machine.

What is counted (the same for every candidate, independent of how it computes):

- forward: ``2 * B * P * D * F`` FLOPs (B batch, P output positions, D = prod(window) * C,
  F filters) and ``inputs + kernel + result`` bytes, each read or written once;
- forward+backward: three times the forward FLOPs (result, input gradient, kernel
  gradient) and ``3 * (inputs + kernel) + 2 * result`` bytes (forward: read x, k, write y;
  backward: read dy, x, k, write dx, dk).

For kernel-bound layers (kernel bytes dwarf inputs and results) the memory term is the
kernel bytes moved: read forward; read again and its gradient written backward.

Peak is XLA's jitted float32 matmul (2048^3). Bandwidth is measured the way STREAM does:
large arrays (256 MiB), every core, the best of a scale (``a = 3 b``) and a triad
(``a = b + 2 c``), counting bytes read and written. The destination is a donated
buffer, so each call streams into memory that is already mapped: a jitted triad
that allocates a fresh output pays the page faults of first touch and measured about
a third of the machine's bandwidth (facts.md), which made "fractions of the roofline"
exceed 100%.
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


def measure_machine(matmul_n: int = 2048, add_items: int = 1 << 26, budget_s: float = 1.0):
    """Times a jitted ``matmul_n``-cubed matmul and STREAM copy/triad on ``add_items`` floats.

    Returns:
      A :class:`Machine`: the matmul's median rate, the best bandwidth of copy and triad.
    """
    policy = Policy(min_repeats=3, max_repeats=20, budget_s=budget_s)
    a = jnp.asarray(np.random.default_rng(0).standard_normal((matmul_n, matmul_n), np.float32))
    matmul = jax.jit(jnp.matmul).lower(a, a).compile()
    t_mm = time_call(lambda: matmul(a, a).block_until_ready(), policy).median_s
    return Machine(peak_flops=2 * matmul_n**3 / t_mm, bandwidth=stream_bandwidth(add_items, policy))


def stream_bandwidth(items: int, policy: Policy) -> float:
    """Bytes/s of the better of STREAM scale (8 bytes/item) and triad (12) into a donated array.

    >>> stream_bandwidth(1 << 16, Policy(min_repeats=1, max_repeats=1)) > 0
    True
    """
    # STREAM "scale" rather than "copy": XLA would turn a plain copy into an alias.
    kernels = {"scale": (lambda a, b, c: 3 * b, 8), "triad": (lambda a, b, c: b + 2 * c, 12)}
    b, c = jnp.ones((items,), jnp.float32), jnp.full((items,), 2.0, jnp.float32)
    best = 0.0
    for fn, moved in kernels.values():
        # ``a`` is donated and unused: XLA writes the result into its (already touched) buffer.
        step = jax.jit(fn, donate_argnums=0)
        state = [step(jnp.zeros_like(b), b, c).block_until_ready()]

        def call(step=step, state=state):
            state[0] = step(state[0], b, c).block_until_ready()

        best = max(best, moved * items / time_call(call, policy).min_s)
    return best


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
