"""Unstrided windows differentiated by "slices", axis by axis: faster, leaner?

``python -m bench.studies.unstrided_tangent [--seeds 7 8 9] [--n 62] [--smoke]``.

"auto" differentiates small window tensors by "slices" (the derivative route of
"tiles/slices" and of "shifts"). Since 2026-11-30 that route stacks windows of 20 or more
offsets one spatial axis at a time where the last stage's input is at most 1.25x its
output (``jlocalconv.implementations._windows.sliced_by_axis``): unstrided windows. This
study measures that rule on problems it was not tuned on: the sweep's random problems of
the given seeds (``bench.sweep.problems``) with their strides set to 1, kept where the
rule applies and "auto" takes the "slices" derivatives. For each it times auto's
value_and_grad with the rule off (the one-shot stack) and on, in alternation
(``bench.sweep``'s timing), and reports both compile times (lower + compile, one sample)
and XLA temp memories against lax's.

``--smoke`` runs one small problem in seconds (the check CI runs).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import platform
import statistics
import sys
from collections.abc import Iterator

import jax

from bench import jax_measure, ours, sweep
from bench.candidate import Problem
from bench.peers import lax_local
from bench.suite import Shape
from bench.summary import geomean
from jlocalconv.implementations import slices
from jlocalconv.implementations._windows import sliced_by_axis

SMOKE = Shape("smoke", 2, (24, 22), 1, 2, (5, 5), (1, 1))
MAX_WINDOW_BYTES = 48 << 20  # "slices" derivatives need the window tensor to fit anyway


def problems(seeds: tuple[int, ...], n: int) -> list[Shape]:
    """The unstrided variants of the first ``n`` sweep problems of each seed that the rule
    sends axis by axis and "auto" differentiates by "slices"."""
    found = []
    for seed in seeds:
        for drawn in sweep.problems(n, seed):
            shape = dataclasses.replace(drawn, key=drawn.key + "u", strides=(1,) * drawn.ndim)
            if _qualifies(shape):
                found.append(shape)
    return found


def _qualifies(shape: Shape) -> bool:
    try:
        geom = shape.geometry()
    except ValueError:  # a dilated window larger than the unstrided extent
        return False
    window_bytes = 4 * geom.output_items * shape.batch * geom.feature_dim
    route = ours.auto_choice(shape)
    return (
        sliced_by_axis(geom, shape.batch, 4)
        and route in ("shifts", "tiles/slices", "slices/slices")
        and window_bytes <= MAX_WINDOW_BYTES
    )


@contextlib.contextmanager
def _rule(on: bool) -> Iterator[None]:
    """The rule as it is, or off (the one-shot stack): ``slices_tangent`` reads it at trace
    time from its module, so this swaps it there for the builds inside."""
    saved = slices.sliced_by_axis
    slices.sliced_by_axis = saved if on else (lambda *_: False)
    jax.clear_caches()  # traces are cached by function and shapes, not by this switch
    try:
        yield
    finally:
        slices.sliced_by_axis = saved


def measure(shape: Shape, rounds: int, budget_s: float) -> dict:
    """auto's value_and_grad on ``shape`` with the rule off and on, and lax's temp memory."""
    problem = Problem.make(shape)
    operands = jax_measure.operands(problem)
    built = {}
    for on in (False, True):
        with _rule(on):
            built["on" if on else "off"] = jax_measure.build(
                ours.local_conv_fn("auto", shape), *operands
            )
    lax_temp = lax_local.candidates(None)[0].build(problem).temp_bytes[1]
    times = sweep._alternate(built, rounds, budget_s)
    row = {"label": shape.label(), "route": ours.auto_choice(shape)}
    row["lax_temp_mib"] = lax_temp / 2**20
    for name, b in built.items():
        row[f"{name}_ms"] = 1e3 * statistics.median(times[name]["fwd_bwd"])
        row[f"{name}_compile_s"] = b.compile_s[1]
        row[f"{name}_temp_mib"] = b.temp_bytes[1] / 2**20
    return row


def markdown(rows: list[dict]) -> str:
    """The table and the geometric means of the on/off ratios."""
    head = "| problem | auto | fwd+bwd ms off / on | compile s off / on | temp MiB off / on |"
    lines = [head + " lax temp MiB |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['route']} | {r['off_ms']:.3g} / {r['on_ms']:.3g} | "
            f"{r['off_compile_s']:.2f} / {r['on_compile_s']:.2f} | "
            f"{r['off_temp_mib']:.2f} / {r['on_temp_mib']:.2f} | {r['lax_temp_mib']:.2f} |"
        )
    over = sum(r["on_temp_mib"] > r["lax_temp_mib"] + 1 for r in rows)
    means = ", ".join(
        f"{what} {_ratio_geomean(rows, key):.2f}x"
        for what, key in (("fwd+bwd time", "ms"), ("compile", "compile_s"), ("temp", "temp_mib"))
    )
    lines.append(f"\n{len(rows)} problems; rule on / off, geometric means: {means}; "
                 f"temp over lax's + 1 MiB with the rule on: {over}.")  # fmt: skip
    return "\n".join(lines)


def _ratio_geomean(rows: list[dict], key: str) -> float:
    """Geometric mean of on / off over the rows where both are positive (a temp can be 0)."""
    pairs = [(r[f"on_{key}"], r[f"off_{key}"]) for r in rows]
    return geomean(on / off for on, off in pairs if on > 0 and off > 0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.studies.unstrided_tangent", description=__doc__
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    parser.add_argument("--n", type=int, default=62, help="sweep problems drawn per seed")
    parser.add_argument("--smoke", action="store_true", help="one small problem, seconds")
    args = parser.parse_args(argv)
    shapes = [SMOKE] if args.smoke else problems(tuple(args.seeds), args.n)
    rounds, budget = (1, 0.0) if args.smoke else (9, 2.0)
    command = " ".join(["python -m bench.studies.unstrided_tangent", *(argv or sys.argv[1:])])
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print("# Unstrided windows differentiated by slices: one-shot stack (off), axis by axis (on)\n")
    print(f"- command: `{command}` ({datetime.date.today()})")
    print(f"- machine: {machine}; jax {jax.__version__}; {rounds}-{4 * rounds} rounds, median\n")
    rows = []
    for shape in shapes:
        row = measure(shape, rounds, budget)
        rows.append(row)
        print(f"{shape.key}: {row['off_ms']:.3g} -> {row['on_ms']:.3g} ms", file=sys.stderr)
    print(markdown(rows))


if __name__ == "__main__":
    main()
