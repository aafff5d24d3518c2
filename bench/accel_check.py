"""The accelerator check's first part: every implementation against the float64 reference.

On whatever backend JAX runs, each name in ``jlocalconv.implementations.names()`` computes
the forward pass and both gradients (inputs and kernel) of a handful of small geometries,
in two number formats, and is compared element by element with
:mod:`bench.numpy_reference`. The geometries cover both data formats, every padding mode,
strides, dilation and 1-3 spatial dimensions, and one kernel-dominated problem (more
filters than 8x the batch, which "tiles" handles with a different plan).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

import jlocalconv
from bench.numpy_reference import Spec, local_conv_f64, local_conv_f64_vjp, output_shape


@dataclasses.dataclass(frozen=True)
class Case:
    """One geometry: ``input_shape`` is in ``spec.data_format``."""

    name: str
    input_shape: tuple[int, ...]
    filters: int
    spec: Spec

    def kernel_shape(self) -> tuple[int, int, int]:
        """Keras layout ``(output_items, feature_dim, filters)``."""
        first = self.spec.data_format == "channels_first"
        spatial = self.input_shape[2:] if first else self.input_shape[1:-1]
        channels = self.input_shape[1] if first else self.input_shape[-1]
        items = math.prod(output_shape(self.spec, spatial))
        return items, math.prod(self.spec.kernel_size) * channels, self.filters


@dataclasses.dataclass(frozen=True)
class Format:
    """A number format: operand dtype, how jlocalconv is asked to compute, tolerances.

    Tolerances bound ``max |result - reference| / max |reference|``. float32 at
    ``precision="highest"`` is exact to rounding; bfloat16 operands with float32
    accumulation give exact products and a float32 sum forward, but their gradients are
    rounded to bfloat16 (8 bits: 2^-8 relative at the largest entry, plus the cotangent
    rounded once). A wrong implementation is off by order 1.
    """

    dtype: str
    precision: str | None
    accumulate: str | None
    forward_tolerance: float
    gradient_tolerance: float


FORMATS = (
    Format("float32", "highest", None, 1e-4, 1e-4),
    Format("bfloat16", None, "float32", 1e-3, 2e-2),
)

_CF, _EXPLICIT = "channels_first", ((1, 2), (0, 1))
CASES = (
    Case("2d cf same s(2,1) d(1,2)", (2, 3, 9, 10), 4, Spec((3, 2), (2, 1), "same", (1, 2), _CF)),
    Case("1d cl causal d2", (3, 17, 2), 5, Spec((3,), (1,), "causal", (2,))),
    Case("2d cl valid", (2, 9, 8, 6), 4, Spec((3, 3), (1, 1))),
    Case("2d cl explicit s(1,2) d(2,1)", (2, 11, 7, 5), 3, Spec((2, 3), (1, 2), _EXPLICIT, (2, 1))),
    Case("3d cf same s(1,2,1)", (2, 2, 5, 6, 4), 3, Spec((2, 3, 2), (1, 2, 1), "same", None, _CF)),
    Case("2d cl kernel-dominated", (1, 6, 6, 8), 16, Spec((3, 3), (1, 1))),
)  # fmt: skip
# The smoke run's two cases between them cover both formats, padding, stride and dilation.
SMOKE_CASES = CASES[:2]


def check(names: tuple[str, ...], cases: tuple[Case, ...] = CASES, seed: int = 0) -> list[dict]:
    """One row per (implementation, case, format): relative errors and whether they pass.

    An implementation that raises is a failed row (its error in ``"error"``), never a crash.

    Returns:
      Rows with ``implementation``, ``case``, ``dtype``, ``errors`` (``forward``,
      ``grad_inputs``, ``grad_kernel``), ``tolerances``, ``ok`` and ``error``.

    Example:
      >>> rows = check(("patches",), CASES[:1])
      >>> [(r["dtype"], r["ok"]) for r in rows]
      [('float32', True), ('bfloat16', True)]
    """
    rows = []
    for case in cases:
        for fmt in FORMATS:
            operands = _operands(case, fmt, seed)
            expected = _reference(case, *operands)
            rows += [_row(name, case, fmt, operands, expected) for name in names]
    return rows


def failures(rows: list[dict]) -> list[str]:
    """A line naming implementation, case, format and error for every failed row."""
    lines = []
    for r in (r for r in rows if not r["ok"]):
        what = r["error"] or ", ".join(
            f"{part} relative error {err:.2g} > {r['tolerances'][part]:g}"
            for part, err in r["errors"].items()
            if not err <= r["tolerances"][part]  # NaN fails too
        )
        lines.append(
            f"FAILED jlocalconv implementation {r['implementation']!r} on {r['case']!r} "
            f"({r['dtype']}): {what}"
        )
    return lines


def _operands(case: Case, fmt: Format, seed: int) -> tuple[np.ndarray, ...]:
    """Inputs, kernel and cotangent, float32 holding values exactly representable in the dtype."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.input_shape, np.float32)
    k = rng.standard_normal(case.kernel_shape(), np.float32) / np.float32(3.0)
    g = rng.standard_normal(local_conv_f64(x, k, case.spec).shape, np.float32)
    low = getattr(ml_dtypes, fmt.dtype, np.float32)
    return x.astype(low).astype(np.float32), k.astype(low).astype(np.float32), g


def _reference(case: Case, x, k, g) -> tuple[np.ndarray, ...]:
    return (local_conv_f64(x, k, case.spec), *local_conv_f64_vjp(x, k, g, case.spec))


def _row(name: str, case: Case, fmt: Format, operands, expected) -> dict:
    row = {"implementation": name, "case": case.name, "dtype": fmt.dtype, "error": None}
    row["tolerances"] = {
        "forward": fmt.forward_tolerance,
        "grad_inputs": fmt.gradient_tolerance,
        "grad_kernel": fmt.gradient_tolerance,
    }
    try:
        got = _run(name, case, fmt, operands)
    except Exception as e:  # a crash on one backend is a failed check, reported by name
        row |= {"errors": {}, "ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        return row
    errors = dict(zip(row["tolerances"], map(_relative_error, got, expected)))
    row["errors"] = errors
    row["ok"] = all(errors[p] <= tol for p, tol in row["tolerances"].items())
    return row


def _run(name: str, case: Case, fmt: Format, operands) -> tuple[np.ndarray, ...]:
    """Forward result and the vjp of a float32 cotangent, jitted together (one compile)."""
    spec, dtype = case.spec, jnp.dtype(fmt.dtype)

    def conv(x, k):
        return jlocalconv.local_conv(
            x,
            k,
            spec.kernel_size,
            spec.strides,
            data_format=spec.data_format,
            padding=spec.padding,
            dilation=spec.rates,
            precision=fmt.precision,
            preferred_element_type=fmt.accumulate,
            implementation=name,
        )

    def forward_and_vjp(x, k, g):
        y, vjp = jax.vjp(conv, x, k)
        return (y, *vjp(g.astype(y.dtype)))

    x, k, g = operands
    outputs = jax.jit(forward_and_vjp)(jnp.asarray(x, dtype), jnp.asarray(k, dtype), g)
    return tuple(np.asarray(a, np.float64) for a in jax.device_get(outputs))


def _relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    if got.shape != expected.shape:
        return math.inf
    scale = max(float(np.max(np.abs(expected), initial=0.0)), np.finfo(np.float32).tiny)
    return float(np.max(np.abs(got - expected), initial=0.0) / scale)
