"""Markdown and JSON reports of one run (``bench/results/<backend>-<date>.md|json``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench import suite
from bench.summary import AUTO

_MISSING = "-"


def write(run: dict, out_dir: Path) -> tuple[Path, Path]:
    """Writes ``<backend>-<date>.md`` and ``.json`` into ``out_dir``; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{run['meta']['backend']}-{run['meta']['date']}"
    md, js = stem.with_suffix(".md"), stem.with_suffix(".json")
    md.write_text(markdown(run))
    js.write_text(json.dumps(run, indent=1, default=_jsonable) + "\n")
    return md, js


def _jsonable(value):
    return None if isinstance(value, float) and not math.isfinite(value) else str(value)


def markdown(run: dict) -> str:
    """The whole report: header, targets, per-shape summary, timing/memory tables, notes."""
    parts = [
        _header(run),
        "## Targets (issues 3 and 13)\n\n" + targets_table(run),
        "## Per shape: auto against lax and the best tf_keras/torch\n\n" + per_shape_table(run),
        real_layers_table(run),
        "## Forward, median ms\n\n" + wide_table(run, "fwd_ms", _ms),
        "## Forward + backward (value_and_grad w.r.t. input and kernel), median ms\n\n"
        + wide_table(run, "fwd_bwd_ms", _ms),
        "## XLA temp memory of value_and_grad, MiB (JAX only)\n\n"
        + wide_table(run, "temp_fwd_bwd_bytes", _mib, families=("jlocalconv", "jax")),
        "## XLA temp memory of the forward pass, MiB (JAX only)\n\n"
        + wide_table(run, "temp_fwd_bytes", _mib, families=("jlocalconv", "jax")),
        "## Compile time of value_and_grad, s (TF: first call; one compile each)\n\n"
        + wide_table(run, "compile_fwd_bwd_s", _sec, families=("jlocalconv", "jax", "tf_keras")),
        compile_table(run),
        "## Roofline\n\n" + roofline_table(run),
        _sharded(run),
        _notes(run),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def compile_table(run: dict) -> str:
    """The compile-time target's measurement (``bench.compile_check``), one line per shape."""
    rows = run.get("compile_vag")
    if not rows:
        return ""
    lines = [
        "## value_and_grad compile, auto against lax (median of 3, alternated), s\n",
        "| shape | auto | lax | auto / lax |",
        "|---|---|---|---|",
    ]
    for key, r in rows.items():
        lines.append(f"| {key} | {_sec(r['auto_s'])} | {_sec(r['lax_s'])} | {r['ratio']:.2f} |")
    return "\n".join(lines)


def _header(run: dict) -> str:
    m, mach = run["meta"], run["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    return (
        f"# jlocalconv benchmark: {m['backend']}, {m['date']}\n\n"
        f"- command: `{m['command']}`\n"
        f"- machine: {m['cpu']}, {m['cores']} cores available; {m['platform']}\n"
        f"- versions: {versions}\n"
        f"- measured peak {mach['peak_gflops']:.0f} GFLOP/s (jit f32 matmul "
        f"{mach['matmul_n']}^3), bandwidth {mach['bandwidth_gbs']:.1f} GB/s "
        "(STREAM scale/triad, 256 MiB, donated)\n"
        f"- timing: median wall time after warm-up, {m['policy']}; f32 unless the shape says "
        "bf16 (jlocalconv then accumulates in f32); channels_last, jit for JAX, tf.function "
        "for TF, torch inference_mode forward and autograd fwd+bwd; fwd+bwd differentiates "
        "`sum(y * g)` with a fixed random `g`.\n"
        "- shapes: N, spatial, C->F, window, stride[, padding][, dtype]. Absolute times "
        "drift on this shared machine; compare ratios within one run."
    )


def _columns(run: dict, families=None) -> list[str]:
    names = dict.fromkeys(r["candidate"] for r in run["results"] + run["skipped"])
    fam = {r["candidate"]: r.get("family") for r in run["results"] + run["skipped"]}
    return [n for n in names if families is None or fam.get(n) in families]


def wide_table(run: dict, field: str, fmt, families=None) -> str:
    """Shapes down, candidates across; ``-`` where skipped, ``✗`` where the check failed."""
    columns = _columns(run, families)
    rows = {(r["shape"], r["candidate"]): r for r in run["results"]}
    lines = ["| shape | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for s in run["shapes"]:
        cells = []
        for c in columns:
            r = rows.get((s["key"], c))
            cell = _MISSING if r is None or r[field] is None else fmt(r[field])
            if r is not None and not r["check_ok"]:
                cell += " ✗"
            if c == AUTO and s.get("auto_choice") and r is not None:
                cell += f" ({s['auto_choice']})"
            cells.append(cell)
        lines.append(f"| {s['key']}: {s['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_table(run: dict) -> str:
    """One line per target with the measured value and whether it is met."""
    lines = ["| target | measured | goal | met |", "|---|---|---|---|"]
    for t in run["summary"]["targets"]:
        value = _MISSING if t["measured"] is None else f"{t['measured']:.2f}"
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        lines.append(f"| {t['target']} | {value} | {t['goal']} | {met} |")
    return "\n".join(lines)


def per_shape_table(run: dict) -> str:
    """Speedups (x, >1 = auto faster), temp-memory ratio and auto's roofline fraction."""
    sm = run["summary"]
    lax, peers = sm["auto_vs_lax"], sm["auto_vs_best_peer_fwd_bwd"]
    temp = sm["temp_auto_over_lax"]["fwd_bwd"]["per_shape"]
    rows = {(r["shape"], r["candidate"]): r for r in run["results"]}
    head = (
        "| shape | auto picks | fwd vs lax | fwd+bwd vs lax | fwd+bwd vs best peer | "
        "temp auto/lax | bound | auto % of roofline fwd / fwd+bwd |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for s in run["shapes"]:
        k, auto = s["key"], rows.get((s["key"], AUTO))
        peer = peers["per_shape"].get(k)
        peer_cell = f"{peer:.2f}x ({peers['best_peer'][k]})" if peer else _MISSING
        roof = _MISSING
        if auto:
            roof = f"{auto['roofline_fwd']:.0%} / {auto['roofline_fwd_bwd']:.0%}"
        lines.append(
            f"| {k} | {s.get('auto_choice') or _MISSING} | {_x(lax['fwd']['per_shape'].get(k))} "
            f"| {_x(lax['fwd_bwd']['per_shape'].get(k))} | {peer_cell} "
            f"| {_ratio(temp.get(k))} | {s['limit_fwd']} / {s['limit_fwd_bwd']} | {roof} |"
        )
    return "\n".join(lines)


def real_layers_table(run: dict) -> str:
    """The real model layers: auto's times, ratios over lax and torch, temp ratio, source."""
    real = run["summary"].get("real_layers")
    if not real or not real["vs_lax_fwd"]["per_shape"]:
        return ""
    rows = {(r["shape"], r["candidate"]): r for r in run["results"]}
    sources = {s.key: s.source for s in suite.REAL_LAYERS}
    lines = [
        "## Real model layers\n",
        "| layer | shape | auto picks | auto ms fwd / fwd+bwd | x lax fwd / fwd+bwd "
        "| x torch fwd / fwd+bwd | temp auto/lax | % of bound fwd / fwd+bwd | source |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in run["shapes"]:
        k, auto = s["key"], rows.get((s["key"], AUTO))
        if k not in real["vs_lax_fwd"]["per_shape"] or auto is None:
            continue
        ratio = [
            "/".join(_x(real[f"vs_{peer}_{p}"]["per_shape"].get(k)) for p in ("fwd", "fwd_bwd"))
            for peer in ("lax", "torch")
        ]
        temp = real["temp_auto_over_lax"]["per_shape"].get(k)
        lines.append(
            f"| {k} | {s['label']} | {s.get('auto_choice') or _MISSING} "
            f"| {_ms(auto['fwd_ms'])} / {_ms(auto['fwd_bwd_ms'])} | {ratio[0]} | {ratio[1]} "
            f"| {_ratio(temp)} | {auto['roofline_fwd']:.0%} / {auto['roofline_fwd_bwd']:.0%} "
            f"| {sources.get(k, '')} |"
        )
    return "\n".join(lines)


def roofline_table(run: dict) -> str:
    """Counted work, the bound and the best candidate's fraction of it, per shape."""
    rows = [r for r in run["results"] if r["check_ok"]]
    lines = [
        "Fraction = bound time / measured time (1 = at the roofline). FLOPs: `2*B*P*D*F` "
        "forward, 3x that for fwd+bwd; bytes: inputs + kernel + result once (fwd), "
        "`3*(inputs + kernel) + 2*result` (fwd+bwd). Small working sets can sit in cache and "
        "beat the DRAM bandwidth, so memory-bound fractions above 1 are possible.",
        "",
        "| shape | GFLOP fwd | MB fwd | bound fwd ms (limit) | best fwd (fraction) "
        "| bound fwd+bwd ms (limit) | best fwd+bwd (fraction) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in run["shapes"]:
        best = {}
        for phase in ("fwd", "fwd_bwd"):
            mine = [r for r in rows if r["shape"] == s["key"]]
            top = max(mine, key=lambda r: r[f"roofline_{phase}"], default=None)
            best[phase] = (
                f"{top['candidate']} ({top[f'roofline_{phase}']:.0%})" if top else _MISSING
            )
        lines.append(
            f"| {s['key']} | {s['gflop_fwd']:.3f} | {s['mbytes_fwd']:.1f} "
            f"| {s['bound_fwd_ms']:.3f} ({s['limit_fwd']}) | {best['fwd']} "
            f"| {s['bound_fwd_bwd_ms']:.3f} ({s['limit_fwd_bwd']}) | {best['fwd_bwd']} |"
        )
    return "\n".join(lines)


def _sharded(run: dict) -> str:
    sharded = run.get("sharded") or {}
    if not sharded.get("rows"):
        note = sharded.get("note")
        return (
            f"## Sharded (bench/studies/sharded.py, 8 simulated CPU devices)\n\n{note}"
            if note
            else ""
        )
    rows = sharded["rows"]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|---" * len(keys) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for r in rows]
    head = "## Sharded (bench/studies/sharded.py, 8 simulated CPU devices)\n\n"
    return (
        head + (sharded.get("note", "") + "\n\n" if sharded.get("note") else "") + "\n".join(lines)
    )


def _notes(run: dict) -> str:
    lines = [f"- {n}" for n in run["notes"]]
    lines += [f"- {s['shape']} / {s['candidate']}: {s['reason']}" for s in run["skipped"]]
    bad = [r for r in run["results"] if not r["check_ok"]]
    lines += [
        f"- {r['shape']} / {r['candidate']}: result differs from the reference "
        f"(relative error {r['check_rel_err']:.1e}); excluded from the ratios"
        for r in bad
    ]
    return "## Notes (skips and failures)\n\n" + "\n".join(lines) if lines else ""


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return _MISSING if v is None else str(v)


def _ms(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _mib(v: int) -> str:
    return f"{v / 2**20:.3g}"


def _sec(v: float) -> str:
    return f"{v:.2f}"


def _x(v) -> str:
    return _MISSING if v is None else f"{v:.2f}x"


def _ratio(v) -> str:
    return _MISSING if v is None else f"{v:.2f}"
