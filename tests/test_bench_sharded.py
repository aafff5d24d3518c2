"""``python -m bench.studies.sharded --smoke`` runs end to end on 8 simulated devices; its counted
figures (parameter and halo bytes per device) are the ones the halo plan predicts. No
timings are asserted, only that they exist."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jlocalconv.sharding import halo_plan

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `bench` is a folder of the repository, not an installed package

from bench.studies.sharded import MESHES, SMOKE  # noqa: E402


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("sharded") / "sharded.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # bench.studies.sharded sets the 8-device flag itself
    cmd = [sys.executable, "-m", "bench.studies.sharded", "--smoke", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["note"]
    return data["rows"]


def test_every_mesh_has_a_row_in_the_hook_format(rows):
    assert [r["mesh"] for r in rows] == list(MESHES)
    for row in rows:
        for key in ("name", "shape", "mesh", "fwd_ms", "fwd_bwd_ms", "temp_bytes_per_device"):
            assert key in row, key
        assert 0 < row["fwd_ms"] < 1e4 and 0 < row["fwd_bwd_ms"] < 1e4
        assert row["temp_bytes_per_device"] >= 0 and row["all_gathers_fwd"] == 0


def test_parameter_and_halo_bytes_are_the_plans(rows):
    (shape,) = SMOKE
    geom = shape.geometry()
    for row in rows:
        spec = MESHES[row["mesh"]]
        dims = dict(zip(spec[1], spec[0])) if spec else {}
        space, data = dims.get("space", 1), dims.get("data", 1)
        assert row["param_bytes_per_device"] * space == row["param_bytes_total"]
        halo_rows = halo_plan(geom, space).halo_rows if space > 1 else 0
        cols_channels = shape.spatial[1] * shape.channels
        expected = halo_rows * (shape.batch // data) * cols_channels * 4
        assert row["halo_bytes_fwd_per_device"] == expected, row
        assert row["halo_bytes_fwd_bwd_per_device"] >= expected


def test_tpu_pod_script_dry_run(capsys):
    """bench/studies/tpu_pod.py's code path on this process's one device (a 1x1 mesh, no
    jax.distributed): the sharded first step equals the one-device step, to float32
    rounding (the two are separate XLA programs, which may fuse the kernel gradient's sum
    over batch rows differently: one ulp of the updated kernel, as test_sharding allows)."""
    import re

    from bench.studies import tpu_pod

    assert tpu_pod.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "mesh: {'data': 1, 'space': 1}" in out
    (diff,) = re.findall(r"kernel shard max \|diff\|: (\S+)", out)
    assert float(diff) <= 1e-7
