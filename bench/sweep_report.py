"""Runs the sweep (:mod:`bench.sweep`) and writes ``sweep-<backend>-seed<S>.md|json|png``."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from bench import progress, sweep
from bench.summary import geomean

# Acceptance thresholds of the issue (regret geomean / worst, share faster than lax, memory).
REGRET_GEOMEAN, REGRET_WORST, FASTER_SHARE = 1.10, 1.5, 0.95
TEMP_SLACK_MIB, TEMP_LARGE_MIB, TEMP_LARGE_RATIO = 1.0, 32.0, 0.5


def run(n: int, seed: int, smoke: bool, out_dir: Path, meta: dict, first: int = 0) -> dict:
    """Measures problems ``first .. n - 1`` of ``seed``; writes and returns the report.

    ``first > 0`` resumes (or splits) a sweep: the report's name says where it starts, and
    :func:`merge` joins the parts.
    """
    bounds = sweep.Bounds().scaled(sweep.SMOKE_SCALE) if smoke else sweep.Bounds()
    shapes = sweep.problems(n, seed, bounds)[first:]
    rounds, budget = (1, 0.0) if smoke else (3, 0.2)
    bar = progress.bar(len(shapes), f"sweep seed {seed}")
    entries: list[dict] = []
    meta = meta | {"seed": seed, "n": n, "smoke": smoke, "first": first}
    report = _report(meta, entries)
    try:
        for shape in shapes:
            bar.set_postfix_str(shape.label())
            entry = sweep.measure(shape, rounds, budget)
            entry |= sweep.summarize(entry)
            entries.append(entry)
            bar.update(1)
            report = _report(meta, entries)
            _write(report, out_dir, final=len(entries) == len(shapes))  # partial ones too
    finally:
        bar.close()
    return report


def _report(meta: dict, entries: list[dict]) -> dict:
    return {"meta": meta, "problems": entries, "targets": targets(entries)}


def merge(paths: list[Path], out_dir: Path) -> dict:
    """Joins parts of one sweep (same seed) in problem order; writes the whole report."""
    parts = [json.loads(p.read_text()) for p in paths]
    seeds = {p["meta"]["seed"] for p in parts}
    if len(seeds) != 1:
        raise ValueError(f"merge: parts of one seed expected, got seeds {sorted(seeds)}")
    entries = sorted(
        (e for p in parts for e in p["problems"]),
        key=lambda e: int(e["shape"]["key"].rsplit("-", 1)[1]),
    )
    meta = parts[0]["meta"] | {"first": 0, "parts": [p["meta"]["command"] for p in parts]}
    report = _report(meta, entries)
    _write(report, out_dir, final=True)
    return report


def targets(entries: list[dict]) -> list[dict]:
    """Each acceptance point of the sweep, for auto and (where measured) autotune."""
    rows = _targets(entries, "")
    tuned = [e for e in entries if "autotune_regret_fwd" in e]
    return rows + (_targets(tuned, "autotune_") if tuned else [])


def _targets(entries: list[dict], prefix: str) -> list[dict]:
    who = prefix.rstrip("_") + ": " if prefix else ""
    rows = []
    for phase in ("fwd", "fwd_bwd"):
        regrets = [e[f"{prefix}regret_{phase}"] for e in entries]
        g, worst = geomean(regrets), max(regrets, default=math.nan)
        rows.append(_target(f"{who}regret geomean {phase}", g, g <= REGRET_GEOMEAN))
        rows.append(_target(f"{who}regret worst {phase}", worst, worst <= REGRET_WORST))
        speedups = [e[f"{prefix}speedup_{phase}"] for e in entries if e[f"{prefix}speedup_{phase}"]]
        share = sum(x > 1 for x in speedups) / max(len(speedups), 1)
        rows.append(_target(f"{who}share faster than lax {phase}", share, share >= FASTER_SHARE))
        rows.append(_target(f"{who}speed-up over lax geomean {phase}", geomean(speedups), None))
    temp = f"temp_{prefix or 'auto_'}mib"
    over = [e["shape"]["key"] for e in entries if not temp_ok(e, temp)]
    rows.append(_target(f"{who}temp within lax bounds (problems over)", len(over), not over, over))
    return rows


def _target(name: str, value: float, met: bool | None, detail=None) -> dict:
    return {"target": name, "value": value, "met": met, "detail": detail}


def temp_ok(entry: dict, key: str = "temp_auto_mib") -> bool:
    """Whether ``entry[key]`` (MiB) is within the sweep's bounds on lax's temp: at most
    ``TEMP_SLACK_MIB`` over it, and at most ``TEMP_LARGE_RATIO`` of it where lax holds over
    ``TEMP_LARGE_MIB`` (a missing figure counts as within)."""
    auto, lax = entry[key], entry["temp_lax_mib"]
    if auto is None or lax is None:
        return True
    ok = auto <= lax + TEMP_SLACK_MIB
    return ok and (lax <= TEMP_LARGE_MIB or auto <= TEMP_LARGE_RATIO * lax)


def _write(report: dict, out_dir: Path, final: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    m = report["meta"]
    part = f"-from{m['first']}" if m.get("first") else ""
    stem = out_dir / f"sweep-{m['backend']}-seed{m['seed']}{part}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    if not final:
        return
    png = chart(report, stem.with_suffix(".png"))
    print(f"wrote {stem}.md, .json" + (", .png" if png else ""), file=sys.stderr)


def markdown(report: dict) -> str:
    """Header, targets and one line per problem."""
    m = report["meta"]
    lines = [
        f"# jlocalconv sweep: {m['backend']}, seed {m['seed']}, {len(report['problems'])} problems",
        "",
        f"- command: `{m['command']}`; date {m['date']}; machine: {m['cpu']}, {m['cores']} cores "
        "(candidates timed in alternation, ratios within one process)",
        "- problems drawn by `bench.sweep.problems` (ranges in its docstring); f32 auto and "
        "autotune are the chosen implementation's own program and time (autotune's choice "
        "is measured first by `jlocalconv.autotune`, then timed here with the others); "
        "candidates that compile to one program (the same optimized HLO) are timed once, as "
        "one (`bench.sweep.twins`)",
        "",
        "| target | value | met |",
        "|---|---|---|",
    ]
    for t in report["targets"]:
        met = {True: "yes", False: "**no**", None: ""}[t["met"]]
        lines.append(f"| {t['target']} | {_num(t['value'])} | {met} |")
    lines += [
        "",
        "| problem | shape | auto | best fwd / fwd+bwd | regret fwd / fwd+bwd "
        "| x lax fwd / fwd+bwd | temp auto / lax MiB | autotune (s to tune) "
        "| autotune regret fwd / fwd+bwd |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in report["problems"]:
        tuned = f"{e['autotune_choice']} ({e['autotune_s']:.1f})" if "autotune_s" in e else "-"
        lines.append(
            f"| {e['shape']['key']} | {e['label']} | {e['choice']} "
            f"| {e['best_fwd']} / {e['best_fwd_bwd']} "
            f"| {_num(e['regret_fwd'])} / {_num(e['regret_fwd_bwd'])} "
            f"| {_num(e['speedup_fwd'])} / {_num(e['speedup_fwd_bwd'])} "
            f"| {_num(e['temp_auto_mib'])} / {_num(e['temp_lax_mib'])} | {tuned} "
            f"| {_num(e.get('autotune_regret_fwd'))} / {_num(e.get('autotune_regret_fwd_bwd'))} |"
        )
    return "\n".join(lines) + "\n"


def _num(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def chart(report: dict, path: Path) -> Path | None:
    """Histogram of regret (log x), forward and forward+backward; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for prefix in ("", "autotune_"):
        for phase in ("fwd", "fwd_bwd"):
            values = [e[k] for e in report["problems"] if (k := f"{prefix}regret_{phase}") in e]
            name = f"{prefix.rstrip('_') or 'auto'} {phase.replace('_', '+')}"
            if values:
                ax.hist(values, bins=20, alpha=0.5, label=name)
    ax.axvline(REGRET_WORST, color="black", linewidth=0.8, linestyle="--")
    ax.set_xlabel("regret = chooser's time / fastest implementation's time")
    ax.set_ylabel("problems")
    m = report["meta"]
    ax.set_title(f"sweep seed {m['seed']}, {len(report['problems'])} problems, {m['backend']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
