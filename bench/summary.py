"""The ratios the performance issue sets targets for, computed from one run's rows."""

from __future__ import annotations

import math

from bench import suite

AUTO, LAX = "jlocalconv:auto", "jax.lax"
PEER_FAMILIES = ("tf_keras", "torch")
PHASES = ("fwd", "fwd_bwd")


def geomean(values) -> float:
    """Geometric mean of positive numbers (nan for none)."""
    values = list(values)
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def summarize(run: dict) -> dict:
    """Speedups of "auto" over lax and the best peer, temp memory and roofline fractions.

    Only rows that passed the numerical check count. Ratios > 1 mean "auto" is faster.
    """
    rows = {(r["shape"], r["candidate"]): r for r in run["results"] if r["check_ok"]}
    every = [s["key"] for s in run["shapes"]]
    real_keys = {s.key for s in suite.REAL_LAYERS}
    # The issue-3 targets are over the suite; the real layers have targets of their own.
    shapes = [k for k in every if k not in real_keys] or every
    real = [k for k in every if k in real_keys]
    summary = {
        "auto_vs_lax": {p: _speedups(rows, shapes, LAX, p) for p in PHASES},
        "auto_vs_best_peer_fwd_bwd": _versus_peers(run["results"], rows, shapes),
        "temp_auto_over_lax": {p: _temp_ratios(rows, shapes, p) for p in PHASES},
        "roofline_auto": {p: _roofline(run["shapes"], rows, p) for p in PHASES},
        "real_layers": _real_layers(run["results"], rows, real),
    }
    summary["targets"] = _targets(summary) + _real_targets(summary["real_layers"])
    return summary


def _real_layers(results, rows, real: list[str]) -> dict:
    """Per real layer: auto over lax and over torch (fwd, fwd+bwd), temp ratio, roofline."""
    torch = [r for r in results if r["family"] == "torch" and r["check_ok"]]
    out = {}
    for phase in PHASES:
        out[f"vs_lax_{phase}"] = _speedups(rows, real, LAX, phase)
        per_shape = {}
        for s in real:
            peers, auto = [r for r in torch if r["shape"] == s], rows.get((s, AUTO))
            if peers and auto:
                best = min(r[f"{phase}_ms"] for r in peers)
                per_shape[s] = best / auto[f"{phase}_ms"]
        out[f"vs_torch_{phase}"] = _stats(per_shape)
        bound = [k for k in real if k in suite.KERNEL_BOUND]
        fractions = {k: rows[(k, AUTO)][f"roofline_{phase}"] for k in bound if (k, AUTO) in rows}
        out[f"kernel_bound_roofline_{phase}"] = _stats(fractions)
    out["temp_auto_over_lax"] = _temp_ratios(rows, real, "fwd_bwd")
    return out


def _real_targets(real: dict) -> list[dict]:
    if not real["vs_lax_fwd"]["per_shape"]:
        return []

    def worst(name: str):
        w = real[name]["worst"]
        return w and w[1]

    lax = [worst(f"vs_lax_{p}") for p in PHASES]
    torch = [w for w in (worst(f"vs_torch_{p}") for p in PHASES) if w]
    return [
        _target("real layers: auto vs lax, worst (fwd or fwd+bwd)", min(lax), ">= 1", 1),
        _target(
            "real layers: auto vs torch, worst (fwd or fwd+bwd)",
            min(torch, default=None),
            ">= 1",
            1,
        ),
        _target(
            "real layers: temp auto/lax (fwd+bwd), worst",
            worst("temp_auto_over_lax"),
            "<= 1",
            1,
            le=True,
        ),
        _target(
            "kernel-bound layers: fwd fraction of bound, worst",
            worst("kernel_bound_roofline_fwd"),
            ">= 0.5",
            0.5,
        ),
        _target(
            "kernel-bound layers: fwd+bwd fraction of bound, worst",
            worst("kernel_bound_roofline_fwd_bwd"),
            ">= 0.35",
            0.35,
        ),
    ]


