"""A/B of one cost-model constant: "auto" as it is and with the constant changed.

``python -m bench.studies.constant_ab MODULE.NAME=VALUE (--seeds 2-12 | --keys s54-4,...)
[--n 60] [--list] [--max N] [--rounds 10]``, e.g.
``python -m bench.studies.constant_ab tiles.LOOP_DERIVATIVES_MIN_OFFSETS=30 --seeds 2-12``.

Every constant of ``jlocalconv.implementations`` (``MODULE`` is ``implementations`` or one
of its modules: ``tiles``, ``shifts``, ``products``, ``_windows``, ...) is a hypothesis
measured on some problems; this is how a change to one is measured, on the sweep's random
problems (``bench.sweep.problems``) of the given seeds. ``--seeds`` keeps the problems whose
route the change alters (:func:`route`: auto's name, whether "slices" or "products"
differentiates, and the tile plan), ``--keys`` takes the named ones whatever. For each it
builds auto's forward and ``value_and_grad`` both ways and times them in alternation
(``bench.sweep``'s timing, one process), and prints per problem and in geometric means
the changed/current ratios of time (forward and forward+backward), compile time and XLA
temp memory, and lax's value_and_grad temp (compiled, not timed), flagging a problem the
change takes over the sweep's temp bounds on it (``NEWLY OVER``; the issue asks for every
problem within them) or back within. Tune on some seeds, then report on seeds drawn after
the change.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import gc
import importlib
import operator
import statistics
import types
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from bench import ours, sweep, sweep_temps
from bench.candidate import Problem
from bench.suite import DEFAULT, Shape
from bench.summary import geomean
from bench.sweep_report import temp_ok
from jlocalconv.implementations import products, tiles


def parse(assignment: str) -> tuple[types.ModuleType, str, object]:
    """``"tiles.MIN_TILES=4"`` -> (the module, the name, the value): a Python literal or
    numbers joined by ``+ - * / << **`` (as the constants are written: ``32 << 20``).

    >>> module, name, value = parse("tiles.MIN_TILES=4")
    >>> module.__name__, name, value
    ('jlocalconv.implementations.tiles', 'MIN_TILES', 4)
    >>> parse("tiles.TILE_BYTES=2 << 20")[2]
    2097152
    """
    target, sep, literal = assignment.partition("=")
    path, _, name = target.rpartition(".")
    if not sep or not path or not name:
        raise ValueError(f"expected MODULE.NAME=VALUE, got {assignment!r}")
    prefix = "jlocalconv.implementations"
    module = importlib.import_module(prefix if path == "implementations" else f"{prefix}.{path}")
    if not hasattr(module, name):
        raise ValueError(f"{module.__name__} has no {name}")
    return module, name, _value(ast.parse(literal.strip(), mode="eval").body)


_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.LShift: operator.lshift,
    ast.Pow: operator.pow,
}


def _value(node: ast.expr) -> object:
    """A literal, or arithmetic on literals (no names, no calls)."""
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_value(node.left), _value(node.right))
    return ast.literal_eval(node)


@contextlib.contextmanager
def changed(module: types.ModuleType, name: str, value: object, on: bool) -> Iterator[None]:
    """The constant as it is (``on`` False) or set to ``value``, restored on exit; the
    caches that hold decisions made from it are cleared both ways."""
    saved = getattr(module, name)
    setattr(module, name, value if on else saved)
    _clear()
    try:
        yield
    finally:
        setattr(module, name, saved)
        _clear()


def _clear() -> None:
    tiles.plan_tiles.cache_clear()  # plans are cached by problem, not by constant
    jax.clear_caches()  # so are traces


def route(shape: Shape) -> tuple:
    """What the cost model decides for ``shape``: auto's name, whether "slices" and
    "products" differentiate it (the routes "shifts" picks for itself) and the tile plan."""
    geom, dtype = shape.geometry(), np.dtype(jnp.dtype(shape.dtype))
    itemsize = max(dtype.itemsize, 4)  # "auto" computes 16-bit floats in float32
    args = (geom, shape.batch, shape.filters)
    return (
        ours.auto_choice(shape),
        tiles.derivatives_by_slices(*args, itemsize, dtype.itemsize),
        products.derivatives_by_products(*args, dtype),
        tiles.plan_tiles(*args, itemsize),
    )


def affected(seeds: range, n: int, change: tuple) -> list[Shape]:
    """The first ``n`` sweep problems of each seed whose :func:`route` ``change`` alters."""
    shapes = [shape for seed in seeds for shape in sweep.problems(n, seed)]
    routes = []
    for on in (False, True):
        with changed(*change, on):
            routes.append([route(shape) for shape in shapes])
    return [shape for shape, old, new in zip(shapes, *routes) if old != new]


def measure(shape: Shape, change: tuple, rounds: int) -> dict:
    """auto's forward and value_and_grad on ``shape``, current and changed, alternated."""
    problem, built, names = Problem.make(shape), {}, {}
    for on in (False, True):
        with changed(*change, on):
            built[on], names[on] = ours._build("auto", problem), ours.auto_choice(shape)
    times = sweep._alternate(built, rounds, budget_s=0.0)
    row = {"key": shape.key, "label": shape.label(), "names": names}
    for on, b in built.items():
        row[on] = {
            "fwd_ms": 1e3 * statistics.median(times[on]["fwd"]),
            "fwd_bwd_ms": 1e3 * statistics.median(times[on]["fwd_bwd"]),
            "compile_s": b.compile_s[1],
            "temp_mib": b.temp_bytes[1] / 2**20,
        }
    row["lax_temp_mib"] = sweep_temps.lax_temp_mib(shape)
    del built
    gc.collect()
    return row


