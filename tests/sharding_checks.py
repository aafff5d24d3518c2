"""Multi-device checks of :mod:`jlocalconv.sharding`, run on 8 simulated CPU devices.

The device count is fixed when JAX starts, and the main pytest process has already started
JAX with one device, so ``tests/test_sharding.py`` runs this file in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``. By hand::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharding_checks.py [NAME...]

Each check prints ``PASS <name>`` or ``FAIL <name>`` and a traceback; the exit status is 1
if any failed. Results are compared in float64 with a tight tolerance against the
single-device ``jlocalconv.local_conv`` (itself checked against ``tests/reference.py``), so a
missing, duplicated or misplaced halo row (an error of order one) cannot pass.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# the repository root: this checkout's jlocalconv, and bench.studies.sharded (which counts the bytes
# of collective-permutes)
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cases import CF, CL, Case
from reference import local_conv_ref
from sharding_problem import GRAD_TOL, PARAM_TOL, optimizer, train_problem, train_step

import jlocalconv
from bench.studies.sharded import permute_bytes
from jlocalconv import implementations
from jlocalconv.geometry import make_geometry
from jlocalconv.sharding import halo_plan, kernel_sharding, sharded_local_conv

CHECKS: dict[str, Callable[[], None]] = {}

# Geometries whose output rows divide by 8: each stresses a different halo shape.
GEOMETRIES = {
    # valid, stride 1: 2 halo rows from the next device, the last one's from the tail slab
    "valid": Case((18, 7), 3, 4, (3, 3), (1, 1), batch=8, bias="filters"),
    # same, stride 1: one row from each neighbour, zeros (the padding) at both ends
    "same-cf": Case((16, 6), 2, 3, (3, 3), (1, 1), "same", data_format=CF, batch=8),
    # stride 2, even window: each device's block ends one row into the next device's
    "stride2-same": Case((32, 5), 2, 3, (4, 3), (2, 1), "same", batch=8, bias="positions"),
    # dilation 2 with blocks of 2 rows: the halo spans two devices (two hops)
    "dilated": Case((20, 6), 2, 3, (3, 3), (1, 2), batch=8, dilation=(2, 1)),
    # stride 3 larger than the window, 3 low pad rows: rows come only from the previous device
    "stride3-explicit-cf": Case(
        (19, 5), 2, 2, (2, 2), (3, 1), ((3, 1), (0, 2)), data_format=CF, batch=8
    ),
    # causal 1-D, dilation 2: 6 rows from three previous devices
    "causal-1d": Case((16,), 3, 2, (4,), (1,), "causal", dilation=2, batch=8, bias="positions"),
    # one output row per device, a 9-row window: hops past the last device (tail only)
    "wide-1d": Case((16,), 1, 2, (9,), (1,), batch=8),
    # 3-D, same
    "3d-same": Case((8, 3, 4), 2, 2, (3, 3, 2), (1, 1, 1), "same", batch=8),
    # issue 17's: 12 input rows (blocks of 3 on 4 devices) for 8 output rows (blocks of 2)
    "issue17-cf": Case((12, 7), 3, 4, (5, 3), (1, 2), data_format=CF, batch=8),
}


def check(fn: Callable[[], None]) -> Callable[[], None]:
    CHECKS[fn.__name__.removeprefix("check_")] = fn
    return fn


def _mesh(shape: tuple[int, ...], names: tuple[str, ...], explicit: bool = False):
    types = (AxisType.Explicit if explicit else AxisType.Auto,) * len(shape)
    return jax.make_mesh(shape, names, axis_types=types)


def _operands(case: Case):
    x, k, b = case.arrays(seed=1, dtype=np.float64)
    return jnp.asarray(x), jnp.asarray(k), None if b is None else jnp.asarray(b)


def _value_and_grads(conv, case: Case, x, k, b):
    """One case's forward result and gradients (inputs, kernel, bias): the one-case
    :func:`_sweep_value_and_grads`."""
    ys, grads = _sweep_value_and_grads(conv, [case], [(x, k, b)])
    return ys[0], grads[0]


def conv_shape(case: Case, k) -> tuple[int, ...]:
    if case.data_format == CL:
        return (case.batch, *case.output_shape, k.shape[-1])
    return (case.batch, k.shape[-1], *case.output_shape)


def _assert_close(got, want, what: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * np.abs(want).max(), err_msg=what)


@functools.cache
def _unsharded_all() -> dict:
    """Every geometry's single-device result and gradients (one program, run once)."""
    cases = list(GEOMETRIES.values())
    ys, grads = _sweep_value_and_grads(jlocalconv.local_conv, cases, [_operands(c) for c in cases])
    return dict(zip(GEOMETRIES, zip(ys, grads)))


