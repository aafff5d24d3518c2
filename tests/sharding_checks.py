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

from cases import CF, CL, Case
from reference import local_conv_ref
from sharding_problem import GRAD_TOL, PARAM_TOL, optimizer, train_problem, train_step

import jlocalconv
from jlocalconv import implementations
from jlocalconv.sharding import kernel_sharding, sharded_local_conv

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
    """Forward result and gradients of a fixed random projection, as one jit program."""
    ct = jnp.asarray(np.random.default_rng(2).standard_normal(conv_shape(case, k)))

    def loss(x, k, b):
        y = conv(x, k, case.kernel_size, case.strides, data_format=case.data_format,
                 bias=b, **case.kwargs())  # fmt: skip
        return jnp.vdot(y, ct), y

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2) if b is not None else (0, 1),
                                      has_aux=True))  # fmt: skip
    (_, y), grads = grad(x, k, b)
    return y, grads


def conv_shape(case: Case, k) -> tuple[int, ...]:
    if case.data_format == CL:
        return (case.batch, *case.output_shape, k.shape[-1])
    return (case.batch, k.shape[-1], *case.output_shape)


def _assert_close(got, want, what: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * np.abs(want).max(), err_msg=what)


@functools.cache
def _unsharded(name: str):
    """The single-device result and gradients for ``GEOMETRIES[name]`` (computed once)."""
    case = GEOMETRIES[name]
    return _value_and_grads(jlocalconv.local_conv, case, *_operands(case))


def _compare_meshes(mesh, batch_axis, spatial_axis, names) -> None:
    f = sharded_local_conv(mesh, batch_axis=batch_axis, spatial_axis=spatial_axis)
    for name in names:
        case = GEOMETRIES[name]
        x, k, b = _operands(case)
        y, grads = _value_and_grads(f, case, x, k, b)
        y0, grads0 = _unsharded(name)
        _assert_close(y, y0, f"{name}: forward")
        for label, g, g0 in zip(("inputs", "kernel", "bias"), grads, grads0):
            _assert_close(g, g0, f"{name}: d/d{label}")
        if spatial_axis is not None:  # the kernel's gradient stays split by output row
            assert grads[1].sharding.spec[0] == spatial_axis, grads[1].sharding


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
    names = ["valid", "same-cf", "stride3-explicit-cf", "causal-1d"]
    _compare_meshes(_mesh((2, 4), ("data", "space")), "data", "space", names)


@check
def check_every_implementation_2x4() -> None:
    """Each implementation runs per device inside shard_map (e.g. a scan carry must vary
    over the mesh axes like its operands) and gives the same forward and gradients."""
    case = GEOMETRIES["stride2-same"]
    x, k, b = _operands(case)
    y0, grads0 = _unsharded("stride2-same")
    f = sharded_local_conv(
        _mesh((2, 4), ("data", "space")), batch_axis="data", spatial_axis="space"
    )
    for name in implementations.names():
        conv = functools.partial(f, implementation=name)
        y, grads = _value_and_grads(conv, case, x, k, b)
        _assert_close(y, y0, f"{name}: forward")
        for g, g0 in zip(grads, grads0):
            _assert_close(g, g0, f"{name}: gradient")


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
    y0, grads0 = _unsharded("valid")
    _assert_close(y, y0, "forward")
    for g, g0 in zip(grads, grads0):
        _assert_close(g, g0, "gradient")
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
    """The compiled spatial path moves halo rows with collective-permutes and never
    all-gathers the input, in the forward and in the kernel's backward pass."""
    mesh = _mesh((2, 4), ("data", "space"))
    f = sharded_local_conv(mesh, batch_axis="data", spatial_axis="space")
    for name in ("valid", "same-cf"):
        case = GEOMETRIES[name]
        x, k, _ = _operands(case)
        ks = jax.device_put(k, kernel_sharding(mesh, "space"))
        placements = [P("data")]
        if case.padding == "same":  # rows already split over devices, e.g. a previous layer's
            placements.append(P("data", None, "space"))
        for spec in placements:
            xs = jax.device_put(x, NamedSharding(mesh, spec))
            for what, fn in _spatial_programs(f, case).items():
                hlo = _hlo(fn, xs, ks)
                assert _collectives(hlo, "collective-permute"), f"{name} {spec} {what}: no halo"
                gathers = _collectives(hlo, "all-gather")
                assert not gathers, f"{name} {spec} {what}: {gathers}"


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
