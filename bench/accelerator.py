"""``python -m bench --accelerator-check [--smoke]``: one command for a lent GPU (or TPU).

On whatever backend JAX finds it

1. checks every jlocalconv implementation against the float64 NumPy reference
   (:mod:`bench.accel_check`: forward and both gradients, float32 at
   ``precision="highest"`` and bfloat16 with float32 accumulation) and fails loudly (exit
   status 1, each failure naming implementation, geometry, format and error);
2. times forward and forward+backward of every implementation, ``jax.lax``,
   ``flax.linen.ConvLocal`` and PyTorch ``unfold`` + ``einsum`` on the same device (when
   torch sees it) on the bench suite and ``REAL_LAYERS`` at GPU-sized batches, each
   result also checked against the float64 reference on its first batch items;
3. records each JAX variant's compile time and XLA temp memory;
4. writes ``<out>/<backend>-<date>.md``, ``.json`` and ``.png`` (the chart needs
   matplotlib; without it the report says so), after every shape, so a run cut short
   still leaves its results.

How the sizes fit 6 minutes on one GPU (compile time included). The work is 60 small
reference compiles (5 implementations x 6 geometries x 2 formats) and then, for 16 shapes,
7 JAX variants x 2 compiles (forward, value_and_grad) plus torch: 280 XLA compiles. They,
not the runs, set the time: on the shared 2-core development CPU (2026-11-29), the whole
non-smoke check with batches capped at 2 (``--batch-cap 2``) took 1173 s of wall time but
361 s of CPU time, of which the 220 timed compiles took 2.5 s each on average (wall).
Assuming 0.5-1 s per GPU compile (no GPU was available to measure it), that is 140-280 s,
plus at most about 0.1 s of timing per measurement (256 of them) and the host's float64
references: close to the budget, hence the deadline below. The batches are the suite's
times ``GPU_BATCH_FACTOR`` (8), clamped to 32-256, then halved (not below 32) while the
largest window tensor, ``batch * positions * features`` values, exceeds 1 GiB, so that no
variant needs more than a few GiB and one call stays in the milliseconds on a current GPU
(the largest, DeepFace L4 at batch 64, is about 8 GFLOP forward). "shifts" is skipped
above ``SHIFTS_MAX_TERMS`` unrolled terms, whose forward compile alone grows faster than
linearly (on the CPU: 576 terms 4.5 s, 1296 10 s, 2304 28 s). No measurement starts after
``--budget-s`` seconds (default 300) from the start: what is not measured by then is
listed as skipped, and the most important pairs come first ("auto" and lax on every shape,
then the other implementations, then flax and torch; measuring in tiers instead of
alternating costs little accuracy on a dedicated device, and on a shared CPU the tiers'
ratios drift, as the run above showed).
``bench/gpu_check.sh`` runs this under a hard timeout.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import jax
import numpy as np

from bench import accel_check, accel_report, ours, suite
from bench.candidate import Candidate, Problem, Skip
from bench.measure import measure
from bench.numpy_reference import Spec, local_conv_f64
from bench.peers import Options, Unavailable, flax_local, lax_local, torch_unfold
from bench.timing import Policy
from jlocalconv import implementations

RESULTS = Path(__file__).resolve().parent / "results"
BATCH_RANGE = (32, 256)
WINDOW_BYTES_CAP = 1 << 30
SHIFTS_MAX_TERMS = 1024
# Timed rows use default precision (TF32 on recent NVIDIA GPUs, as users get), so this
# is a sanity check of every variant at full size; the exact check is part 1.
TOLERANCE = {"float32": 1e-2, "bfloat16": 5e-2}
REFERENCE_ITEMS = 2  # batch items compared with the float64 reference per timed row
FULL_POLICY = Policy(warmup=2, min_repeats=5, max_repeats=30, budget_s=0.1, cap_s=1.0)
SMOKE_POLICY = Policy(warmup=1, min_repeats=2, max_repeats=2, budget_s=0.0, cap_s=0.1)
_FIRST = ("jlocalconv:auto", "jax.lax")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options after ``--accelerator-check`` (``--help`` lists them)."""
    p = argparse.ArgumentParser(
        prog="python -m bench --accelerator-check", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--smoke", action="store_true", help="CPU-sized: 2 geometries, 1 tiny shape")
    p.add_argument("--out", type=Path, default=RESULTS, help="output directory")
    p.add_argument("--check-only", action="store_true", help="the reference check, no timing")
    p.add_argument(
        "--implementations",
        default=None,
        help="comma-separated jlocalconv implementations (default: every name)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=300.0,
        help="start no measurement after this many seconds from the start (default 300)",
    )
    p.add_argument(
        "--batch-cap", type=int, default=None, help="cap every batch (to size a run on a CPU)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs the check and writes its report.

    Args:
      argv: command-line options (default ``sys.argv[1:]``); ``--accelerator-check`` itself
        is ignored, so ``python -m bench`` can pass its arguments through.

    Returns:
      The exit status: 1 if any jlocalconv implementation failed the float64 check (here or
      at a timed size) or raised, else 0. Peers that fail are noted, not counted.
    """
    start = time.perf_counter()
    argv = sys.argv[1:] if argv is None else argv
    argv = [a for a in argv if a != "--accelerator-check"]
    args = parse_args(argv)
    names = _names(args.implementations)
    run = {"meta": environment(argv), "notes": [], "shapes": [], "results": [], "skipped": []}
    print(f"accelerator check: {run['meta']['backend']} / {run['meta']['device_kind']}")
    cases = accel_check.SMOKE_CASES if args.smoke else accel_check.CASES
    run["check"] = accel_check.check(names, cases)
    run["elapsed_s"] = {"check": time.perf_counter() - start}
    failed = accel_check.failures(run["check"])
    _loud(failed)
    accel_report.write(run, args.out)
    if not args.check_only:
        failed += _time_everything(args, names, run, deadline=start + args.budget_s)
    run["elapsed_s"]["total"] = time.perf_counter() - start
    md, js, png = accel_report.write(run, args.out, chart_too=True)
    if run["results"]:
        print(accel_report.goal_table(run))
    print(f"wrote {md}, {js}" + (f", {png}" if png else " (no .png: see the report's notes)"))
    _loud(failed)
    return 1 if failed else 0


def gpu_shapes(shapes: tuple[suite.Shape, ...], cap: int | None = None) -> tuple[suite.Shape, ...]:
    """``shapes`` at GPU-sized batches (module docstring), each at most ``cap`` if given.

    Example:
      >>> [s.batch for s in gpu_shapes(suite.REAL_LAYERS)]
      [64, 64, 256, 64, 256, 32]
    """
    return tuple(dataclasses.replace(s, batch=_gpu_batch(s, cap)) for s in shapes)


def _gpu_batch(shape: suite.Shape, cap: int | None) -> int:
    low, high = BATCH_RANGE
    batch = min(max(shape.batch * suite.GPU_BATCH_FACTOR, low), high)
    while batch > low and _window_bytes(shape, batch) > WINDOW_BYTES_CAP:
        batch //= 2
    return min(batch, cap or batch)


def environment(argv: list[str]) -> dict:
    """Backend, device, versions and command (``argv``: the options after the flag)."""
    device = jax.devices()[0]
    now = datetime.datetime.now(datetime.timezone.utc)
    versions = {"python": platform.python_version(), "jax": jax.__version__}
    for name in ("jaxlib", "flax", "torch", "numpy"):  # read without importing them
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "date": now.date().isoformat(),
        "time_utc": now.strftime("%H:%M"),
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "devices": [str(d) for d in jax.devices()],
        "host": platform.platform(),
        "versions": versions,
        "command": " ".join(["python -m bench --accelerator-check", *argv]),
    }


def _names(wanted: str | None) -> tuple[str, ...]:
    names = implementations.names()
    chosen = tuple(wanted.split(",")) if wanted else names
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise SystemExit(f"--implementations: unknown {unknown}; choose from {names}")
    return chosen


def _loud(lines: list[str]) -> None:
    for line in lines:
        print(line, file=sys.stderr, flush=True)


def _time_everything(args, names, run: dict, deadline: float) -> list[str]:
    """Part 2: fills ``run`` (shapes, results, skipped, notes); returns failure lines."""
    start = time.perf_counter()
    full = suite.DEFAULT + suite.REAL_LAYERS
    shapes = suite.SMOKE if args.smoke else gpu_shapes(full, args.batch_cap)
    policy = SMOKE_POLICY if args.smoke else FULL_POLICY
    run["policy"] = dataclasses.asdict(policy)
    run["sizes"] = (
        "the smoke shape (--smoke)"
        if args.smoke
        else "GPU batches as the docstring of bench/accelerator.py explains"
        + (f", capped at {args.batch_cap}" if args.batch_cap else "")
    )
    run["shapes"] = [_shape_info(s) for s in shapes]
    problems: dict[str, tuple[Problem, np.ndarray]] = {}
    failed: list[str] = []
    for load in _tiers(names, run["meta"]["backend"], run["notes"]):
        tier = load()
        for shape in shapes:
            if shape.key not in problems:
                problems[shape.key] = _problem(shape)
            for cand in tier:
                row, why = _measure_before(deadline, cand, *problems[shape.key], policy)
                _record(run, shape, cand, row, why, failed)
                gc.collect()  # the compiled variant and its device buffers go now
            run["elapsed_s"]["timing"] = time.perf_counter() - start
            accel_report.write(run, args.out)
    return failed


def _tiers(names, backend: str, notes: list[str]) -> list[Callable[[], list[Candidate]]]:
    """auto and lax first, then the other implementations, then the peers.

    Each tier is loaded when it is reached, so a framework that fails to load (torch
    and JAX share the GPU's CUDA libraries) cannot cost what was measured before it.
    """
    ours_ = [_guard_shifts(c) for c in ours.candidates() if c.name.split(":", 1)[1] in names]
    first = [c for c in ours_ if c.name in _FIRST] + lax_local.candidates(None)
    return [
        lambda: first,
        lambda: [c for c in ours_ if c.name not in _FIRST],
        lambda: _peers(backend, notes),
    ]


def _peers(backend: str, notes: list[str]) -> list[Candidate]:
    found: list[Candidate] = []
    loaders = {"flax": lambda: flax_local.candidates(None), "torch": lambda: _torch(backend, notes)}
    for label, load in loaders.items():
        try:
            found += load()
        except Unavailable as e:
            notes.append(f"{label} not measured: {e}")
    return found


def _torch(backend: str, notes: list[str]) -> list[Candidate]:
    """torch on the device JAX uses: CPU with CPU, CUDA with GPU, nothing with TPU."""
    torch = torch_unfold.require("torch")
    if backend == "cpu":
        notes.append(f"torch {torch.__version__} measured on the CPU")
        return torch_unfold.candidates(Options())
    if backend == "gpu" and torch.cuda.is_available():
        notes.append(
            f"torch {torch.__version__} measured on cuda:0, {torch.cuda.get_device_name(0)}"
        )
        return torch_unfold.candidates(Options(), device="cuda")
    available = torch.cuda.is_available()
    raise Unavailable(f"torch {torch.__version__} sees no {backend} device (CUDA: {available})")


def _guard_shifts(cand: Candidate) -> Candidate:
    if cand.name != "jlocalconv:shifts":
        return cand

    def build(problem: Problem):
        terms = problem.geom.window_items * problem.geom.channels
        if terms > SHIFTS_MAX_TERMS:
            raise Skip(
                f"shifts unrolls {terms} terms (> {SHIFTS_MAX_TERMS}): its compile time "
                "grows faster than linearly; auto picks it for <= 4 channels only"
            )
        return cand.build(problem)

    return dataclasses.replace(cand, build=build)


def _problem(shape: suite.Shape) -> tuple[Problem, np.ndarray]:
    """The shared operands and the float64 result of their first batch items."""
    problem = Problem.make(shape)
    spec = Spec(shape.kernel_size, shape.strides, shape.padding)
    return problem, local_conv_f64(problem.inputs[:REFERENCE_ITEMS], problem.kernel, spec)


def _measure_before(deadline, cand, problem, expected, policy):
    """``(row, None)``, or ``(None, why not)`` if skipped, failed or past the deadline."""
    if time.perf_counter() > deadline:
        return None, "not run: the --budget-s time budget was spent"

    def error(result: np.ndarray) -> float:
        got = result[:REFERENCE_ITEMS].astype(np.float64)
        return float(np.max(np.abs(got - expected)) / max(np.max(np.abs(expected)), 1e-30))

    return measure(cand, problem, policy, error, TOLERANCE[problem.shape.dtype])


def _record(run, shape, cand, row, why, failed: list[str]) -> None:
    if row is None:
        skip = {"shape": shape.key, "candidate": cand.name, "family": cand.family, "reason": why}
        run["skipped"].append(skip)
        print(f"skip {shape.key} / {cand.name}: {why}", file=sys.stderr, flush=True)
        if cand.family == "jlocalconv" and why.startswith("failed"):
            failed.append(f"FAILED {cand.name} on {shape.key} ({shape.label()}): {why}")
        return
    run["results"].append(row)
    times = f"fwd {row['fwd_ms']:9.3f} ms  fwd+bwd {row['fwd_bwd_ms']:9.3f} ms"
    print(f"{shape.key:>14} / {cand.name:<18} {times}", flush=True)
    if cand.family == "jlocalconv" and not row["check_ok"]:
        error = f"relative error {row['check_rel_err']:.2g} > {TOLERANCE[shape.dtype]:g}"
        failed.append(f"FAILED {cand.name} on {shape.key} ({shape.label()}): {error} (float64)")


def _shape_info(shape: suite.Shape) -> dict:
    return {
        "key": shape.key,
        "label": shape.label(),
        "source": shape.source,
        "auto_choice": ours.auto_choice(shape),
        "window_mib": _window_bytes(shape, shape.batch) / 2**20,
    }


def _window_bytes(shape: suite.Shape, batch: int) -> int:
    """float32 bytes of the whole window tensor, ``batch * positions * feature_dim``."""
    geom = shape.geometry()
    return 4 * batch * geom.output_items * geom.feature_dim
