"""The sweep's problem generator and the real-layer definitions (no timing asserted)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `bench` is a folder of the repository, not an installed package

import jlocalconv  # noqa: E402
from bench import jax_measure, suite, sweep, sweep_report  # noqa: E402
from bench.candidate import Built  # noqa: E402
from jlocalconv.geometry import make_geometry  # noqa: E402
from jlocalconv.implementations import choose  # noqa: E402

N = 200


@pytest.fixture(scope="module")
def drawn() -> tuple[suite.Shape, ...]:
    return sweep.problems(N, seed=7)


def test_same_seed_same_problems_other_seed_others(drawn):
    assert sweep.problems(N, seed=7) == drawn
    assert sweep.problems(10, seed=7) == drawn[:10]  # a prefix: --n does not reshuffle
    assert sweep.problems(N, seed=8) != drawn
    assert len({s.key for s in drawn}) == N


def test_problems_are_within_the_documented_ranges(drawn):
    b = sweep.Bounds()
    for s in drawn:
        geom = s.geometry()  # valid geometry: every output extent >= 1
        assert all(n >= 1 for n in geom.output_shape), s
        assert 1 <= s.ndim <= 3 and 1 <= s.batch <= b.batch, s
        assert 1 <= s.channels <= b.channels and 1 <= s.filters <= b.filters, s
        assert all(1 <= w <= b.window for w in s.kernel_size), s
        assert all(1 <= st <= b.stride for st in s.strides), s
        assert set(s.dilation) <= {1, 2, 3} and len(set(s.dilation)) == 1, s
        assert s.padding in (("valid", "same", "causal") if s.ndim == 1 else ("valid", "same"))
        assert s.dtype in ("float32", "bfloat16")
        assert sweep.fits(s, b)
        flops = 2 * s.batch * geom.output_items * geom.feature_dim * s.filters
        assert flops <= b.gflop * 1e9 and 4 * s.kernel_items() <= b.kernel_mib * 2**20


def test_the_draws_cover_every_option(drawn):
    """Every documented option occurs in 200 draws (so a range cannot silently collapse)."""
    assert {s.ndim for s in drawn} == {1, 2, 3}
    assert {s.padding for s in drawn} == {"valid", "same", "causal"}
    assert {s.dtype for s in drawn} == {"float32", "bfloat16"}
    assert {s.dilation[0] for s in drawn} == {1, 2, 3}
    assert {st for s in drawn for st in s.strides} == {1, 2, 3}
    assert max(s.channels for s in drawn) > 256 and max(s.filters for s in drawn) > 128
    assert max(s.batch for s in drawn) > 64 and min(s.batch for s in drawn) == 1


def test_smoke_bounds_are_smaller():
    small = sweep.Bounds().scaled(sweep.SMOKE_SCALE)
    assert small.batch == 4 and small.gflop < sweep.MAX_GFLOP / 32
    assert all(sweep.fits(s, small) for s in sweep.problems(20, 0, small))


def test_real_layers_are_the_published_shapes():
    layers = {s.key: s for s in suite.REAL_LAYERS}
    want = {  # key: (spatial, C, F, window, stride, padding, output_shape)
        "deepface_l4": ((63, 63), 16, 16, 9, 1, "valid", (55, 55)),
        "deepface_l5": ((55, 55), 16, 16, 7, 2, "valid", (25, 25)),
        "deepface_l6": ((25, 25), 16, 16, 5, 1, "valid", (21, 21)),
        "yolov1_local": ((7, 7), 1024, 256, 3, 1, "same", (7, 7)),
        "genomic_1d": ((20000,), 1, 4, 10, 10, "valid", (2000,)),
        "medical_3d": ((32, 32, 32), 1, 8, 3, 1, "valid", (30, 30, 30)),
    }
    assert set(layers) == set(want)
    for key, (spatial, c, f, w, st, pad, out) in want.items():
        s = layers[key]
        assert (s.spatial, s.channels, s.filters, s.padding) == (spatial, c, f, pad), key
        assert s.kernel_size == (w,) * len(spatial) and s.strides == (st,) * len(spatial)
        assert s.geometry().output_shape == out and s.source, key
    yolo = layers["yolov1_local"]
    assert 4 * yolo.kernel_items() == 441 * 2**20  # the 441 MiB kernel of the issue
    assert all(s in suite.DEFAULT for s in suite.REAL_LAYERS)  # in the default suite


def test_targets_are_computed_from_the_entries():
    def entry(key, regret, speedup, temp_auto, temp_lax):
        return {
            "shape": {"key": key},
            **{f"regret_{p}": regret for p in ("fwd", "fwd_bwd")},
            **{f"speedup_{p}": speedup for p in ("fwd", "fwd_bwd")},
            "temp_auto_mib": temp_auto,
            "temp_lax_mib": temp_lax,
        }

    rows = sweep_report.targets([entry("a", 1.0, 2.0, 1.0, 40.0), entry("b", 2.0, 0.5, 30, 40)])
    by = {r["target"]: r for r in rows}
    assert math.isclose(by["regret geomean fwd"]["value"], math.sqrt(2))
    assert by["regret worst fwd_bwd"]["value"] == 2.0 and not by["regret worst fwd"]["met"]
    assert by["share faster than lax fwd"]["value"] == 0.5
    assert by["temp within lax bounds (problems over)"]["detail"] == ["b"]  # 30 > 0.5 * 40


def test_sweep_smoke_runs_and_reports(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "--sweep",
        "--smoke",
        "--seed",
        "3",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "sweep-cpu-seed3.json").read_text())
    (entry,) = report["problems"]
    assert entry["shape"] == json.loads(json.dumps(sweep.problems(1, 3, sweep.Bounds().scaled(
        sweep.SMOKE_SCALE))[0].__dict__))  # fmt: skip
    assert {"jlocalconv:auto", "jax.lax", "jlocalconv:slices"} <= set(entry["rows"])
    for phase in ("fwd", "fwd_bwd"):
        assert entry[f"regret_{phase}"] > 0 and entry[f"speedup_{phase}"] > 0
    assert "| target |" in (tmp_path / "sweep-cpu-seed3.md").read_text()


def test_parts_of_a_sweep_merge_in_problem_order(tmp_path):
    def part(first: int, keys: list[int]) -> Path:
        meta = {"seed": 5, "first": first, "command": f"part {first}", "backend": "cpu"}
        meta |= {"date": "d", "cpu": "c", "cores": 2}
        entries = [
            {
                "shape": {"key": f"s5-{i}"},
                "label": str(i),
                "choice": "tiles",
                **{f"{f}_{p}": 1.0 + i for f in ("regret", "speedup") for p in ("fwd", "fwd_bwd")},
                **{f"best_{p}": "tiles" for p in ("fwd", "fwd_bwd")},
                "temp_auto_mib": 1.0,
                "temp_lax_mib": 2.0,
            }
            for i in keys
        ]
        path = tmp_path / f"part{first}.json"
        path.write_text(json.dumps({"meta": meta, "problems": entries}))
        return path

    merged = sweep_report.merge([part(2, [2, 3]), part(0, [0, 1])], tmp_path / "out")
    assert [e["shape"]["key"] for e in merged["problems"]] == [f"s5-{i}" for i in range(4)]
    assert merged["meta"]["parts"] == ["part 2", "part 0"]
    assert (tmp_path / "out" / "sweep-cpu-seed5.md").exists()
    other = part(9, [9])
    other.write_text(other.read_text().replace('"seed": 5', '"seed": 6'))
    with pytest.raises(ValueError, match="one seed"):
        sweep_report.merge([part(0, [0]), other], tmp_path)


def test_each_round_takes_the_candidates_in_another_order():
    """No candidate always follows the same one (a large backward pass leaves cold caches
    to whichever call comes next), and every round times each candidate once."""
    order: list[str] = []

    def built(name: str) -> Built:
        return Built(lambda: order.append(name), lambda: None, np.zeros(1))

    times = sweep._alternate({n: built(n) for n in "abcd"}, rounds=3, budget_s=1.0)
    rounds = [order[i : i + 4] for i in range(0, len(order), 4)]
    assert len(rounds) == 12 and all(sorted(r) == list("abcd") for r in rounds)
    flat = "".join(order)
    after_d = {flat[i + 1] for i in range(len(flat) - 1) if flat[i] == "d"}
    assert len(after_d) > 1  # not a fixed cyclic order
    assert all(len(t["fwd"]) == len(t["fwd_bwd"]) == 12 for t in times.values())


def test_sweep_temps_recompiles_auto_and_applies_the_bounds():
    """``python -m bench.sweep_temps``: a report entry's shape round-trips, and the
    recompiled temp is judged by the report's own bounds (compile only)."""
    from bench import sweep_temps

    shape = sweep.problems(1, seed=3, bounds=sweep.Bounds().scaled(sweep.SMOKE_SCALE))[0]
    entry = {"shape": json.loads(json.dumps(dataclasses.asdict(shape)))}  # as in a report
    assert sweep_temps.shape_of(entry) == shape
    now = sweep_temps.auto_temp_mib(shape)
    assert now >= 0 and sweep_temps.lax_temp_mib(shape) >= 0
    roomy, tight = (entry | {"temp_auto_mib": 0.0, "temp_lax_mib": lax} for lax in (now, now - 2))
    assert [r["ok"] for r in sweep_temps.recheck({"problems": [roomy, tight]})] == [True, False]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU cost model's composites")
