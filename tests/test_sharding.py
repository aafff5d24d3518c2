"""jlocalconv.sharding: the halo plan (pure Python, many geometries), argument errors, a
1-device mesh in this process, and, in subprocesses, 8 simulated devices
(``tests/sharding_checks.py``) and a 2-process ``jax.distributed`` training step
(``tests/multihost_worker.py``)."""

from __future__ import annotations

import itertools
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sharding_checks import CHECKS
from sharding_problem import GRAD_TOL, PARAM_TOL, optimizer, train_problem, train_step

import jlocalconv
from jlocalconv.geometry import make_geometry
from jlocalconv.sharding import (
    halo_plan,
    kernel_partition_spec,
    kernel_sharding,
    sharded_local_conv,
)

TESTS = Path(__file__).resolve().parent
EIGHT_DEVICES = "--xla_force_host_platform_device_count=8"


# ---------------------------------------------------------------- the halo plan


_UNSET = object()


def _rows_assembled(plan, device: int, rows: int) -> list[int | None]:
    """Input row indices device ``device`` holds after writing the plan's windows into
    zeros, as sharding._with_halo does (None: a zero row). Overlapping windows must agree."""
    got: list[object] = [_UNSET] * plan.rows
    for piece in plan.pieces:
        place, source = piece.at[device], device + piece.hop
        if place is None:
            continue
        assert 0 <= source < plan.devices and (plan.split or piece.hop == 0), (piece, device)
        assert 0 <= piece.starts[device] <= plan.block - piece.width, (piece, device)
        first = source * plan.block if plan.split else 0
        for r in range(piece.width):
            index = first + piece.starts[device] + r
            value = index if index < rows else None
            if 0 <= place + r < plan.rows:
                assert got[place + r] in (_UNSET, value), (piece, device, r)
                got[place + r] = value
    return [None if v is _UNSET else v for v in got]


def _rows_needed(geom, devices: int, device: int) -> list[int | None]:
    """The padded-input rows device ``device``'s output rows read, from the definition."""
    per_device = geom.output_shape[0] // devices
    stride, dil, size = geom.strides[0], geom.dilation[0], geom.kernel_size[0]
    low, rows = geom.padding[0][0], geom.spatial_shape[0]
    first = device * per_device * stride - low
    extent = (per_device - 1) * stride + dil * (size - 1) + 1
    return [r if 0 <= r < rows else None for r in range(first, first + extent)]


GEOMETRY_GRID = list(
    itertools.product(
        [1, 2, 3, 4, 7, 9],  # window
        [1, 2, 3],  # stride
        [1, 2, 3],  # dilation
        ["valid", "same", (0, 0), (3, 1), (0, 5), (6, 2)],  # row padding
        [1, 2, 4, 8],  # devices
    )
)


def test_halo_plan_gives_every_device_exactly_its_rows():
    """For ~1300 row geometries (every window/stride/dilation/padding mix, 1 to 8 devices,
    input rows that divide by them or not, one to several hops each way), following the plan
    yields exactly the rows each device's outputs read, in order, with zeros exactly where
    the padding is."""
    checked = 0
    for size, stride, dil, padding, devices in GEOMETRY_GRID:
        for rows in range(1, 40):
            pad = padding if isinstance(padding, str) else (padding,)
            try:
                geom = make_geometry((1, rows, 1), size, stride, pad, dil)
            except ValueError:  # the window does not fit
                continue
            if geom.output_shape[0] % devices:
                continue
            plan = halo_plan(geom, devices)
            for device in range(devices):
                want = _rows_needed(geom, devices, device)
                assert _rows_assembled(plan, device, rows) == want, (geom, devices, device, plan)
            checked += 1
    assert checked > 1000


