"""The benchmark runs end to end in its tiny smoke mode (so it cannot rot) and its counted
work is what the README says. No timings are asserted: only that they exist and are sane."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `bench` is a folder of the repository, not an installed package

from bench import roofline, suite  # noqa: E402
from bench.run import _filter  # noqa: E402


def _run(args: list[str], out: Path, **env_vars: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    # The bench compiles as users do (not with conftest's -O0), and its report's command
    # names only the settings a test gives it.
    env.pop("XLA_FLAGS", None)
    env.update(env_vars)
    cmd = [sys.executable, *args, "--smoke", "--no-sharded", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (js,) = out.glob("cpu-*.json")
    assert js.with_suffix(".md").exists()
    return {
        "json": json.loads(js.read_text()),
        "md": js.with_suffix(".md").read_text(),
        "proc": proc,
    }


# Huge pages change the kernel-bound layers' backward pass 1.5x: a report without them
# in its command could not be reproduced. The module's smoke run sets them (one bench
# run fewer than a run of its own for that check).
TUNABLE = "glibc.malloc.hugetlb=1"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    return _run(["-m", "bench"], tmp_path_factory.mktemp("bench"), GLIBC_TUNABLES=TUNABLE)


def test_smoke_measures_every_implementation(smoke):
    import jlocalconv

    run = smoke["json"]
    measured = {r["candidate"] for r in run["results"]}
    names = (*jlocalconv.implementations.names(), "autotune")
    expected = {f"jlocalconv:{n}" for n in names} | {"jax.lax"}
    assert expected <= measured
    for row in run["results"]:
        if row["family"] in ("jlocalconv", "jax"):
            assert row["check_ok"], row  # every JAX variant computes the same operation
            assert row["temp_fwd_bwd_bytes"] is not None and row["compile_fwd_bwd_s"] > 0
        assert 0 < row["fwd_ms"] < 1e4 and 0 < row["fwd_bwd_ms"] < 1e4
        assert row["repeats"] == [2, 2]


def test_smoke_reports_machine_targets_and_tables(smoke):
    run, md = smoke["json"], smoke["md"]
    assert run["machine"]["peak_gflops"] > 0 and run["machine"]["bandwidth_gbs"] > 0
    assert len(run["summary"]["targets"]) == 7  # the smoke run has no real layers
    compiled = run["compile_vag"]["tiny"]  # bench.compile_check, judged by the last target
    assert compiled["auto_s"] > 0 and compiled["lax_s"] > 0
    assert math.isclose(compiled["ratio"], compiled["auto_s"] / compiled["lax_s"])
    assert run["summary"]["targets"][-1]["measured"] == compiled["ratio"]
    assert "auto against lax (median of 3, alternated)" in md
    lax_ratio = run["summary"]["auto_vs_lax"]["fwd"]["per_shape"]["tiny"]
    assert math.isfinite(lax_ratio) and lax_ratio > 0
    assert "## Forward, median ms" in md and "| tiny: 2, 7x6, 2->3, 3x3, 2, same |" in md
    assert "jax.lax" in smoke["proc"].stdout  # the table is printed too


def test_script_entry_point_and_only_filter(tmp_path):
    run = _run(["bench/run.py", "--only", "auto,jax.lax"], tmp_path)["json"]
    assert [r["candidate"] for r in run["results"]] == ["jlocalconv:auto", "jax.lax"]


def test_report_command_carries_the_allocator_setting(smoke):
    meta = smoke["json"]["meta"]
    assert meta["environment"]["GLIBC_TUNABLES"] == TUNABLE
    assert meta["command"].startswith(f"GLIBC_TUNABLES={TUNABLE} python -m bench --smoke ")
    assert f"command: `GLIBC_TUNABLES={TUNABLE} python -m bench --smoke " in smoke["md"]


def test_filter_matches_names_families_and_globs():
    from bench.candidate import Candidate

    cands = [
        Candidate(n, f, None)
        for n, f in [
            ("jlocalconv:auto", "jlocalconv"),
            ("jax.lax", "jax"),
            ("tf_keras.LC2", "tf_keras"),
        ]
    ]
    names = lambda only: [c.name for c in _filter(cands, only)]
    assert names(["auto"]) == ["jlocalconv:auto"]
    assert names(["tf_keras,jax.lax"]) == ["jax.lax", "tf_keras.LC2"]
    assert names(["tf_keras.LC*"]) == ["tf_keras.LC2"]
    assert names([]) == [c.name for c in cands]


def test_counted_work_matches_the_formula():
    s = suite.DEFAULT[0]  # 32, 32x32, 16->16, 3x3, 1: P = 30*30, D = 9*16
    fwd, both = roofline.work(s, False), roofline.work(s, True)
    assert fwd.flops == 2 * 32 * 900 * 144 * 16
    x, k, y = 32 * 32 * 32 * 16 * 4, 900 * 144 * 16 * 4, 32 * 900 * 16 * 4
    assert fwd.bytes == x + k + y and both.bytes == 3 * (x + k) + 2 * y
    assert both.flops == 3 * fwd.flops


def test_default_suite_is_the_issues():
    labels = [s.label() for s in suite.DEFAULT]
    assert labels[:3] == [
        "32, 32x32, 16->16, 3x3, 1",
        "32, 28x28, 1->8, 5x5, 1",
        "64, 16x16, 32->32, 3x3, 1",
    ]
    assert "8, 24x24, 32->64, 3x3, 1, same" in labels and "4, 12x12x12, 4->8, 3x3x3, 1" in labels
    with pytest.raises(ValueError, match="unknown"):
        suite.select(suite.DEFAULT, ["nope"])


def test_batched_dot_ceiling_script_runs(capsys):
    from bench.studies import batched_dot

    batched_dot.main(["--smoke"])
    lines = capsys.readouterr().out.splitlines()
    names = [*(f"einsum {spec}" for spec in batched_dot.LAYOUTS), "scan of matmuls"]
    for name in [*names, "jlocalconv tiles (windows included)", "matmul 256^3"]:
        (line,) = [line for line in lines if line.startswith(name)]
        assert float(line.split()[-4]) > 0 and line.endswith("GFLOP/s")  # a time and a rate


def test_bf16_copies_study_runs_and_bits_hold_no_more(capsys):
    """The study behind the README's bf16 paragraph: both programs compile both ways, and
    moving the bf16 data as bits never holds more than moving it as bf16 (where XLA
    widens bf16 data movement, less by the data's own size)."""
    from bench.studies import bf16_copies

    bf16_copies.main(["--smoke"])
    lines = capsys.readouterr().out.splitlines()
    for name, data, plain, bits in bf16_copies.report(1):
        (line,) = [line for line in lines if line.startswith(name)]
        assert line.split()[-3:] == [f"{data:.2f}", f"{plain:.2f}", f"{bits:.2f}"]
        assert data > 0 and 0 < bits <= plain


def test_keras3_deepface_report_command_is_the_one_run():
    import argparse

    from bench import keras3_deepface

    args = argparse.Namespace(argv=["--tf-train", "--rounds", "6", "--tag=-x"])
    flags = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
    assert keras3_deepface._command(args, flags) == (
        "XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot python -m bench "
        "--keras3-deepface --tf-train --rounds 6 --tag=-x"
    )


def test_keras3_deepface_is_reached_from_python_m_bench():
    """``python -m bench --keras3-deepface`` dispatches to bench.keras3_deepface (its help)."""
    cmd = [sys.executable, "-m", "bench", "--keras3-deepface", "--help"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DeepFace in Keras 3" in proc.stdout and "--tf-python" in proc.stdout


def test_unstrided_tangent_study_runs_and_takes_what_the_rule_takes(capsys):
    """``python -m bench.studies.unstrided_tangent --smoke`` times one problem both ways; its
    problems are unstrided sweep problems the rule sends axis by axis."""
    from bench.studies import unstrided_tangent as study
    from jlocalconv.implementations import slices
    from jlocalconv.implementations._windows import sliced_by_axis

    study.main(["--smoke"])
    out = capsys.readouterr().out
    assert "| 2, 24x22, 1->2, 5x5, 1 | shifts |" in out and "\n1 problems; rule on / off" in out
    with study._rule(False):
        assert not slices.sliced_by_axis(study.SMOKE.geometry(), study.SMOKE.batch, 4)
    assert slices.sliced_by_axis is sliced_by_axis  # restored
    shapes = study.problems((9,), 30)
    assert shapes and all(s.strides == (1,) * s.ndim for s in shapes)
    assert all(sliced_by_axis(s.geometry(), s.batch, 4) for s in shapes)


def test_constant_ab_study_times_both_ways_and_restores_the_constant(capsys):
    """``python -m bench.studies.constant_ab``: a problem timed with the constant as it is
    and changed, the constant restored after; only problems whose route changes qualify."""
    from bench import sweep
    from bench.studies import constant_ab
    from jlocalconv.implementations import tiles

    constant_ab.main(["tiles.MIN_TILES=4", "--keys", "s2-1", "--rounds", "1"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "tiles.MIN_TILES=4: 1 problems" and tiles.MIN_TILES == 8
    assert out[1].startswith("s2-1 3, 35, 66->2, 7, 3, dil 2: ") and out[2].startswith("1 problems")
    *measures, lax_temp = out[1].split("; ")[1:]
    ratios = [float(part.rsplit("(", 1)[1].rstrip(")")) for part in measures]
    assert len(ratios) == 4 and all(r > 0 for r in ratios[:3])
    assert lax_temp.startswith("lax temp ")
    assert re.search(r"; over the temp bounds: [01] -> [01]$", out[2])
    # The temp flag: lax's temp against the sweep's bounds, current and changed.
    row = {"lax_temp_mib": 4.0, False: {"temp_mib": 4.5}, True: {"temp_mib": 5.5}}
    assert [constant_ab.within_temp_bounds(row, on) for on in (False, True)] == [True, False]
    assert constant_ab._over_flag(row) == " NEWLY OVER"
    assert constant_ab._over_flag(row | {False: row[True], True: row[False]}) == " newly within"
    unchanged = constant_ab.parse(f"tiles.MIN_TILES={tiles.MIN_TILES}")
    assert constant_ab.affected(range(2, 3), 20, unchanged) == []
    assert constant_ab.affected(range(2, 3), 20, constant_ab.parse("tiles.MIN_TILES=2"))
    with pytest.raises(ValueError, match="no NOPE"):
        constant_ab.parse("tiles.NOPE=1")
    with pytest.raises(ValueError, match="s<seed>-<index>"):
        sweep.problem("54-4")
