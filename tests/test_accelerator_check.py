"""``python -m bench --accelerator-check --smoke`` runs on the CPU, names backend and device,
and its float64 reference check fails loudly on a wrong implementation (injected here)."""

from __future__ import annotations

import doctest
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `bench` is a folder of the repository, not an installed package

from reference import local_conv_ref  # noqa: E402

from bench import accel_check, accelerator, numpy_reference, suite  # noqa: E402
from bench.numpy_reference import Spec, local_conv_f64, local_conv_f64_vjp  # noqa: E402
from jlocalconv import implementations  # noqa: E402
from jlocalconv.implementations.patches import local_conv_patches  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("accelerator")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "bench", "--accelerator-check", "--smoke", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (js,) = out.glob("cpu-*.json")
    md, png = js.with_suffix(".md"), js.with_suffix(".png")
    return {"json": json.loads(js.read_text()), "md": md.read_text(), "png": png}


def test_smoke_report_names_backend_device_and_command(smoke):
    meta, md = smoke["json"]["meta"], smoke["md"]
    assert meta["backend"] == "cpu" and meta["device_kind"] == jax.devices("cpu")[0].device_kind
    assert meta["versions"]["jax"] == jax.__version__
    assert md.startswith(f"# jlocalconv accelerator check: cpu, {meta['device_kind']}, ")
    assert f"- backend: cpu; device: {meta['device_kind']}" in md
    assert "`python -m bench --accelerator-check --smoke --out " in md
    pytest.importorskip("matplotlib")
    assert smoke["png"].stat().st_size > 0


def test_smoke_checks_every_implementation_in_both_formats(smoke):
    rows = smoke["json"]["check"]
    seen = {(r["implementation"], r["case"], r["dtype"]) for r in rows}
    names, cases = implementations.names(), accel_check.SMOKE_CASES
    assert seen == {(n, c.name, f.dtype) for n in names for c in cases for f in accel_check.FORMATS}
    assert all(r["ok"] and max(r["errors"].values()) < 3e-2 for r in rows)
    assert f"all {len(rows)} passed." in smoke["md"]


def test_smoke_times_every_variant_with_memory_and_compile_time(smoke):
    run = smoke["json"]
    by_name = {r["candidate"]: r for r in run["results"]}
    expected = {f"jlocalconv:{n}" for n in implementations.names()} | {"jax.lax"}
    assert expected <= set(by_name)
    for name in expected:
        row = by_name[name]
        assert row["check_ok"] and row["check_rel_err"] < 1e-5, row  # f32 on the CPU
        assert row["temp_fwd_bwd_bytes"] is not None and row["compile_fwd_bwd_s"] > 0
        assert 0 < row["fwd_ms"] < 1e4 and 0 < row["fwd_bwd_ms"] < 1e4
    goals = run["goals"]["per_shape"]["tiny"]
    assert goals["fwd_bwd_vs_lax"] == pytest.approx(
        by_name["jax.lax"]["fwd_bwd_ms"] / by_name["jlocalconv:auto"]["fwd_bwd_ms"]
    )
    assert "## Goals" in smoke["md"] and "| tiny | " in smoke["md"]


def _reversed_positions(inputs, kernel, geom, **options):
    return local_conv_patches(inputs, kernel[::-1], geom, **options)  # filters of the wrong place


def _doubled_kernel_gradient(inputs, kernel, geom, **options):
    conv = functools.partial(local_conv_patches, geom=geom, **options)

    @jax.custom_vjp
    def wrong(x, k):
        return conv(x, k)

    def backward(saved, g):
        grad_x, grad_k = jax.vjp(conv, *saved)[1](g)
        return grad_x, 2 * grad_k

    wrong.defvjp(lambda x, k: (conv(x, k), (x, k)), backward)
    return wrong(inputs, kernel)


def _raises(inputs, kernel, geom, **options):
    raise RuntimeError("no kernel for this device")