def test_halo_plan_rows_moved():
    geom = make_geometry((1, 16, 16, 3), 3, padding="same")  # one row from each neighbour
    plan = halo_plan(geom, 4)
    assert plan.split and plan.halo_rows == 2 and plan.block == 4 and plan.rows == 6
    # issue 17: 12 input rows in blocks of 3 for output blocks of 2 rows (5-row window):
    # device 3 reads input rows 6..11, all of device 2's block and its own.
    geom = make_geometry((1, 12, 7, 3), (5, 3), (1, 2))
    plan = halo_plan(geom, 4)
    assert [(p.hop, p.width) for p in plan.pieces] == [(-1, 3), (0, 3), (1, 3)]
    # input rows that do not divide: taken replicated over the axis, nothing moves
    plan = halo_plan(make_geometry((1, 18, 7, 3), 3), 8)
    assert not plan.split and plan.block == 18 and plan.halo_rows == 0


def _geometry_with(out_rows: int, devices: int, geometry: dict):
    """The 1-D geometry of the fewest input rows, a multiple of ``devices``, that gives
    ``out_rows`` output rows."""
    for rows in range(devices, 4 * out_rows + 20, devices):
        try:
            geom = make_geometry((1, rows, 1), **geometry)
        except ValueError:  # the window does not fit yet
            continue
        if geom.output_shape[0] == out_rows:
            return geom
    raise AssertionError(f"no input gives {out_rows} output rows for {geometry}")


@pytest.mark.parametrize(
    "geometry",
    [
        dict(kernel_size=3, padding="same"),
        dict(kernel_size=5, strides=2, padding=((4, 4),), dilation=2),
        dict(kernel_size=7, strides=3, padding=((4, 2),)),
    ],
)
def test_halo_traffic_does_not_grow_with_devices(geometry):
    """Three output rows per device, on 2 to 256 devices (input rows that divide): the rows
    in the collective-permutes stay at their value on 8 devices. (Input and output row
    blocks can differ only by a multiple of the devices bounded by the window and padding,
    so on many devices such blocks line up.)"""
    moved = {}
    for devices in (8, 2, 4, 16, 64, 256):
        plan = halo_plan(_geometry_with(3 * devices, devices, geometry), devices)
        assert plan.split
        moved[devices] = plan.halo_rows
    assert max(moved.values()) == moved[8] > 0, moved


# ---------------------------------------------------------------- this process (1 device)


def test_one_device_mesh_equals_local_conv():
    mesh = jax.make_mesh((1, 1), ("data", "space"))
    f = sharded_local_conv(mesh, batch_axis="data", spatial_axis="space")
    x = jax.random.normal(jax.random.key(0), (2, 9, 7, 3))
    k = jax.random.normal(jax.random.key(1), jlocalconv.kernel_shape(x.shape, 4, 3, 2, "same"))
    b = jnp.arange(4.0)
    got = jax.jit(lambda x, k: f(x, k, 3, 2, padding="same", bias=b))(x, k)
    want = jlocalconv.local_conv(x, k, 3, 2, padding="same", bias=b)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_kernel_placement_helpers():
    mesh = jax.make_mesh((1,), ("space",))
    assert kernel_partition_spec("space") == jax.sharding.PartitionSpec("space", None, None)
    assert kernel_partition_spec() == jax.sharding.PartitionSpec(None, None, None)
    assert kernel_sharding(mesh, "space").spec == kernel_partition_spec("space")
    with pytest.raises(ValueError, match="kernel_sharding: `spatial_axis` must be None or one of"):
        kernel_sharding(mesh, "rows")


def test_bad_arguments_are_named():
    mesh = jax.make_mesh((1, 1), ("data", "space"))
    with pytest.raises(TypeError, match=r"`mesh` must be a jax\.sharding\.Mesh"):
        sharded_local_conv(jax.devices())
    with pytest.raises(ValueError, match="`batch_axis` must be None or one of"):
        sharded_local_conv(mesh, batch_axis="batch")
    with pytest.raises(ValueError, match="`spatial_axis` must be a mesh axis other than"):
        sharded_local_conv(mesh, batch_axis="data", spatial_axis="data")
    f = sharded_local_conv(mesh, spatial_axis="space")
    x = jnp.ones((2, 6, 6, 3))
    with pytest.raises(ValueError, match="sharded_local_conv: `kernel` must be of output_items"):
        f(x, jnp.ones((10, 27, 4)), 3, 1)
    with pytest.raises(ValueError, match="sharded_local_conv: `implementation` must be one of"):
        f(x, jnp.ones((16, 27, 4)), 3, 1, implementation="fast")