def line(row: dict) -> str:
    """One problem: names and current -> changed (ratio) per measure."""
    old, new = row[False], row[True]
    parts = [f"{row['key']} {row['label']}: {row['names'][False]} -> {row['names'][True]}"]
    for key in ("fwd_ms", "fwd_bwd_ms", "compile_s", "temp_mib"):
        ratio = new[key] / old[key] if old[key] > 0 else float("nan")
        parts.append(f"{key} {old[key]:.3f} -> {new[key]:.3f} ({ratio:.2f})")
    parts.append(f"lax temp {row['lax_temp_mib']:.3f} MiB{_over_flag(row)}")
    return "; ".join(parts)


def within_temp_bounds(row: dict, on: bool) -> bool:
    """Whether ``row``'s value_and_grad temp, changed (``on``) or current, is within the
    sweep's bounds on lax's (``bench.sweep_report.temp_ok``)."""
    return temp_ok({"temp_auto_mib": row[on]["temp_mib"], "temp_lax_mib": row["lax_temp_mib"]})


def _over_flag(row: dict) -> str:
    before, after = (within_temp_bounds(row, on) for on in (False, True))
    return {(True, False): " NEWLY OVER", (False, True): " newly within"}.get((before, after), "")


def totals(rows: list[dict]) -> str:
    """Geometric means of changed/current (where both are positive) and the count of
    problems the change slowed by over 10% forward+backward."""
    means = []
    for key in ("fwd_ms", "fwd_bwd_ms", "compile_s", "temp_mib"):
        pairs = [(r[True][key], r[False][key]) for r in rows]
        means.append(f"{key} {geomean(a / b for a, b in pairs if a > 0 and b > 0):.3f}x")
    slower = sum(r[True]["fwd_bwd_ms"] > 1.1 * r[False]["fwd_bwd_ms"] for r in rows)
    over = [sum(not within_temp_bounds(r, on) for r in rows) for on in (False, True)]
    return (
        f"{len(rows)} problems, changed / current: {', '.join(means)}; slower > 1.1x: {slower}"
        f"; over the temp bounds: {over[0]} -> {over[1]}"
    )


def _seeds(text: str) -> range:
    low, _, high = text.partition("-")
    return range(int(low), int(high or low) + 1)


def _problem(key: str) -> Shape:
    """A sweep problem (``"s54-4"``) or a default suite shape (``"batch1"``)."""
    suite = {shape.key: shape for shape in DEFAULT}
    return suite[key] if key in suite else sweep.problem(key)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.studies.constant_ab", description=__doc__
    )
    parser.add_argument("assignment", help="MODULE.NAME=VALUE, e.g. tiles.MIN_TILES=4")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--seeds", type=_seeds, help="a seed or a range, e.g. 2-12")
    which.add_argument("--keys", help="sweep or suite problem keys, e.g. s54-4,batch1")
    parser.add_argument("--n", type=int, default=60, help="sweep problems drawn per seed")
    parser.add_argument("--list", action="store_true", help="list the problems, time none")
    parser.add_argument("--max", type=int, default=None, help="time at most this many")
    parser.add_argument("--rounds", type=int, default=10, help="alternated timing rounds")
    args = parser.parse_args(argv)
    change = parse(args.assignment)
    if args.keys:
        shapes = [_problem(key) for key in args.keys.split(",")]
    else:
        shapes = affected(args.seeds, args.n, change)
    print(f"{args.assignment}: {len(shapes)} problems", flush=True)
    if args.list:
        for shape in shapes:
            print(f"  {shape.key} {shape.label()}")
        return
    rows = []
    for shape in shapes[: args.max]:
        rows.append(measure(shape, change, args.rounds))
        print(line(rows[-1]), flush=True)
    print(totals(rows))


if __name__ == "__main__":
    main()