@pytest.mark.parametrize(
    ("impl", "says"),
    [
        (_reversed_positions, "forward relative error"),
        (_doubled_kernel_gradient, "grad_kernel relative error"),
        (_raises, "RuntimeError: no kernel for this device"),
    ],
)
def test_wrong_implementation_fails_loudly(impl, says, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(implementations.IMPLEMENTATIONS, "wrong", impl)
    argv = ["--smoke", "--check-only", "--implementations", "wrong", "--out", str(tmp_path)]
    assert accelerator.main(argv) == 1
    err = capsys.readouterr().err
    case = accel_check.SMOKE_CASES[0].name
    assert f"FAILED jlocalconv implementation 'wrong' on {case!r} (float32): {says}" in err
    (md,) = tmp_path.glob("cpu-*.md")
    text = md.read_text()
    assert "**FAILED**" in text and "**4 of 4 FAILED**" in text  # 2 geometries x 2 formats


@pytest.mark.parametrize("case", accel_check.CASES, ids=lambda c: c.name)
def test_numpy_reference_matches_the_test_suites_loop(case):
    """Forward against tests/reference.py; the vjp by Euler's identity for bilinear maps."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(case.input_shape)
    k = rng.standard_normal(case.kernel_shape())
    spec = case.spec
    y = local_conv_f64(x, k, spec)
    expected = local_conv_ref(
        x, k, spec.kernel_size, spec.strides, spec.data_format, spec.padding, spec.rates
    )
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(y.shape)
    grad_x, grad_k = local_conv_f64_vjp(x, k, g, spec)
    # f(x, k) is linear in each argument: <g, f(x, k)> = <grad_x, x> = <grad_k, k>, and the
    # same holds for any direction, which pins down every entry of both gradients.
    dx, dk = rng.standard_normal(x.shape), rng.standard_normal(k.shape)
    np.testing.assert_allclose(np.sum(grad_x * dx), np.sum(g * local_conv_f64(dx, k, spec)))
    np.testing.assert_allclose(np.sum(grad_k * dk), np.sum(g * local_conv_f64(x, dk, spec)))


def test_gpu_batches_are_within_range_and_bounded():
    shapes = accelerator.gpu_shapes(suite.DEFAULT + suite.REAL_LAYERS)
    for s in shapes:
        assert 32 <= s.batch <= 256
        assert s.batch == 32 or accelerator._window_bytes(s, s.batch) <= 1 << 30
    assert [s.batch for s in accelerator.gpu_shapes(suite.DEFAULT[:2], cap=4)] == [4, 4]
    assert Spec((3,), (2,), "same").pads((7,)) == ((1, 1),)


@pytest.mark.parametrize("module", [numpy_reference, accel_check, accelerator])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_report_without_matplotlib_skips_the_chart_with_a_note(smoke, tmp_path, monkeypatch):
    from bench import accel_report

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    md, js, png = accel_report.write(smoke["json"], tmp_path, chart_too=True)
    assert png is None and not list(tmp_path.glob("*.png"))
    assert "no .png: matplotlib is not importable" in md.read_text()
    assert json.loads(js.read_text())["meta"] == smoke["json"]["meta"]


def test_spent_budget_skips_measurements_and_still_reports(tmp_path):
    argv = ["--smoke", "--implementations", "patches", "--budget-s", "0", "--out", str(tmp_path)]
    assert accelerator.main(argv) == 0
    (js,) = tmp_path.glob("cpu-*.json")
    run = json.loads(js.read_text())
    assert run["results"] == [] and {c["ok"] for c in run["check"]} == {True}
    assert {s["reason"] for s in run["skipped"]} == {
        "not run: the --budget-s time budget was spent"
    }
    assert {"jlocalconv:patches", "jax.lax"} <= {s["candidate"] for s in run["skipped"]}


def test_shifts_is_skipped_where_its_unrolled_compile_would_take_minutes():
    from bench.candidate import Problem, Skip
    from bench.ours import candidates

    (shifts,) = [accelerator._guard_shifts(c) for c in candidates() if c.name.endswith("shifts")]
    wide = suite.Shape("wide", 1, (4, 4), 144, 2, (3, 3), (1, 1))  # 9 * 144 = 1296 terms
    with pytest.raises(Skip, match="1296 terms"):
        shifts.build(Problem.make(wide))
    narrow = suite.Shape("narrow", 1, (4, 4), 2, 2, (3, 3), (1, 1))
    assert shifts.build(Problem.make(narrow)).result.shape == (1, 2, 2, 2)
