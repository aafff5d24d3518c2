"""Compiles a JAX function and its value_and_grad: compile time, XLA temp memory, warm-up."""

from __future__ import annotations

import gc
import hashlib
import re
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bench.candidate import Built, Problem


def operands(problem: Problem) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Inputs and kernel (Keras layout) in the shape's dtype, and the float32 cotangent."""
    dtype = jnp.dtype(problem.shape.dtype)
    x = jnp.asarray(problem.inputs, dtype)
    k = jnp.asarray(problem.kernel, dtype)
    return x, k, jnp.asarray(problem.cotangent)


def build(fn: Callable[[jax.Array, jax.Array], jax.Array], x, k, g) -> Built:
    """Jits ``fn(x, k)`` and ``value_and_grad`` of ``sum(fn(x, k) * g)`` w.r.t. ``x`` and ``k``.

    Both are compiled ahead of time (``jit(f).lower(...).compile()``), which gives the
    compile time (tracing included, after a ``gc.collect()``, so that garbage left by
    earlier contenders is not collected inside this one's timing: the collector took 8%
    of a compile profile's samples) and ``memory_analysis().temp_size_in_bytes``; the
    compiled executables are what gets timed, so every JAX variant pays the same
    dispatch cost.

    ``fn`` must return channels_last results; ``g`` is float32 and the product is taken in
    float32 (bf16 results are upcast), as for every peer.
    """

    fwd, fwd_s, fwd_temp = _compile(fn, x, k)
    vag, vag_s, vag_temp = _compile(value_and_grad(fn), x, k, g)
    result = np.asarray(jax.device_get(fwd(x, k)), np.float32)
    jax.block_until_ready(vag(x, k, g))
    return Built(
        forward=lambda: jax.block_until_ready(fwd(x, k)),
        forward_backward=lambda: jax.block_until_ready(vag(x, k, g)),
        result=result,
        compile_s=(fwd_s, vag_s),
        temp_bytes=(fwd_temp, vag_temp),
        programs=(program_fingerprint(fwd), program_fingerprint(vag)),
    )


def program_fingerprint(compiled: jax.stages.Compiled) -> str:
    """A digest of what ``compiled`` runs: its optimized HLO, metadata aside.

    Two candidates with one fingerprint run the very same program (e.g. "shifts"
    differentiated by the "slices" route and auto's ``"slices/slices"``), so a timing
    difference between them is noise; ``bench.sweep`` times such twins once. Kept: every
    computation's instructions, shapes, layouts and operand wiring. Dropped: the module
    name and source locations (the tables of file and function names and each
    instruction's ``metadata``), and instruction and parameter names, renumbered in order of
    first appearance or dropped (tracing numbers them by call history).
    """
    lines = compiled.as_text().splitlines()
    text = "\n".join(line for line in lines if line.startswith((" ", "ENTRY", "%", "}")))
    text = re.sub(r",? ?metadata=\{[^}]*\}", "", text)
    text = re.sub(r"[\w.\-]+: ", "", text)  # parameter names in computation signatures
    names: dict[str, str] = {}
    text = re.sub(r"%[\w.\-]+", lambda m: names.setdefault(m.group(), f"%{len(names)}"), text)
    return hashlib.sha256(text.encode()).hexdigest()


def value_and_grad(fn: Callable[[jax.Array, jax.Array], jax.Array]) -> Callable:
    """``(x, k, g) -> (sum(fn(x, k) * g), (d/dx, d/dk))``: what every JAX peer's
    forward+backward runs (the product in float32, bf16 results upcast)."""

    def loss(x, k, g):
        return jnp.sum(fn(x, k).astype(jnp.float32) * g)

    return jax.value_and_grad(loss, argnums=(0, 1))


def temp_bytes(fn: Callable, *args) -> int | None:
    """XLA's temp bytes for ``jit(fn)`` on ``args`` (arrays or ``ShapeDtypeStruct``s):
    compile only, nothing runs."""
    return _compile(fn, *args)[2]


def _compile(fn, *args):
    gc.collect()
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    seconds = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    temp = None if analysis is None else int(analysis.temp_size_in_bytes)
    return compiled, seconds, temp