@pytest.mark.parametrize(
    "shape, kernel_size, padding, filters, route, derivatives",
    [
        ((8, 24, 24, 32), 3, "same", 64, "tiles", "slices"),
        ((4, 20, 20, 8), (5, 7), "valid", 8, "slices", "slices"),
        ((16, 64, 64, 8), 5, "valid", 8, "shifts", "tiles"),  # 200 features: rule 1b
    ],
)
def test_a_composite_forward_is_its_value_route_program(
    shape, kernel_size, padding, filters, route, derivatives
):
    # Why the sweep times a composite's forward once with its value route's (sweep.twins):
    # undifferentiated, "auto"'s composite compiles to the value route's very program.
    geom = make_geometry(shape, kernel_size, padding=padding)
    assert choose(geom, shape[0], filters, "float32", "cpu") == f"{route}/{derivatives}"
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    k = jax.ShapeDtypeStruct(geom.kernel_shape(filters), jnp.float32)

    def program(name):
        fn = lambda x, k: jlocalconv.local_conv(
            x, k, kernel_size, 1, padding=padding, implementation=name
        )
        return jax_measure.program_fingerprint(jax.jit(fn).lower(x, k).compile())

    auto, own, other = (
        program("auto"),
        program(route),
        program("tiles" if route == "slices" else "slices"),
    )
    assert auto == own and auto != other