def test_rows_and_batch_must_divide(monkeypatch):
    """Checked before shard_map, from the mesh's axis sizes (a fake 3x4 shape here: one
    device cannot make a larger mesh in this process)."""
    mesh = jax.make_mesh((1, 1), ("data", "space"))
    monkeypatch.setattr(type(mesh), "shape", property(lambda self: {"data": 3, "space": 4}))
    f = sharded_local_conv(mesh, batch_axis="data", spatial_axis="space")
    x = jnp.ones((6, 7, 5, 2))  # valid 3x3: 5 output rows
    k = jnp.ones(jlocalconv.kernel_shape(x.shape, 2, 3))
    with pytest.raises(ValueError, match=r"output rows \(5\) divide evenly over mesh axis 'space'"):
        f(x, k, 3, 1)
    with pytest.raises(ValueError, match=r"batch size \(4\) divide evenly over mesh axis 'data'"):
        f(x[:4], k, 3, 1)


# ---------------------------------------------------------------- 8 simulated devices


def _on_eight_devices(names: list[str], timeout: int, **env: str) -> str:
    """The report of tests/sharding_checks.py (``names``; [] for all) in a subprocess."""
    env = dict(os.environ, **env, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {EIGHT_DEVICES}"
    proc = subprocess.run(
        [sys.executable, str(TESTS / "sharding_checks.py"), *names],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert "PASS" in proc.stdout or "FAIL" in proc.stdout, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def eight_device_report() -> str:
    return _on_eight_devices([], timeout=400)


@pytest.mark.parametrize("name", list(CHECKS))
def test_on_eight_devices(eight_device_report, name):
    """One check of tests/sharding_checks.py (see its docstrings); its traceback on failure."""
    lines = eight_device_report.split("\n")
    assert f"PASS {name}" in lines, eight_device_report.split(f"FAIL {name}\n")[-1][:4000]


@pytest.mark.slow
def test_many_random_geometries_on_eight_devices():
    """The random-geometry checks with 64 fresh geometries per mesh (CI's run checks 8)."""
    seed = random.randrange(2**31)
    names = [name for name in CHECKS if name.startswith("random_geometries")]
    report = _on_eight_devices(
        names, timeout=3600, SHARDING_SWEEP_CASES="64", SHARDING_SWEEP_SEED=str(seed)
    )
    for name in names:
        assert f"PASS {name}" in report.split("\n"), f"seed {seed}:\n{report[-4000:]}"


# ---------------------------------------------------------------- two processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_data_parallel_step_equals_one_process(tmp_path):
    """Two processes (one CPU device and half the batch each, gloo collectives) take one
    adamw step of tests/sharding_problem.py; loss, gradients and new parameters equal the
    same step in this process on the whole batch."""
    out, port = tmp_path / "step.npz", _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, str(TESTS / "multihost_worker.py"), str(port)]
    procs = [
        subprocess.Popen([*cmd, str(i), str(out)], env=env, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    errors = []
    for p in procs:
        try:
            errors.append(p.communicate(timeout=180)[1])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the two jax.distributed processes did not finish in 180 s")
    assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-2000:] for e in errors)

    case, x, params, labels = train_problem()
    opt = optimizer()
    new_params, _, loss, grads = train_step(jlocalconv.local_conv, case, opt)(
        params, opt.init(params), x, labels
    )
    got = np.load(out)
    np.testing.assert_allclose(got["loss"], loss, rtol=1e-5)
    for name in params:
        np.testing.assert_allclose(got[f"grads/{name}"], grads[name], **GRAD_TOL)
        np.testing.assert_allclose(got[f"params/{name}"], new_params[name], **PARAM_TOL)
