"""The accelerator check's report: ``<backend>-<date>.md``, ``.json`` and ``.png``."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench import chart, report
from bench.summary import AUTO, LAX, geomean

TORCH = "torch.unfold"
# The goal on an accelerator (forward+backward against lax, memory against lax).
GOAL_SPEEDUP = 1.5


def write(run: dict, out_dir: Path, chart_too: bool = False) -> tuple[Path, Path, Path | None]:
    """Writes the JSON and markdown (and, if asked, the chart) into ``out_dir``.

    Returns:
      The paths of the ``.md``, ``.json`` and ``.png`` (None when no chart was drawn).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{run['meta']['backend']}-{run['meta']['date']}"
    png = chart.write(run, stem.with_suffix(".png")) if chart_too and run["results"] else None
    if chart_too and png is None:
        run["notes"].append("no .png: matplotlib is not importable here, or nothing was timed")
    run["goals"] = goals(run)
    md, js = stem.with_suffix(".md"), stem.with_suffix(".json")
    js.write_text(json.dumps(run, indent=1, default=str) + "\n")
    md.write_text(markdown(run))
    return md, js, png


def goals(run: dict) -> dict:
    """Per-shape ratios against lax and torch, the fastest own implementation, and geomeans.

    Only rows that passed their float64 check count; ratios > 1 mean "auto" is faster
    (or, for memory, needs more).
    """
    rows = {(r["shape"], r["candidate"]): r for r in run["results"] if r["check_ok"]}
    per_shape = {}
    for s in run["shapes"]:
        auto, lax = rows.get((s["key"], AUTO)), rows.get((s["key"], LAX))
        if auto and lax:
            per_shape[s["key"]] = _shape_goals(rows, s["key"], auto, lax)
    values = lambda field: [v[field] for v in per_shape.values() if v[field] is not None]
    return {
        "per_shape": per_shape,
        "fwd_vs_lax_geomean": geomean(values("fwd_vs_lax")),
        "fwd_bwd_vs_lax_geomean": geomean(values("fwd_bwd_vs_lax")),
        "worst_vs_lax": min(values("fwd_vs_lax") + values("fwd_bwd_vs_lax"), default=None),
        "temp_over_lax_worst": max(values("temp_over_lax"), default=None),
        "fastest_own_vs_lax_geomean": geomean(values("fastest_vs_lax")),
        "fwd_bwd_vs_torch_geomean": geomean(values("fwd_bwd_vs_torch")),
    }


def _shape_goals(rows: dict, key: str, auto: dict, lax: dict) -> dict:
    own = [r for (k, c), r in rows.items() if k == key and c != AUTO]
    own = [r for r in own if r["family"] == "jlocalconv"]
    fastest = min(own, key=lambda r: r["fwd_bwd_ms"], default=auto)  # what auto could pick
    torch = rows.get((key, TORCH))
    temps = auto["temp_fwd_bwd_bytes"], lax["temp_fwd_bwd_bytes"]
    return {
        "fwd_vs_lax": lax["fwd_ms"] / auto["fwd_ms"],
        "fwd_bwd_vs_lax": lax["fwd_bwd_ms"] / auto["fwd_bwd_ms"],
        "temp_over_lax": temps[0] / temps[1] if None not in temps and temps[1] else None,
        "fastest": fastest["candidate"],
        "fastest_vs_lax": lax["fwd_bwd_ms"] / fastest["fwd_bwd_ms"],
        "fwd_bwd_vs_torch": torch["fwd_bwd_ms"] / auto["fwd_bwd_ms"] if torch else None,
    }


def goal_table(run: dict) -> str:
    """The issue's goal figures, measured, with whether each is met."""
    g = run.get("goals") or goals(run)
    lines = ["| goal (issue 16) | measured | met |", "|---|---|---|"]
    for name, value, ok in (
        (f"auto fwd+bwd vs lax, geomean >= {GOAL_SPEEDUP}x", g["fwd_bwd_vs_lax_geomean"],
         lambda v: v >= GOAL_SPEEDUP),
        ("auto vs lax, worst shape (fwd or fwd+bwd) >= 1x", g["worst_vs_lax"], lambda v: v >= 1),
        ("temp memory auto / lax (fwd+bwd), worst shape <= 1", g["temp_over_lax_worst"],
         lambda v: v <= 1),
        ("auto fwd vs lax, geomean", g["fwd_vs_lax_geomean"], None),
        ("fastest own implementation per shape, fwd+bwd vs lax, geomean",
         g["fastest_own_vs_lax_geomean"], None),
        ("auto fwd+bwd vs torch unfold+einsum, geomean", g["fwd_bwd_vs_torch_geomean"], None),
    ):  # fmt: skip
        known = value is not None and math.isfinite(value)
        met = "-" if ok is None or not known else ("yes" if ok(value) else "**no**")
        lines.append(f"| {name} | {f'{value:.2f}' if known else '-'} | {met} |")
    return "\n".join(lines)