def _unsharded(name: str):
    """The single-device result and gradients for ``GEOMETRIES[name]``."""
    return _unsharded_all()[name]


def _assert_matches(y, grads, name: str, what: str) -> None:
    """``y`` and ``grads`` (inputs, kernel, bias) equal one device's for ``GEOMETRIES[name]``."""
    y0, grads0 = _unsharded(name)
    _assert_close(y, y0, f"{what}: forward")
    for label, g, g0 in zip(("inputs", "kernel", "bias"), grads, grads0):
        if g0 is not None:
            _assert_close(g, g0, f"{what}: d/d{label}")


def _compare_meshes(mesh, batch_axis, spatial_axis, names) -> None:
    f = sharded_local_conv(mesh, batch_axis=batch_axis, spatial_axis=spatial_axis)
    cases = [GEOMETRIES[name] for name in names]
    ys, grads = _sweep_value_and_grads(f, cases, [_operands(c) for c in cases])
    for name, y, g in zip(names, ys, grads, strict=True):
        _assert_matches(y, g, name, name)
        if spatial_axis is not None:  # the kernel's gradient stays split by output row
            assert g[1].sharding.spec[0] == spatial_axis, g[1].sharding


@check
def check_reference_forward() -> None:
    """One spatial case against the independent NumPy loop, not only against local_conv."""
    case = GEOMETRIES["stride2-same"]
    x, k, b = _operands(case)
    f = sharded_local_conv(_mesh((8,), ("space",)), spatial_axis="space")
    y = f(x, k, case.kernel_size, case.strides, bias=b, **case.kwargs())
    want = local_conv_ref(np.asarray(x), np.asarray(k), case.kernel_size, case.strides,
                          case.data_format, bias=np.asarray(b), **case.kwargs())  # fmt: skip
    _assert_close(y, want, "forward vs reference.py")


@check
def check_data_parallel_8() -> None:
    _compare_meshes(_mesh((8,), ("data",)), "data", None, ["valid", "same-cf", "stride2-same"])


@check
def check_spatial_8() -> None:
    _compare_meshes(_mesh((8,), ("space",)), None, "space", list(GEOMETRIES))


@check
def check_data_by_spatial_2x4() -> None:
    names = ["valid", "same-cf", "stride3-explicit-cf", "causal-1d", "issue17-cf"]
    _compare_meshes(_mesh((2, 4), ("data", "space")), "data", "space", names)


@check
def check_every_implementation_2x4() -> None:
    """Each implementation runs per device inside shard_map (e.g. a scan carry must vary
    over the mesh axes like its operands) and gives the same forward and gradients."""
    case = GEOMETRIES["stride2-same"]
    f = sharded_local_conv(
        _mesh((2, 4), ("data", "space")), batch_axis="data", spatial_axis="space"
    )
    names = implementations.names()
    convs = [functools.partial(f, implementation=name) for name in names]
    ys, grads = _sweep_value_and_grads(convs, [case] * len(names), [_operands(case)] * len(names))
    for name, y, g in zip(names, ys, grads, strict=True):
        _assert_matches(y, g, "stride2-same", name)