def _stats(per_shape: dict, worst=min) -> dict:
    values = {k: v for k, v in per_shape.items() if v is not None and math.isfinite(v)}
    key = worst(values, key=values.get) if values else None
    return {
        "per_shape": per_shape,
        "geomean": geomean(v for v in values.values() if v > 0),
        "worst": [key, values[key]] if key else None,
    }


def _speedups(rows, shapes, baseline: str, phase: str) -> dict:
    per_shape = {}
    for s in shapes:
        base, auto = rows.get((s, baseline)), rows.get((s, AUTO))
        if base and auto:
            per_shape[s] = base[f"{phase}_ms"] / auto[f"{phase}_ms"]
    return _stats(per_shape)


def _versus_peers(results, rows, shapes) -> dict:
    per_shape, best_name = {}, {}
    for s in shapes:
        peers = [r for r in results if r["shape"] == s and r["family"] in PEER_FAMILIES]
        peers = [r for r in peers if r["check_ok"]]
        auto = rows.get((s, AUTO))
        if peers and auto:
            best = min(peers, key=lambda r: r["fwd_bwd_ms"])
            per_shape[s] = best["fwd_bwd_ms"] / auto["fwd_bwd_ms"]
            best_name[s] = best["candidate"]
    return {**_stats(per_shape), "best_peer": best_name}


def _temp_ratios(rows, shapes, phase: str) -> dict:
    per_shape = {}
    for s in shapes:
        lax, auto = rows.get((s, LAX)), rows.get((s, AUTO))
        if lax and auto and lax[f"temp_{phase}_bytes"] and auto[f"temp_{phase}_bytes"] is not None:
            per_shape[s] = auto[f"temp_{phase}_bytes"] / lax[f"temp_{phase}_bytes"]
    return _stats(per_shape, worst=max)


def _roofline(shape_info, rows, phase: str) -> dict:
    compute = {}
    for info in shape_info:
        auto = rows.get((info["key"], AUTO))
        if auto and info[f"limit_{phase}"] == "compute":
            compute[info["key"]] = auto[f"roofline_{phase}"]
    return _stats(compute)


def _targets(summary: dict) -> list[dict]:
    lax, peers = summary["auto_vs_lax"], summary["auto_vs_best_peer_fwd_bwd"]
    worst = [lax[p]["worst"][1] for p in PHASES if lax[p]["worst"]]
    temp = summary["temp_auto_over_lax"]["fwd_bwd"]["worst"]
    roof = [summary["roofline_auto"][p]["worst"] for p in PHASES]
    roof = [w[1] for w in roof if w]
    return [
        _target("auto fwd vs lax, geomean speedup", lax["fwd"]["geomean"], ">= 3", 3),
        _target("auto fwd+bwd vs lax, geomean speedup", lax["fwd_bwd"]["geomean"], ">= 4", 4),
        _target("auto vs lax, worst shape (fwd or fwd+bwd)", min(worst, default=None), ">= 1", 1),
        _target("auto fwd+bwd vs best tf_keras/torch, geomean", peers["geomean"], ">= 2", 2),
        _target(
            "temp memory auto/lax (fwd+bwd), worst shape", temp and temp[1], "<= 0.5", 0.5, le=True
        ),
        _target(
            "roofline fraction, compute-bound shapes, worst", min(roof, default=None), ">= 0.5", 0.5
        ),
    ]


def compile_target(compile_vag: dict[str, dict[str, float]]) -> dict:
    """The issue-13 target on ``bench.compile_check.ratios``: value_and_grad compile of
    "auto" at most twice lax's on every suite shape (the worst ratio is the measure)."""
    worst = max((r["ratio"] for r in compile_vag.values()), default=None)
    name = "value_and_grad compile auto/lax (median of 3, alternated), worst suite shape"
    return _target(name, worst, "<= 2", 2, le=True)


def _target(name, value, goal, threshold, le=False) -> dict:
    if value is None or not math.isfinite(value):
        return {"target": name, "measured": None, "goal": goal, "met": None}
    met = value <= threshold if le else value >= threshold
    return {"target": name, "measured": value, "goal": goal, "met": met}