def markdown(run: dict) -> str:
    """The whole report: environment, reference check, goals, per-shape and timing tables."""
    jax_only = ("jlocalconv", "jax")
    parts = [
        _header(run),
        "## Reference check (float64 NumPy; forward / worst gradient relative error)\n\n"
        + check_table(run["check"]),
    ]
    if run["shapes"]:
        parts += [
            "## Goals\n\n" + goal_table(run),
            "## Per shape: auto against lax, its own fastest implementation and torch\n\n"
            + _per_shape(run),
            "## Forward, median ms\n\n" + report.wide_table(run, "fwd_ms", report._ms),
            "## Forward + backward (value_and_grad w.r.t. input and kernel), median ms\n\n"
            + report.wide_table(run, "fwd_bwd_ms", report._ms),
            "## XLA temp memory of value_and_grad, MiB\n\n"
            + report.wide_table(run, "temp_fwd_bwd_bytes", report._mib, families=jax_only),
            "## XLA temp memory of the forward pass, MiB\n\n"
            + report.wide_table(run, "temp_fwd_bytes", report._mib, families=jax_only),
            "## Compile time of value_and_grad, s\n\n"
            + report.wide_table(run, "compile_fwd_bwd_s", report._sec, families=jax_only),
            "## Compile time of the forward pass, s\n\n"
            + report.wide_table(run, "compile_fwd_s", report._sec, families=jax_only),
            "## Shapes\n\n" + _shapes(run),
        ]
    notes = [f"- {n}" for n in run["notes"]]
    notes += [f"- {s['shape']} / {s['candidate']}: {s['reason']}" for s in run["skipped"]]
    notes += [
        f"- {r['shape']} / {r['candidate']}: relative error {r['check_rel_err']:.1e} against "
        "float64; excluded from the ratios"
        for r in run["results"]
        if not r["check_ok"]
    ]
    parts.append("## Notes (skips and failures)\n\n" + "\n".join(notes) if notes else "")
    return "\n\n".join(p for p in parts if p) + "\n"


def check_table(rows: list[dict]) -> str:
    """Geometries and formats down, implementations across; ``FAILED`` cells in bold."""
    names = list(dict.fromkeys(r["implementation"] for r in rows))
    cells = {(r["case"], r["dtype"], r["implementation"]): r for r in rows}
    lines = ["| geometry | format | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for case, dtype in dict.fromkeys((r["case"], r["dtype"]) for r in rows):
        row = [_check_cell(cells[case, dtype, n]) for n in names]
        lines.append(f"| {case} | {dtype} | " + " | ".join(row) + " |")
    failed = sum(not r["ok"] for r in rows)
    verdict = f"**{failed} of {len(rows)} FAILED**" if failed else f"all {len(rows)} passed"
    return "\n".join(lines) + f"\n\n{verdict}."


def _check_cell(row: dict) -> str:
    if row["error"]:
        return f"**FAILED** ({row['error'][:80]})"
    errors = row["errors"]
    grad = max(errors["grad_inputs"], errors["grad_kernel"])
    text = f"{errors['forward']:.0e} / {grad:.0e}"
    return text if row["ok"] else f"**FAILED** {text}"


def _header(run: dict) -> str:
    m = run["meta"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    elapsed = ", ".join(f"{k} {v:.0f} s" for k, v in run.get("elapsed_s", {}).items())
    compiling = sum(
        r[field] or 0 for r in run["results"] for field in ("compile_fwd_s", "compile_fwd_bwd_s")
    )
    policy = run.get("policy")
    timing = (
        f"{policy['warmup']} warm-up calls after compiling, then the median of "
        f"{policy['min_repeats']}-{policy['max_repeats']} timed calls (stopping after "
        f"{policy['budget_s']:g} s)"
        if policy
        else "not timed (--check-only)"
    )
    return (
        f"# jlocalconv accelerator check: {m['backend']}, {m['device_kind']}, {m['date']}\n\n"
        f"- command: `{m['command']}` ({m['time_utc']} UTC)\n"
        f"- backend: {m['backend']}; device: {m['device_kind']}; devices: "
        f"{', '.join(m['devices'])}\n"
        f"- versions: {versions}; host: {m['host']}\n"
        f"- elapsed: {elapsed} (XLA compiles of the timed variants: {compiling:.0f} s)\n"
        f"- timing: {timing}; JAX variants jitted and compiled ahead of time, every call "
        "waits with `block_until_ready` (torch: `torch.cuda.synchronize`); default "
        "precision; fwd+bwd is `value_and_grad` of `sum(y * g)` w.r.t. input and kernel.\n"
        f"- sizes: {run.get('sizes', 'not timed')}; every timed result is also compared with "
        "the float64 reference on its first batch items."
    )


def _per_shape(run: dict) -> str:
    g = run["goals"]["per_shape"]
    lines = [
        "| shape | auto picks | fwd vs lax | fwd+bwd vs lax | temp auto/lax | fastest own "
        "(fwd+bwd vs lax) | fwd+bwd vs torch |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in run["shapes"]:
        v = g.get(s["key"])
        if v is None:
            lines.append(f"| {s['key']} | {s['auto_choice']} | - | - | - | - | - |")
            continue
        lines.append(
            f"| {s['key']} | {s['auto_choice']} | {_x(v['fwd_vs_lax'])} "
            f"| {_x(v['fwd_bwd_vs_lax'])} | {_r(v['temp_over_lax'])} "
            f"| {v['fastest'].split(':')[-1]} ({_x(v['fastest_vs_lax'])}) "
            f"| {_x(v['fwd_bwd_vs_torch'])} |"
        )
    return "\n".join(lines)


def _shapes(run: dict) -> str:
    lines = [
        "| key | shape (batch as measured) | window tensor MiB | source |",
        "|---|---|---|---|",
    ]
    for s in run["shapes"]:
        lines.append(
            f"| {s['key']} | {s['label']} | {s['window_mib']:.3g} | {s['source'] or 'suite'} |"
        )
    return "\n".join(lines)


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _r(v) -> str:
    return "-" if v is None else f"{v:.2f}"
