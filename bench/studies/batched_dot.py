"""How fast can XLA run a local convolution's contraction? (``python -m bench.studies.batched_dot``)

A locally connected layer is, per output position, a small ``(batch x features) @
(features x filters)`` product with that position's own weights: a batched ``dot_general``
with the positions as its batch axis. This script times that contraction alone, on windows
built in advance, in every operand layout (and as a loop of plain matmuls), next to a large
float32 matmul and to jlocalconv's "tiles" on the same problem, all in one process. The
batched dot is the ceiling of any pure-XLA implementation; its distance from the large
matmul is why the roofline target of issue 3 (50% of the matmul peak) is out of reach on CPU.

Default problem: the suite's "batch64" shape (64, 16x16, 32->32, 3x3): 196 positions of
64x288 @ 288x32. ``--smoke`` shrinks everything to seconds (the check CI runs).
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
from jax import lax

import jlocalconv
from bench.timing import Policy, time_call

# The contraction as einsums over windows (p positions, b batch, k features) and weights
# (p, k, f filters), each with its operands and result in another memory layout.
LAYOUTS = ("pbk,pkf->pbf", "pkb,pkf->pbf", "pbk,pfk->pbf", "pkb,pkf->pfb", "pbk,pkf->bpf")


def candidates(batch: int, side: int, channels: int, filters: int, window: int) -> dict:
    """``name -> (fn, args, flops)`` for the contraction, its variants and the references."""
    out = side - window + 1
    p, k = out * out, window * window * channels
    key = jax.random.key(0)
    x, w = jax.random.normal(key, (p, batch, k)), jax.random.normal(key, (p, k, filters))
    flops = 2 * p * batch * k * filters
    found = {}
    for spec in LAYOUTS:
        lhs, rhs = spec.split("->")[0].split(",")
        operands = (_arrange(x, "pbk", lhs), _arrange(w, "pkf", rhs))
        found[f"einsum {spec}"] = (functools.partial(jnp.einsum, spec), operands, flops)
    found["scan of matmuls"] = (_scan_matmuls, (x, w), flops)
    images = jax.random.normal(key, (batch, side, side, channels))
    tiles = lambda i, k: jlocalconv.local_conv2d(i, k, window, 1, implementation="tiles")
    found["jlocalconv tiles (windows included)"] = (tiles, (images, w), flops)
    n = 2048 if batch >= 16 else 256
    big = jax.random.normal(key, (n, n))
    found[f"matmul {n}^3 (the roofline's peak)"] = (jnp.matmul, (big, big), 2 * n**3)
    return found


def _arrange(array: jax.Array, have: str, want: str) -> jax.Array:
    return jnp.transpose(array, [have.index(axis) for axis in want])


def _scan_matmuls(x: jax.Array, w: jax.Array) -> jax.Array:
    return lax.scan(lambda c, xw: (c, xw[0] @ xw[1]), 0, (x, w))[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.studies.batched_dot", description=__doc__
    )
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, seconds")
    args = parser.parse_args(argv)
    shape = (2, 6, 2, 3, 3) if args.smoke else (64, 16, 32, 32, 3)
    policy = Policy(max_repeats=3 if args.smoke else 30, budget_s=0.1 if args.smoke else 1.0)
    device = jax.devices()[0].device_kind
    print(f"jax {jax.__version__}, {device}; batch, side, C, F, window = {shape}")
    for name, (fn, operands, flops) in candidates(*shape).items():
        call = functools.partial(jax.jit(fn), *operands)
        jax.block_until_ready(call())  # compile outside the timing
        timing = time_call(lambda call=call: jax.block_until_ready(call()), policy)
        rate = flops / timing.median_s / 1e9
        print(f"{name:40s} {timing.median_s * 1e3:9.3f} ms {rate:8.1f} GFLOP/s")


if __name__ == "__main__":
    main()