@check
def check_explicit_mesh_2x4() -> None:
    """A mesh of Explicit axes (jax.make_mesh's default) with pre-placed operands."""
    mesh = _mesh((2, 4), ("data", "space"), explicit=True)
    case = GEOMETRIES["valid"]
    x, k, b = _operands(case)
    x = jax.device_put(x, NamedSharding(mesh, P("data")))
    k = jax.device_put(k, kernel_sharding(mesh, "space"))
    with jax.set_mesh(mesh):
        y, grads = _value_and_grads(
            sharded_local_conv(mesh, batch_axis="data", spatial_axis="space"), case, x, k, b
        )
    _assert_matches(y, grads, "valid", "explicit mesh")
    assert grads[1].sharding.spec[0] == "space"


@check
def check_plain_jit_with_named_shardings() -> None:
    """Plain local_conv under jit: batch-sharded inputs, kernel replicated or row-sharded."""
    mesh = _mesh((2, 4), ("data", "space"))
    case = GEOMETRIES["valid"]
    x, k, b = _operands(case)
    want, _ = _unsharded("valid")
    xs = jax.device_put(x, NamedSharding(mesh, P(("data", "space"))))
    for kspec in (P(), P("space")):
        ks = jax.device_put(k, NamedSharding(mesh, kspec))
        y, _ = _value_and_grads(jlocalconv.local_conv, case, xs, ks, b)
        _assert_close(y, want, f"kernel {kspec}")
        assert len(y.sharding.device_set) == 8


@check
def check_pmap() -> None:
    case = GEOMETRIES["same-cf"]
    x, k, _ = _operands(case)
    xs = x.reshape(8, 1, *x.shape[1:])
    conv = lambda x: jlocalconv.local_conv(x, k, case.kernel_size, case.strides,
                                           data_format=CF, **case.kwargs())  # fmt: skip
    _assert_close(jax.pmap(conv)(xs).reshape(-1, *conv(x).shape[1:]), conv(x), "pmap")


@check
def check_training_step_2x4() -> None:
    case, x, params, labels = train_problem()
    opt = optimizer()
    want = train_step(jlocalconv.local_conv, case, opt)(params, opt.init(params), x, labels)
    mesh = _mesh((2, 4), ("data", "space"))
    placed = dict(params, kernel=jax.device_put(params["kernel"], kernel_sharding(mesh, "space")))
    placed["bias"] = jax.device_put(params["bias"], NamedSharding(mesh, P("space")))
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    conv = sharded_local_conv(mesh, batch_axis="data", spatial_axis="space")
    got = train_step(conv, case, opt)(placed, opt.init(placed), xs, labels)
    (new_params, _, loss, grads), (want_params, _, want_loss, want_grads) = got, want
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for name in params:
        np.testing.assert_allclose(grads[name], want_grads[name], **GRAD_TOL, err_msg=name)
        np.testing.assert_allclose(new_params[name], want_params[name], **PARAM_TOL, err_msg=name)
    assert new_params["kernel"].sharding.spec[0] == "space", new_params["kernel"].sharding


def _hlo(f, *args) -> str:
    return jax.jit(f).lower(*args).compile().as_text()


def _collectives(hlo: str, op: str) -> list[str]:
    return [line for line in hlo.splitlines() if f" {op}(" in line or f" {op}-start(" in line]


def _spatial_programs(f, case: Case):
    """The forward and the kernel-gradient programs of ``f`` for ``case``."""

    def conv(x, k):
        return f(x, k, case.kernel_size, case.strides, data_format=case.data_format,
                 **case.kwargs())  # fmt: skip

    return {"fwd": conv, "kernel grad": jax.grad(lambda x, k: conv(x, k).sum(), 1)}