def test_program_fingerprint_ignores_names_and_sources_but_not_wiring():
    x = jax.ShapeDtypeStruct((4, 3), jnp.float32)

    def compiled(fn):
        return jax_measure.program_fingerprint(jax.jit(fn).lower(x, x).compile())

    def first(a, b):
        return jnp.tanh(a) - b

    def second(p, q):  # another name, other lines, the same program
        out = jnp.tanh(p)
        return out - q

    assert compiled(first) == compiled(second)
    assert compiled(first) != compiled(lambda a, b: jnp.tanh(b) - a)  # operands swapped
    assert compiled(first) != compiled(lambda a, b: jnp.tanh(a) + b)


def test_twins_are_timed_once_and_share_their_times():
    calls: list[str] = []

    def built(name: str, programs: tuple) -> Built:
        return Built(
            lambda: calls.append(f"{name}.fwd"),
            lambda: calls.append(f"{name}.bwd"),
            np.zeros(1),
            programs=programs,
        )

    cands = {"a": built("a", ("p", "q")), "b": built("b", ("p", "r")), "c": built("c", (None, "q"))}
    times = sweep._alternate(cands, rounds=2, budget_s=0.0)
    assert sorted(set(calls)) == ["a.bwd", "a.fwd", "b.bwd", "c.fwd"]
    assert times["b"]["fwd"] is times["a"]["fwd"] and times["c"]["fwd_bwd"] is times["a"]["fwd_bwd"]
    assert len(times["b"]["fwd_bwd"]) == len(times["c"]["fwd"]) == 2
