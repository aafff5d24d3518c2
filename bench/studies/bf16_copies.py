"""Why XLA:CPU holds bf16 data in float32 (``python -m bench.studies.bf16_copies [--smoke]``).

XLA's CPU backend runs a ``float-normalization-bf16`` pass that rewrites bf16 data
movement (``dynamic-slice``, ``concatenate``) into float32 ops on a converted operand;
loop-invariant code motion then hoists the conversion of a whole operand out of a loop.
Two programs show it, each compiled twice, its bf16 data moved as bf16 and as uint16 bits
(which no conversion follows), and report XLA's temp memory (compile only, nothing runs):

* ``kernel blocks``: a ``lax.scan`` reading one bf16 filter block per step (as the tile
  loop does) holds a float32 copy of the whole kernel;
* ``window stack``: a bf16 window tensor kept for a reduction after an unrelated
  computation (as the rows kernel gradient keeps its windows) is stored in float32.

Bits are not differentiable, and a ``custom_jvp`` that restores the derivative loses its
rule inside a ``lax.scan`` (JAX inlines its value route there), so jlocalconv does not
use them (README, Performance). ``--smoke`` shrinks the sizes (the check CI runs).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

BITS = jnp.uint16


def _moved(data: jax.Array, bits: bool, move: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """``move(data)``, on its uint16 bits if ``bits`` (the same values back as bf16)."""
    if not bits:
        return move(data)
    return lax.bitcast_convert_type(move(lax.bitcast_convert_type(data, BITS)), data.dtype)


def kernel_blocks(kernel: jax.Array, windows: jax.Array, bits: bool) -> jax.Array:
    """A scan over blocks of positions: each step converts its bf16 filter block to
    float32 and contracts it with that block's float32 windows."""
    steps = 8
    size = kernel.shape[0] // steps

    def step(out: jax.Array, i: jax.Array) -> tuple[jax.Array, None]:
        start = i * size
        block = _moved(kernel, bits, lambda k: lax.dynamic_slice_in_dim(k, start, size))
        rows = lax.dynamic_slice_in_dim(windows, start, size)
        y = jnp.einsum("pbk,pkf->pbf", rows, block.astype(jnp.float32))
        return lax.dynamic_update_slice_in_dim(out, y, start, 0), None

    shape = (kernel.shape[0], windows.shape[1], kernel.shape[2])
    return lax.scan(step, jnp.zeros(shape, jnp.float32), jnp.arange(steps))[0]


def _stack(x: jax.Array, offsets: int = 8) -> jax.Array:
    """Every offset's slice of a sequence, stacked: a window tensor."""
    return jnp.stack([x[:, o : o + x.shape[1] - offsets] for o in range(offsets)], -1)


def window_stack(inputs: jax.Array, other: jax.Array, bits: bool) -> jax.Array:
    """bf16 windows (:func:`_stack`) kept while ``other`` is reduced, then widened and
    reduced themselves: a residual stored between two computations."""
    patches = _moved(inputs, bits, _stack)
    first = jnp.sum(jnp.sin(other) ** 2)  # something else between the stack and its use
    return first + jnp.sum(patches.astype(jnp.float32) ** 2)


def _temp_mib(fn: Callable, *args: jax.ShapeDtypeStruct) -> float:
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2**20


def report(scale: int) -> list[tuple[str, float, float, float]]:
    """``(program, MiB of its bf16 data, temp MiB moved as bf16, temp MiB moved as bits)``:
    where XLA widens the data, the first temp exceeds the second by the data's own size
    (float32 holds twice its bf16 bytes)."""
    positions, batch, features, filters = 64 * scale, 4, 300, 4
    kernel = jax.ShapeDtypeStruct((positions, features, filters), jnp.bfloat16)
    windows = jax.ShapeDtypeStruct((positions, batch, features), jnp.float32)
    inputs = jax.ShapeDtypeStruct((batch, 4096 * scale), jnp.bfloat16)
    other = jax.ShapeDtypeStruct((batch, 4096 * scale), jnp.float32)
    rows = []
    for name, fn, args, data in (
        ("kernel blocks", kernel_blocks, (kernel, windows), kernel),
        ("window stack", window_stack, (inputs, other), jax.eval_shape(_stack, inputs)),
    ):
        plain, bits = (_temp_mib(functools.partial(fn, bits=b), *args) for b in (False, True))
        rows.append((name, data.size * data.dtype.itemsize / 2**20, plain, bits))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small sizes, seconds")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}; XLA temp memory, MiB")
    print(f"{'program':14s} {'bf16 data':>10s} {'moved as bf16':>14s} {'as bits':>8s}")
    for name, data, plain, bits in report(1 if args.smoke else 16):
        print(f"{name:14s} {data:10.2f} {plain:14.2f} {bits:8.2f}")


if __name__ == "__main__":
    main()
