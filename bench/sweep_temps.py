"""``python -m bench.sweep_temps REPORT.json``: auto's temp memory on a committed sweep, now.

XLA's temp bytes are a property of the compiled program, not of a timing, so a change
that only moves memory can be checked on every problem of a sweep without timing it
again: this recompiles auto's ``value_and_grad`` (as ``python -m bench --sweep`` builds
it) for each problem of the report, compares it with the lax temp the report recorded
and prints the problems over its bounds (``bench.sweep_report.temp_ok``). Compile only:
nothing runs, so it takes a few minutes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp

from bench import jax_measure, ours
from bench.peers import lax_local
from bench.suite import Shape
from bench.sweep_report import temp_ok


def shape_of(entry: dict) -> Shape:
    """The :class:`~bench.suite.Shape` a sweep report entry was measured on."""
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in entry["shape"].items()}
    return Shape(**fields)


def auto_temp_mib(shape: Shape) -> float:
    """auto's value_and_grad temp MiB on ``shape`` (compile only)."""
    kernel = shape.geometry().kernel_shape(shape.filters)
    return _temp_mib(ours.local_conv_fn("auto", shape), shape, kernel)


def lax_temp_mib(shape: Shape) -> float:
    """``jax.lax.conv_general_dilated_local``'s value_and_grad temp MiB on ``shape``, its
    kernel in lax's layout, as the sweep builds it (compile only)."""
    geom = shape.geometry()
    kernel = lax_local.lax_kernel_shape(geom, shape.filters)
    return _temp_mib(lax_local.local_conv_fn(geom), shape, kernel)


def _temp_mib(fn: Callable, shape: Shape, kernel_shape: tuple[int, ...]) -> float:
    dtype = jnp.dtype(shape.dtype)
    x = jax.ShapeDtypeStruct(shape.input_shape, dtype)
    k = jax.ShapeDtypeStruct(kernel_shape, dtype)
    g = jax.ShapeDtypeStruct(jax.eval_shape(fn, x, k).shape, jnp.float32)
    return jax_measure.temp_bytes(jax_measure.value_and_grad(fn), x, k, g) / 2**20


def recheck(report: dict) -> list[dict]:
    """Per problem: key, the recorded and the current auto temp, lax's, and whether it is
    within the bounds now."""
    rows = []
    for entry in report["problems"]:
        now = auto_temp_mib(shape_of(entry))
        ok = temp_ok(entry | {"temp_auto_mib": now})
        rows.append(dict(key=entry["shape"]["key"], recorded=entry["temp_auto_mib"], now=now,
                         lax=entry["temp_lax_mib"], ok=ok))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    paths = (argv if argv is not None else sys.argv[1:]) or []
    for path in paths:
        rows = recheck(json.loads(Path(path).read_text()))
        print(f"{path}: auto value_and_grad temp MiB, recorded -> now (lax)")
        for r in rows:
            recorded, lax = (_mib(r[key]) for key in ("recorded", "lax"))
            flag = "" if r["ok"] else "  OVER"
            print(f"  {r['key']}: {recorded} -> {r['now']:.2f} ({lax}){flag}")
        over = [r["key"] for r in rows if not r["ok"]]
        print(f"  over the bounds now: {len(over)} {over}")
    return 0


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    raise SystemExit(main())