@check
def check_hlo_halo_exchange_without_all_gather() -> None:
    """The compiled spatial path moves halo rows with collective-permutes (where its plan
    moves rows: "same-cf"'s 16 and issue 17's 12 rows are split over the 4 devices,
    "valid"'s 18 rows are replicated over them and sliced) and never all-gathers the input,
    in the forward and in the kernel's backward pass."""
    mesh = _mesh((2, 4), ("data", "space"))
    f = sharded_local_conv(mesh, batch_axis="data", spatial_axis="space")
    for name, halo in (("valid", False), ("same-cf", True), ("issue17-cf", True)):
        case = GEOMETRIES[name]
        x, k, _ = _operands(case)
        ks = jax.device_put(k, kernel_sharding(mesh, "space"))
        placements = [P("data")]
        if case.spatial[0] % 4 == 0:  # rows already split over devices, e.g. a previous layer's
            row = 1 if case.data_format == CL else 2
            placements.append(P("data", *[None] * (row - 1), "space"))
        for spec in placements:
            xs = jax.device_put(x, NamedSharding(mesh, spec))
            for what, fn in _spatial_programs(f, case).items():
                hlo = _hlo(fn, xs, ks)
                permutes = _collectives(hlo, "collective-permute")
                assert bool(permutes) == halo, f"{name} {spec} {what}: {permutes}"
                gathers = _collectives(hlo, "all-gather")
                assert not gathers, f"{name} {spec} {what}: {gathers}"


# ---------------------------------------------------------------- random geometries

