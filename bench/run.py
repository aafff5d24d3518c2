"""Command line of the benchmark: ``python -m bench [options]`` or ``python bench/run.py``.

For each shape it builds every candidate (jlocalconv implementations and "auto", then the
importable peers), checks its forward result against a float32 reference, times forward and
forward+backward, and records compile time and XLA temp memory; then it writes the
markdown/JSON/PNG report and prints the tables and the target ratios.
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import gc
import os
import platform
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python bench/run.py`: import the package, not its files
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import jax
import numpy as np

import jlocalconv
from bench import (
    chart,
    compile_check,
    environment,
    ours,
    peers,
    progress,
    report,
    roofline,
    sharded_hook,
    suite,
    sweep_report,
)
from bench.candidate import Candidate, Problem
from bench.measure import measure
from bench.summary import compile_target, summarize
from bench.timing import Policy

RESULTS = Path(__file__).resolve().parent / "results"
TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2}  # max |y - ref| / max |ref|


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes, 2 repeats (seconds)")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAMES",
        help="comma-separated candidates/families/globs, e.g. auto,jax.lax,torch",
    )
    p.add_argument("--shapes", default=None, help="comma-separated shape keys or 1-based indices")
    p.add_argument("--repeats", type=int, default=30, help="timed calls at most (default 30)")
    p.add_argument(
        "--budget",
        type=float,
        default=0.5,
        help="seconds of timing per measurement: at least 3 calls unless one call takes "
        "over 4x this (default 0.5)",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="random problems instead of the suite (bench/sweep.py): regret of auto, x lax",
    )
    p.add_argument(
        "--n", type=int, default=60, help="--sweep: number of problems (default 60; 1 with --smoke)"
    )
    p.add_argument("--seed", type=int, default=0, help="--sweep: the problems' seed (default 0)")
    p.add_argument(
        "--first", type=int, default=0, help="--sweep: start at this problem (resume or split)"
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="output directory")
    p.add_argument("--no-peers", action="store_true", help="jlocalconv only, no peers")
    p.add_argument(
        "--sharded",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run bench/studies/sharded.py (default: when it exists, except with --smoke)",
    )
    p.add_argument(
        "--gpu-large",
        action="store_true",
        help=f"{suite.GPU_BATCH_FACTOR}x larger batches, for accelerators",
    )
    p.add_argument(
        "--dense-budget-gb",
        type=float,
        default=1.0,
        help="skip tf_keras implementation=2 above this dense kernel size",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; returns the process exit status."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.sweep:
        n = min(args.n, 1) if args.smoke else args.n
        meta = _meta(args, Policy())
        sweep_report.run(n, args.seed, args.smoke, args.out, meta, first=args.first)
        return 0
    shapes = _shapes(args)
    notes: list[str] = []
    candidates = _filter(_candidates(args, notes), args.only)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    machine = _machine(args)
    repeats = 2 if args.smoke else args.repeats
    budget = 0.05 if args.smoke else args.budget
    policy = Policy(
        min_repeats=min(3, repeats), max_repeats=repeats, budget_s=budget, cap_s=4 * budget
    )
    results, skipped = _run_suite(shapes, candidates, policy, machine)
    run = _assemble(args, shapes, machine, policy, results, skipped, notes)
    in_suite = [s for s in shapes if s in suite.SUITE] or list(shapes)  # the target's shapes
    run["compile_vag"] = compile_check.ratios(in_suite, repeats=1 if args.smoke else 3)
    run["summary"]["targets"].append(compile_target(run["compile_vag"]))
    md, js = report.write(run, args.out)
    png = chart.write(run, md.with_suffix(".png"))
    _print(run, md, js, png)
    return 0


def _shapes(args) -> tuple[suite.Shape, ...]:
    base = suite.SMOKE if args.smoke else suite.DEFAULT
    wanted = args.shapes.split(",") if args.shapes else None
    shapes = suite.select(base, wanted)
    if args.gpu_large:
        shapes = tuple(s.scaled(suite.GPU_BATCH_FACTOR) for s in shapes)
    return shapes


def _candidates(args, notes: list[str]) -> list[Candidate]:
    found = ours.candidates(autotuned=True)
    if args.no_peers:
        notes.append("peers not run (--no-peers)")
        return found
    options = peers.Options(dense_budget_bytes=int(args.dense_budget_gb * 2**30))
    return found + peers.load(options, notes)


def _filter(candidates: list[Candidate], only: list[str]) -> list[Candidate]:
    """Keeps candidates matching any token: full name, family, name after ':', or a glob."""
    tokens = [t for group in only for t in group.split(",") if t]
    if not tokens:
        return candidates

    def match(c: Candidate, t: str) -> bool:
        short = c.name.split(":", 1)[-1]
        return t in (c.name, c.family, short) or fnmatch.fnmatch(c.name, t)

    return [c for c in candidates if any(match(c, t) for t in tokens)]


def _machine(args) -> roofline.Machine:
    if args.smoke:
        return roofline.measure_machine(matmul_n=256, add_items=1 << 20, budget_s=0.05)
    return roofline.measure_machine()


def _run_suite(shapes, candidates, policy, machine):
    results, skipped = [], []
    bar = progress.bar(len(shapes) * len(candidates), "bench")
    try:
        for shape in shapes:
            problem = Problem.make(shape)
            reference = _reference(problem)
            for cand in candidates:
                bar.set_postfix_str(f"{shape.key} / {cand.name}")
                row, reason = _measure(cand, problem, reference, policy, machine)
                if row is None:
                    skipped.append(
                        {
                            "shape": shape.key,
                            "candidate": cand.name,
                            "family": cand.family,
                            "reason": reason,
                        }
                    )
                    bar.write(f"skip {shape.key} / {cand.name}: {reason}")
                else:
                    results.append(row)
                gc.collect()
                bar.update(1)
    finally:
        bar.close()
    return results, skipped


def _reference(problem: Problem) -> np.ndarray:
    """Float32 forward result (patches, HIGHEST precision) from the same float32 values."""
    s = problem.shape
    y = jlocalconv.local_conv(
        jax.numpy.asarray(problem.inputs),
        jax.numpy.asarray(problem.kernel),
        s.kernel_size,
        s.strides,
        padding=s.padding,
        dilation=s.dilation or 1,
        precision=jax.lax.Precision.HIGHEST,
        implementation="patches",
    )
    return np.asarray(y)


def _measure(cand: Candidate, problem: Problem, reference, policy, machine):
    """One candidate on one problem: ``(row, None)`` or ``(None, why it was skipped)``."""
    error = lambda result: float(np.max(np.abs(result - reference)) / np.max(np.abs(reference)))
    row, why = measure(cand, problem, policy, error, TOLERANCE[problem.shape.dtype])
    if row is None:
        return None, why
    for phase in ("fwd", "fwd_bwd"):
        bound_s, _ = roofline.bound(roofline.work(problem.shape, phase == "fwd_bwd"), machine)
        row[f"roofline_{phase}"] = bound_s / (row[f"{phase}_ms"] * 1e-3)
    return row, None


def _shape_info(shape: suite.Shape, machine: roofline.Machine) -> dict:
    info = {"key": shape.key, "label": shape.label(), "auto_choice": ours.auto_choice(shape)}
    for phase in ("fwd", "fwd_bwd"):
        w = roofline.work(shape, phase == "fwd_bwd")
        bound_s, limit = roofline.bound(w, machine)
        info |= {
            f"gflop_{phase}": w.flops / 1e9,
            f"mbytes_{phase}": w.bytes / 1e6,
            f"bound_{phase}_ms": bound_s * 1e3,
            f"limit_{phase}": limit,
        }
    return info


def _assemble(args, shapes, machine, policy, results, skipped, notes) -> dict:
    run = {
        "meta": _meta(args, policy),
        "machine": {
            "peak_gflops": machine.peak_flops / 1e9,
            "bandwidth_gbs": machine.bandwidth / 1e9,
            "matmul_n": 256 if args.smoke else 2048,
        },
        "shapes": [_shape_info(s, machine) for s in shapes],
        "results": results,
        "skipped": skipped,
        "notes": notes,
        "sharded": _sharded(args),
    }
    run["summary"] = summarize(run)
    return run


def _sharded(args) -> dict:
    wanted = args.sharded if args.sharded is not None else not args.smoke
    if not wanted:
        return {"rows": [], "note": ""}
    if not sharded_hook.available():
        print("note: bench/studies/sharded.py is missing; no sharded rows", file=sys.stderr)
    return sharded_hook.run()


def _meta(args, policy: Policy) -> dict:
    argv = " ".join(sys.argv[1:]) if sys.argv and "bench" in sys.argv[0] else ""
    return {
        "date": datetime.date.today().isoformat(),
        "backend": jax.default_backend(),
        "command": environment.command(argv),
        "environment": environment.settings(),
        "cpu": _cpu_name(),
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "platform": platform.platform(),
        "versions": _versions(),
        "policy": (
            f"1 warm-up, {policy.min_repeats}-{policy.max_repeats} timed calls, "
            f"stopping after {policy.budget_s:g} s (after one call if it took over "
            f"{policy.cap_s:g} s)"
        ),
        "devices": [str(d) for d in jax.devices()],
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _versions() -> dict:
    versions = {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jlocalconv": jlocalconv.__version__ if hasattr(jlocalconv, "__version__") else "dev",
    }
    for name in ("flax", "tensorflow", "tf_keras", "torch"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    return versions


def _print(run: dict, md: Path, js: Path, png: Path | None) -> None:
    print(report.per_shape_table(run))
    print()
    print("Forward, median ms")
    print(report.wide_table(run, "fwd_ms", report._ms))
    print()
    print("Forward + backward, median ms")
    print(report.wide_table(run, "fwd_bwd_ms", report._ms))
    print()
    print(report.targets_table(run))
    print()
    print(f"wrote {md}, {js}" + (f", {png}" if png else " (no chart: matplotlib or lax missing)"))


if __name__ == "__main__":
    raise SystemExit(main())