PADDINGS = ("valid", "same", "causal", "explicit")
# The input rows' layouts (see _random_rows) that case c tries first, by c % 8: each where
# that case's padding (c % 4) and stride (1 + c % 3) allow it.
LAYOUTS = ("8", "aligned", "1", "8", "4", "1", "aligned", "4")
SWEEP_MESHES = {"8x1": (8, 1), "1x8": (1, 8), "2x4": (2, 4)}  # (data, space)
# How many random geometries each mesh checks, from which seed: tests/test_sharding.py's
# slow test raises the count and draws the seed.
SWEEP_CASES = int(os.environ.get("SHARDING_SWEEP_CASES", "8"))
SWEEP_SEED = int(os.environ.get("SHARDING_SWEEP_SEED", "17"))
# LLVM's cheaper code generation for the programs whose values are compared (about half
# their compile time); the forward whose collectives are checked is compiled as usual.
QUICK_BUILD = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def random_cases(seed: int, count: int) -> list[Case]:
    """``count`` random geometries whose output rows divide by 8 (so by every mesh's spatial
    axis), cycling through the paddings, the strides 1 to 3, the data formats and the
    layouts of :func:`_random_rows`, with random windows, dilations 1 to 3, ranks 1 and 2
    and biases."""
    rng = np.random.default_rng(seed)
    cases: list[Case] = []
    misses = 0  # draws in a row without rows of the wanted layout (e.g. causal, stride 1)
    while len(cases) < count:
        c = len(cases)
        kind, stride = PADDINGS[c % 4], 1 + c % 3
        rank = 1 if kind == "causal" else int(rng.integers(1, 3))
        window = (int(rng.integers(1, 6)), *rng.integers(1, 4, rank - 1).tolist())
        dilation = (int(rng.integers(1, 4)), *[1] * (rank - 1))
        strides = (stride, *rng.integers(1, 3, rank - 1).tolist())
        padding = kind
        if kind == "explicit":
            padding = tuple(tuple(rng.integers(0, 7, 2).tolist()) for _ in range(rank))
        row_geometry = (window[0], stride, kind if kind != "explicit" else padding[:1], dilation[0])
        layout = LAYOUTS[(c + c // 8) % 8] if misses < 200 else None
        rows = _random_rows(rng, row_geometry, layout)
        misses = 0 if rows else misses + 1
        if rows is None:  # no such rows for this window: draw another
            continue
        cols = [w + int(rng.integers(0, 4)) for w in window[1:]]
        cases.append(
            Case((rows, *cols), int(rng.integers(1, 4)), int(rng.integers(1, 4)), window,
                 strides, padding, dilation=dilation, data_format=(CL, CF)[c // 4 % 2],
                 batch=8, bias=(None, "filters", "positions")[c % 3])
        )  # fmt: skip
    return cases


def _random_rows(rng, row_geometry, layout: str | None) -> int | None:
    """Random input rows giving 8, 16 or 24 output rows, of ``layout`` (None: any): "8":
    rows that divide by 8 in blocks unlike the output rows' (taken split and re-blocked on 4
    and 8 devices), "4": rows that divide by 4 only (re-blocked on 4, replicated on 8), "1":
    rows that do not divide by 4 (replicated), "aligned": the output rows' blocks."""
    pool = []
    for rows in range(1, 26 * row_geometry[1] + 15):
        try:
            geom = make_geometry((1, rows, 1), *row_geometry)
        except ValueError:  # the window does not fit
            continue
        out_rows = geom.output_shape[0]
        this_layout = _row_layout(rows, out_rows, row_geometry[1])
        if out_rows in (8, 16, 24) and layout in (None, this_layout):
            pool.append(rows)
    return int(rng.choice(pool)) if pool else None


def _row_layout(rows: int, out_rows: int, stride: int) -> str:
    if rows == out_rows * stride:
        return "aligned"
    return next(str(d) for d in (8, 4, 1) if rows % d == 0)


def _assert_covers(cases: list[Case]) -> None:
    """The sweep has every listed axis: both formats, every padding, strides 1 to 3,
    dilation, and on 4 and 8 devices input rows taken split with re-blocking and replicated."""
    assert {case.data_format for case in cases} == {CL, CF}
    assert {case.strides[0] for case in cases} == {1, 2, 3}
    kinds = {case.padding if isinstance(case.padding, str) else "explicit" for case in cases}
    assert kinds == set(PADDINGS) and any(case.dil[0] > 1 for case in cases)
    for devices in (4, 8):
        layouts = {_layout(case, devices) for case in cases}
        assert layouts == {"split", "split, re-blocked", "replicated"}, (devices, layouts)


def _layout(case: Case, devices: int) -> str:
    rows = case.spatial[0]
    if rows % devices:
        return "replicated"
    return "split" if rows == case.output_shape[0] * case.strides[0] else "split, re-blocked"


def _sweep_operands(cases, mesh, batch_axis, spatial_axis):
    """Every case's operands in float64, the inputs placed as a user would: split by rows
    over ``spatial_axis`` when the rows divide (every other case), else replicated over it."""
    placed = []
    for c, case in enumerate(cases):
        x, k, b = _operands(case)
        row = 1 if case.data_format == CL else 2
        spec = P(batch_axis)
        if x.shape[row] % mesh.shape[spatial_axis] == 0 and c % 2:
            spec = P(batch_axis, *[None] * (row - 1), spatial_axis)
        x = jax.device_put(x, NamedSharding(mesh, spec))
        k = jax.device_put(k, kernel_sharding(mesh, spatial_axis))
        placed.append((x, k, b))
    return placed


def _sweep_forward(conv, cases):
    """One program for all cases' forwards, each in its named scope ``case<i>``; ``conv``
    is one function for all, or a list of one per case."""
    convs = conv if isinstance(conv, list) else [conv] * len(cases)

    def forward(operands):
        ys = []
        for c, (f, case, (x, k, b)) in enumerate(zip(convs, cases, operands, strict=True)):
            with jax.named_scope(f"case{c}"):
                ys.append(f(x, k, case.kernel_size, case.strides,
                            data_format=case.data_format, bias=b, **case.kwargs()))  # fmt: skip
        return ys

    return forward


def _sweep_value_and_grads(conv, cases, operands):
    """All cases' forwards and gradients (of fixed random projections, one per case's shape
    whatever its place in ``cases``) from one program: a compile per case dominated."""
    forward = _sweep_forward(conv, cases)
    cts = [jnp.asarray(np.random.default_rng(2).standard_normal(conv_shape(case, k)))
           for case, (_, k, _) in zip(cases, operands)]  # fmt: skip

    def loss(operands):
        ys = forward(operands)
        return sum(jnp.vdot(y, ct) for y, ct in zip(ys, cts)), ys

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True), compiler_options=QUICK_BUILD)
    (_, ys), grads = grad(operands)
    return ys, grads


@functools.cache
def _sweep_unsharded():
    cases = random_cases(SWEEP_SEED, SWEEP_CASES)
    if SWEEP_CASES >= 8:
        _assert_covers(cases)
    return cases, _sweep_value_and_grads(jlocalconv.local_conv, cases, list(map(_operands, cases)))


_COLLECTIVES = ("all-gather", "all-to-all", "all-reduce", "reduce-scatter", "collective-broadcast")


def _check_sweep(mesh_name: str) -> None:
    """Random geometries (:func:`random_cases`) on one mesh: forward and gradients equal one
    device's; the compiled forward holds no collective but collective-permutes, and each
    case's collective-permutes move exactly the rows its halo plan says."""
    data, space = SWEEP_MESHES[mesh_name]
    mesh = _mesh((data, space), ("data", "space"))
    cases, (ys0, grads0) = _sweep_unsharded()
    conv = sharded_local_conv(mesh, batch_axis="data", spatial_axis="space")
    operands = _sweep_operands(cases, mesh, "data", "space")
    ys, grads = _sweep_value_and_grads(conv, cases, operands)
    hlo = _hlo(_sweep_forward(conv, cases), operands)
    for op in _COLLECTIVES:
        assert not _collectives(hlo, op), f"{mesh_name}: {_collectives(hlo, op)[:3]}"
    assert sum(permute_bytes(hlo).values()) == sum(
        _plan_bytes(case, x, data, space) for case, (x, _, _) in zip(cases, operands)
    ), "collective-permutes the plans do not account for"
    for c, case in enumerate(cases):
        what = f"{mesh_name} case{c} {case}"
        _assert_close(ys[c], ys0[c], f"{what}: forward")
        for label, g, g0 in zip(("inputs", "kernel", "bias"), grads[c], grads0[c]):
            if g0 is not None:
                _assert_close(g, g0, f"{what}: d/d{label}")
        mine = "\n".join(line for line in hlo.splitlines() if f"/case{c}/" in line)
        assert permute_bytes(mine)["halo"] == _plan_bytes(case, operands[c][0], data, space), what


def _plan_bytes(case: Case, x, data: int, space: int) -> int:
    """Bytes of one device's collective-permutes for ``case``, from its halo plan."""
    geom = make_geometry(x.shape, case.kernel_size, case.strides, case.padding, case.dil,
                         case.data_format)  # fmt: skip
    row = 1 if case.data_format == CL else 2
    per_row = x.size // x.shape[0] // x.shape[row] * x.dtype.itemsize  # one example's row
    return halo_plan(geom, space).halo_rows * case.batch // data * per_row


@check
def check_random_geometries_8x1() -> None:
    _check_sweep("8x1")


@check
def check_random_geometries_1x8() -> None:
    _check_sweep("1x8")


@check
def check_random_geometries_2x4() -> None:
    _check_sweep("2x4")


def main(names: list[str]) -> int:
    jax.config.update("jax_enable_x64", True)  # here, not on import: the test imports CHECKS
    assert jax.device_count() == 8, f"needs 8 devices, got {jax.devices()} (set XLA_FLAGS)"
    failed = 0
    for name in names or list(CHECKS):
        try:
            CHECKS[name]()
            print(f"PASS {name}", flush=True)
        except Exception:  # report every check, not only the first failure
            failed += 1
            print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
