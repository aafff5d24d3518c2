"""The fast implementations ("slices", "tiles", "shifts") and the "auto" cost model.

Forward agreement with the NumPy reference for every name is in test_local_conv.py and
autodiff identities (check_grads, jvp, linear_transpose) in test_autodiff.py; here:
gradients against the reference and "patches", every tiling, low precision, vmap,
the memory-lean backward, and the choices "auto" makes.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import CASES, Case
from jax.test_util import check_grads
from reference import local_conv_ref

import jlocalconv
import jlocalconv.implementations as implementations_module
from jlocalconv import implementations
from jlocalconv.geometry import make_geometry
from jlocalconv.implementations import IMPLEMENTATIONS, SHIFTS_MAX_CHANNELS, choose
from jlocalconv.implementations import shifts as shifts_module
from jlocalconv.implementations import slices as slices_module
from jlocalconv.implementations import tiles as tiles_module
from jlocalconv.implementations._windows import (
    STACK_FUSION_MAX_BYTES,
    STACK_FUSION_MAX_PARTS,
    input_per_output,
    padded,
    sliced_by_axis,
    stack,
    window_bytes,
)
from jlocalconv.implementations.shifts import local_conv_shifts
from jlocalconv.implementations.slices import local_conv_slices
from jlocalconv.implementations.tiles import TilePlan, local_conv_tiles, plan_tiles

FAST = ("slices", "tiles", "shifts")


def _geom(case):
    return case.geometry()


def _impl(name, case, **kw):
    """``IMPLEMENTATIONS[name]`` on ``case``, under jit: one program per transformation,
    not an eager dispatch (and compile) per operation, which dominated these tests' time."""
    geom = _geom(case)
    return jax.jit(lambda x, k: IMPLEMENTATIONS[name](x, k, geom, precision="highest", **kw))


def _ref(case, x, k):
    return local_conv_ref(x, k, case.kernel_size, case.strides, case.data_format,
                          case.padding, case.dil)  # fmt: skip


def _grads(f, x, k, w):
    return jax.jit(jax.grad(lambda x, k: jnp.sum(f(x, k) * w), argnums=(0, 1)))(x, k)


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("case", CASES[::2], ids=str)
def test_gradients_match_reference_and_patches(case, name):
    x, k, _ = case.arrays()
    dx, dk, _ = case.arrays(seed=5)
    w = np.random.default_rng(2).standard_normal(_ref(case, x, k).shape).astype(np.float32)
    gx, gk = _grads(_impl(name, case), x, k, w)
    # Independent check: <f(x, k), w> is bilinear, so <grad_x, dx> = <f(dx, k), w>.
    np.testing.assert_allclose(np.vdot(gx, dx), np.vdot(_ref(case, dx, k), w), rtol=1e-4)
    np.testing.assert_allclose(np.vdot(gk, dk), np.vdot(_ref(case, x, dk), w), rtol=1e-4)
    px, pk = _grads(_impl("patches", case), x, k, w)
    np.testing.assert_allclose(gx, px, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gk, pk, rtol=1e-5, atol=1e-5)


def _some_plans(geom):
    """The first, a middle and the last tiling (whole rows, a box, single positions),
    the middle one also with values in one shot or position by position and only
    derivatives tiled and batched."""
    plans = _every_plan(geom)
    some = sorted({plans[0], plans[len(plans) // 2], plans[-1]}, key=plans.index)
    middle = plans[len(plans) // 2]
    ragged = [p for p in tiles_module._ragged_plans(geom) if p not in plans][:2]
    flagged = [dataclasses.replace(p, **{flag: True}) for p in (middle, *ragged[:1])
               for flag in VALUE_ROUTES]  # fmt: skip
    return [*some, *ragged, *flagged]


def _every_plan(geom):
    out = geom.output_shape
    return [TilePlan(level, size) for level in range(geom.ndim)
            for size in range(1, out[level] + 1) if out[level] % size == 0]  # fmt: skip


TILED = [  # 1-D same, 2-D dilated, 3-D strided, a prime output extent (ragged tiles)
    CASES[3],
    CASES[10],
    CASES[15],
    Case((13,), 3, 4, (4,), (1,), padding="causal"),
]
VALUE_ROUTES = ("one_shot_forward", "per_position_values")  # TilePlan flags


@pytest.mark.parametrize("case", TILED, ids=str)
def test_tilings_match_reference(case):
    _assert_tilings_match_reference(case, _some_plans(_geom(case)))


def _assert_tilings_match_reference(case, plans):
    """Values and both gradients of "tiles" over each of ``plans``, against the NumPy
    reference and "patches"' gradients."""
    x, k, _ = case.arrays()
    geom = _geom(case)
    want = _ref(case, x, k)
    w = np.random.default_rng(2).standard_normal(want.shape).astype(np.float32)
    gx_ref, gk_ref = _grads(_impl("patches", case), x, k, w)

    def every_plan(x, k, w):  # one program for all plans: a compile per plan dominated
        results = []
        for plan in plans:
            f = functools.partial(local_conv_tiles, geom=geom, plan=plan, precision="highest")
            _, pullback = jax.vjp(f, x, k)  # the values under differentiation ...
            results.append((f(x, k), *pullback(w)))  # ... and without
        return results

    for plan, (y, gx, gk) in zip(plans, jax.jit(every_plan)(x, k, w), strict=True):
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5, err_msg=str(plan))
        np.testing.assert_allclose(gx, gx_ref, rtol=1e-5, atol=1e-5, err_msg=str(plan))
        np.testing.assert_allclose(gk, gk_ref, rtol=1e-5, atol=1e-5, err_msg=str(plan))


PADDED_PER_TILE = [  # explicit (low, high) pairs larger than a window's reach, too
    Case((7,), 3, 2, (3,), (1,), padding="causal", dilation=3),
    Case((9, 11), 2, 3, (3, 2), (2, 1), padding=((2, 3), (0, 4)), data_format="channels_first"),
    Case((6, 5, 7), 2, 2, (2, 3, 3), (1, 2, 1), padding="same", dilation=(1, 1, 2)),
]


@pytest.mark.parametrize("case", PADDED_PER_TILE, ids=str)
def test_tiles_pad_each_tile_and_match_the_reference(case):
    """Every tiling of a padded input, values and both gradients: where every tile's box
    fits in the input, the inputs' tangent pads each box itself
    (``tiles._padded_region``: a clamped slice, padded and sliced again), elsewhere it
    slices a padded copy, as the values always do; the same numbers either way."""
    geom = _geom(case)
    plans = [*_every_plan(geom), *tiles_module._ragged_plans(geom)]
    _assert_tilings_match_reference(case, plans)
    tiles = [tiles_module._tile_geometry(padded(geom), plan) for plan in plans]
    per_tile = [tiles_module._pads_tiles(geom, tile) for tile in tiles]
    assert any(per_tile) and not all(per_tile)  # both ways of taking boxes were checked


def test_padded_tile_loop_backward_holds_one_padded_copy_of_the_inputs():
    """Sweep problem s30-0's kind (a causal, dilated 1-D window over 409 channels): the
    inputs' gradient accumulated in the padded shape, beside the padded inputs that the
    kernel's gradient reads, two input-sized buffers; tile by tile it accumulates in
    the inputs' own shape (compile only; nothing runs)."""
    shape = (32, 266, 409)
    geom = make_geometry(shape, 3, 3, padding="causal", dilation=2)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    k = jax.ShapeDtypeStruct(geom.kernel_shape(8), jnp.float32)
    loss = lambda x, k: jnp.sum(local_conv_tiles(x, k, geom) ** 2)
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(x, k).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < 1.5 * 4 * math.prod(shape)


def test_tile_loop_transposes_without_copying_the_cotangent():
    """Sweep problem s62-53 (176 rows, a causal 1-D window of stride 3): a loop that
    writes each tile into a carried result transposes into zeroing each tile of a
    carried cotangent, which XLA copied whole twice per tile: 23.3 MiB of value_and_grad
    temporaries against lax's 42.0, over the half that issue 13 allows. The loop that
    reverse mode transposes stacks its tiles instead (``tiles._tile_loop``'s
    ``stacked``) and slices the cotangent tile by tile: 16.9 MiB (compile only)."""
    shape, filters = (176, 601, 19), 26
    geom = make_geometry(shape, 5, 3, padding="causal")
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    g = jax.ShapeDtypeStruct(geom.result_shape(shape[0], filters), jnp.float32)

    def temp(f, kernel_shape):
        k = jax.ShapeDtypeStruct(kernel_shape, jnp.float32)
        loss = lambda x, k, g: jnp.sum(f(x, k) * g)
        compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(x, k, g).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    tiles = lambda x, k: local_conv_tiles(x, k, geom)
    lax_local = lambda x, k: jax.lax.conv_general_dilated_local(
        x, k, (3,), [(4, 0)], (5,), dimension_numbers=("NWC", "WIO", "NWC")
    )
    lax_kernel = (geom.output_items, geom.feature_dim, filters)
    assert temp(tiles, geom.kernel_shape(filters)) <= 0.5 * temp(lax_local, lax_kernel)


@pytest.mark.parametrize("flag", VALUE_ROUTES)
def test_separate_value_route_keeps_every_derivative(flag):
    """Values by "slices" or by one dot per position, derivatives by the batched loop
    (custom_jvp): forward mode, second order and linear_transpose must still work."""
    case = CASES[15]
    geom = _geom(case)
    plan = dataclasses.replace(_every_plan(geom)[1], **{flag: True})
    x, k, _ = case.arrays(dtype=np.float64)
    dx, dk, _ = case.arrays(seed=7, dtype=np.float64)
    with jax.enable_x64(True):
        f = jax.jit(lambda x, k: local_conv_tiles(x, k, geom, plan=plan))
        x, k, dx, dk = (jnp.asarray(a, jnp.float64) for a in (x, k, dx, dk))
        check_grads(f, (x, k), order=2, modes=("fwd", "rev"))
        _, tangent = jax.jvp(f, (x, k), (dx, dk))
        np.testing.assert_allclose(tangent, _ref(case, dx, k) + _ref(case, x, dk), rtol=1e-9)
        y = jnp.asarray(np.random.default_rng(1).standard_normal(f(x, k).shape))
        (xt,) = jax.linear_transpose(lambda x: f(x, k), x)(y)
        np.testing.assert_allclose(jnp.vdot(x, xt), jnp.vdot(f(x, k), y), rtol=1e-9)


def _equations(jaxpr):
    """The equations of ``jaxpr`` and of every sub-jaxpr (loop bodies, custom rules)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's Jaxpr
                yield from _equations(sub) if hasattr(sub, "eqns") else ()


def _dots(jaxpr) -> int:
    """dot_general equations in ``jaxpr`` and every sub-jaxpr."""
    return sum(eqn.primitive.name == "dot_general" for eqn in _equations(jaxpr))


def test_derivatives_of_shifts_never_transpose_the_per_position_values():
    """ "shifts" is differentiated through the tile loop; were that tangent a custom_jvp
    (as "tiles" is when its values go position by position), reverse mode would transpose
    its value route: 64 dots per tile instead of a batched one."""
    # 4 channels: "shifts"; 47 MiB of windows: derivatives by tiles, 40-position tiles
    geom = make_geometry((8, 48, 48, 4), 9)
    plan = plan_tiles(geom, 8, 32, 4)
    assert plan.per_position_values and plan.tile_positions(geom) == 40
    assert not tiles_module.derivatives_by_slices(geom, 8, 32, 4)
    x = jax.ShapeDtypeStruct(geom.input_shape(8), jnp.float32)
    k = jax.ShapeDtypeStruct(geom.kernel_shape(32), jnp.float32)
    for impl in (local_conv_shifts, local_conv_tiles):
        loss = lambda x, k, impl=impl: jnp.sum(impl(x, k, geom))
        assert _dots(jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, k).jaxpr) <= 8, impl.__name__


@pytest.mark.parametrize("impl", [local_conv_tiles, local_conv_shifts])
def test_few_rows_take_the_kernel_gradient_out_of_the_loop(impl, monkeypatch):
    """With at most ``ROWS_KERNEL_TANGENT_MAX_BATCH`` rows the kernel gradient is one sum
    over rows (``tiles.rows_kernel_tangent``), not a carry of the transposed tile loop
    (whose per-tile contraction over the rows XLA runs slowly); with the bound at 0 it
    is the loop's again."""
    geom = make_geometry((8, 48, 48, 4), 9)  # 4 channels: "shifts" values
    assert not tiles_module.derivatives_by_slices(geom, 8, 32, 4)  # the loop differentiates
    x = jax.ShapeDtypeStruct(geom.input_shape(8), jnp.float32)
    k = jax.ShapeDtypeStruct(geom.kernel_shape(32), jnp.float32)
    loss = lambda x, k: jnp.sum(impl(x, k, geom))

    def loop_writes_kernel() -> bool:
        jaxpr = jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, k).jaxpr
        scans = [e for e in _equations(jaxpr) if e.primitive.name == "scan"]
        assert scans  # values and the input gradient stay in the loop
        return any(v.aval.shape == k.shape for e in scans for v in e.outvars)

    assert tiles_module.kernel_tangent_by_rows(geom, 8, 4)
    assert not loop_writes_kernel()
    monkeypatch.setattr(tiles_module, "ROWS_KERNEL_TANGENT_MAX_BATCH", 0)
    assert loop_writes_kernel()


GATHERED_ROWS = [
    Case((9, 8), 2, 3, (6, 6), (1, 1)),  # 36 offsets
    Case((8, 9), 3, 2, (4, 8), (2, 1), data_format="channels_first"),
    Case((7, 9), 2, 2, (3, 2), (2, 3), padding="same"),
]


@pytest.mark.parametrize("case", GATHERED_ROWS, ids=str)
def test_kernel_gradient_by_rows_from_gathered_windows_matches_reference(case):
    """The loop's rows kernel gradient keeps its windows as one gather (not a stack of
    slices); its kernel gradient matches the reference's, and second order goes
    through the gather's own derivatives (forward and reverse)."""
    geom = _geom(case)
    assert tiles_module.kernel_tangent_by_rows(geom, case.batch, 4)
    x, k, _ = case.arrays()
    _, dk, _ = case.arrays(seed=5)
    w = np.random.default_rng(2).standard_normal(_ref(case, x, k).shape).astype(np.float32)
    vag = jax.value_and_grad(lambda x, k: jnp.sum(_impl("tiles", case)(x, k) * w), (0, 1))
    primitives = {eqn.primitive.name for eqn in _equations(jax.make_jaxpr(vag)(x, k).jaxpr)}
    assert "gather" in primitives
    _, gk = _grads(_impl("tiles", case), x, k, w)
    np.testing.assert_allclose(np.vdot(gk, dk), np.vdot(_ref(case, x, dk), w), rtol=1e-4)
    np.testing.assert_allclose(gk, _grads(_impl("patches", case), x, k, w)[1], rtol=1e-5, atol=1e-5)
    with jax.enable_x64(True):
        x64, k64 = (jnp.asarray(a, jnp.float64) for a in case.arrays(dtype=np.float64)[:2])
        check_grads(jax.jit(_impl("tiles", case)), (x64, k64), order=2, modes=("fwd", "rev"))


@pytest.mark.parametrize(
    "shape, ks, st, dil, fmt",
    [
        ((2, 9, 13, 3), (9, 3), (1, 2), (1, 1), "channels_last"),
        ((2, 3, 9, 13), (4, 3), (1, 2), (2, 1), "channels_first"),
        ((2, 2, 25, 21, 5), (1, 9, 6), (1, 3, 2), (3, 3, 3), "channels_last"),
        ((3, 4, 17), (5,), (2,), (2,), "channels_first"),
    ],
)
def test_gathered_windows_equal_the_stack(shape, ks, st, dil, fmt):
    """One gather gives the stack's windows, features in Keras's order for both formats."""
    from jlocalconv.implementations import _windows

    geom = make_geometry(shape, ks, st, dilation=dil, data_format=fmt)
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
    np.testing.assert_array_equal(_windows.gathered_windows(x, geom), _windows.windows(x, geom))


@pytest.mark.parametrize("seed", range(9))
def test_unpadded_windows_equal_the_padded_stack_and_its_transpose(seed):
    """Slices padded after they are taken (``_windows.unpadded_windows``) are the windows
    of the padded input, and transpose to its gradient, for random 1-3-D geometries with
    explicit padding up to beyond the window (offsets wholly in the padding included)."""
    from jlocalconv.implementations import _windows

    rng = np.random.default_rng(seed)
    ndim = 1 + seed % 3
    ks = tuple(int(k) for k in rng.integers(1, 5, ndim))
    dil = tuple(int(d) for d in rng.integers(1, 4, ndim))
    st = tuple(int(s) for s in rng.integers(1, 4, ndim))
    pad = tuple((int(a), int(b)) for a, b in rng.integers(0, 7, (ndim, 2)))
    spatial = tuple(int(n) for n in rng.integers(1, 8, ndim))
    fmt = "channels_last" if seed % 2 else "channels_first"
    shape = (2, *spatial, 3) if fmt == "channels_last" else (2, 3, *spatial)
    try:
        geom = make_geometry(shape, ks, st, padding=pad, dilation=dil, data_format=fmt)
    except ValueError:  # no output position: drawn again with enough input
        geom = make_geometry(shape, 1, 1, padding=pad, data_format=fmt)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    padded = lambda v: _windows.windows(_windows.pad_spatial(v, geom), _windows.padded(geom))
    unpadded = lambda v: _windows.unpadded_windows(v, geom)
    np.testing.assert_array_equal(unpadded(x), padded(x))
    ct = jnp.asarray(rng.standard_normal(padded(x).shape), jnp.float32)
    (got,), (want,) = (jax.linear_transpose(f, x)(ct) for f in (unpadded, padded))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_slices_hold_no_padded_copy_of_the_input():
    """Differentiated, "slices" pads each window slice, not the input (sweep s65-49: a
    padded copy 1.5x the input was the largest of value_and_grad's temporaries)."""
    geom = make_geometry((70, 6, 9, 14, 62), (3, 1, 1), (1, 2, 3), padding="same", dilation=2)
    x = jax.ShapeDtypeStruct(geom.input_shape(70), jnp.float32)
    k = jax.ShapeDtypeStruct(geom.kernel_shape(43), jnp.float32)
    loss = lambda x, k: jnp.sum(local_conv_slices(x, k, geom))
    compiled = jax.jit(jax.value_and_grad(loss, (0, 1))).lower(x, k).compile()
    assert "f32[70,9,9,14,62]" not in compiled.as_text()
    input_bytes = 4 * math.prod(geom.input_shape(70))
    assert compiled.memory_analysis().temp_size_in_bytes < 1.5 * input_bytes


def test_one_row_takes_sliced_values_where_several_would_take_the_loop(monkeypatch):
    """Rule 3 of ``choose`` gives values to the loop's per-position dots over several
    tiles only from ``LOOP_VALUES_MIN_BATCH`` rows: one row's go by "slices"."""
    geom = make_geometry((1, 2, 12, 397), (1, 7), padding="same")  # sweep s46-26
    plan = plan_tiles(geom, 1, 2, 4)
    assert plan.per_position_values and np.prod(plan.counts(geom)) > 1
    assert choose(geom, 1, 2, jnp.float32, "cpu") == "slices/slices"
    monkeypatch.setattr(implementations_module, "LOOP_VALUES_MIN_BATCH", 1)
    assert choose(geom, 1, 2, jnp.float32, "cpu") == "tiles/slices"


def test_slices_values_gather_their_windows_and_differentiate_the_stack():
    """Undifferentiated, "slices" windows that XLA would not fuse into one loop are one
    gather (one kernel to compile instead of one per offset); differentiated, the stack
    of static slices (whose transpose is a padded add, not a scatter), values included,
    with the stack's gradients. A stack XLA fuses stays a stack."""
    geom = make_geometry((2, 40, 40, 8), 3, 1, padding="same")  # 9 offsets, 900 KiB
    x = jax.ShapeDtypeStruct(geom.input_shape(2), jnp.float32)
    k = jax.ShapeDtypeStruct(geom.kernel_shape(5), jnp.float32)
    f = lambda x, k: local_conv_slices(x, k, geom)

    def primitives(fn, *args):
        return collections.Counter(
            e.primitive.name for e in _equations(jax.make_jaxpr(fn)(*args).jaxpr)
        )

    def compiled(fn, *args):
        return jax.jit(fn).lower(*args).compile().as_text()

    assert " gather(" in compiled(f, x, k)
    vag = jax.value_and_grad(lambda x, k: jnp.sum(f(x, k)), (0, 1))
    text = compiled(vag, x, k)
    assert " gather(" not in text and " scatter(" not in text
    small = make_geometry((2, 9, 13, 3), 3)  # 14 KiB: one fused stack
    xs = jax.ShapeDtypeStruct(small.input_shape(2), jnp.float32)
    ks = jax.ShapeDtypeStruct(small.kernel_shape(5), jnp.float32)
    assert primitives(lambda x, k: local_conv_slices(x, k, small), xs, ks)["gather"] == 0
    case = Case((20, 16), 4, 3, (5, 4), (1, 1), padding="same")  # 200 KiB of windows
    xa, ka, _ = case.arrays()
    w = np.random.default_rng(4).standard_normal(_ref(case, xa, ka).shape).astype(np.float32)
    gx, gk = _grads(_impl("slices", case), xa, ka, w)
    rx, rk = _grads(_impl("patches", case), xa, ka, w)
    np.testing.assert_allclose(gx, rx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gk, rk, rtol=1e-5, atol=1e-5)


def test_one_row_loop_values_come_from_the_rows_windows(monkeypatch):
    """One row differentiated by the loop with its kernel gradient by rows: the values
    are one contraction over the rows' gathered windows (XLA computes them once), so
    value_and_grad traces one loop (the inputs' gradient) and compiles one gather; the gradients
    match the reference's. Over ``ROWS_VALUES_MAX_WINDOW_BYTES`` the loop computes them."""
    case = Case((10, 11), 3, 6, (4, 3), (1, 1), batch=1)
    geom = _geom(case)
    assert tiles_module.kernel_tangent_by_rows(geom, 1, 4)
    x, k, _ = case.arrays()
    w = np.random.default_rng(3).standard_normal(_ref(case, x, k).shape).astype(np.float32)

    def value_and_grad():  # traced anew: JAX caches traces by function
        impl = _impl("tiles", case)
        return jax.value_and_grad(lambda x, k: jnp.sum(impl(x, k) * w), (0, 1))

    def loops_and_gathers() -> tuple[int, int]:
        vag = value_and_grad()
        scans = sum(e.primitive.name == "scan" for e in _equations(jax.make_jaxpr(vag)(x, k).jaxpr))
        return scans, jax.jit(vag).lower(x, k).compile().as_text().count(" gather(")

    assert loops_and_gathers() == (1, 1)
    (value, (gx, gk)), (rx, rk) = value_and_grad()(x, k), _grads(_impl("patches", case), x, k, w)
    np.testing.assert_allclose(value, np.sum(_ref(case, x, k) * w), rtol=1e-5)
    np.testing.assert_allclose(gx, rx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gk, rk, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(tiles_module, "ROWS_VALUES_MAX_WINDOW_BYTES", 0)
    assert loops_and_gathers()[0] == 2


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_accumulates_in_f32(name, dtype):
    case = CASES[13]  # padding, dilation: every window offset shifted
    x, k, _ = case.arrays()
    xl, kl = jnp.asarray(x, dtype), jnp.asarray(k, dtype)
    f32 = _impl(name, case, preferred_element_type=jnp.float32)
    out = jax.jit(f32)(xl, kl)
    assert out.dtype == jnp.float32
    want = _ref(case, np.asarray(xl, np.float32), np.asarray(kl, np.float32))
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    gx, gk = _grads(f32, xl, kl, np.ones(want.shape, np.float32))
    assert gx.dtype == dtype and gk.dtype == dtype
    assert jax.jit(_impl(name, case))(xl, kl).dtype == dtype


@pytest.mark.parametrize("channels, once", [(4, True), (2, False)])
def test_shifts_widens_a_16_bit_kernel_once_where_many_terms_read_it(channels, once):
    """Over WIDEN_ONCE_MIN_TERMS terms (window offsets x channels) one conversion of the
    whole kernel, not one fused conversion per term's filters (a kernel launch each)."""
    geom = make_geometry((2, 11, channels), 5, 2)  # 20 or 10 terms
    x = jax.ShapeDtypeStruct(geom.input_shape(2), jnp.float32)  # widened by the caller
    k = jax.ShapeDtypeStruct(geom.kernel_shape(4), jnp.bfloat16)
    jaxpr = jax.make_jaxpr(lambda x, k: local_conv_shifts(x, k, geom))(x, k).jaxpr
    widenings = [
        eqn.invars[0].aval.shape
        for eqn in _equations(jaxpr)
        if eqn.primitive.name == "convert_element_type" and eqn.invars[0].aval.dtype == k.dtype
    ]
    assert widenings == ([k.shape] if once else [(*geom.output_shape, 4)] * 5 * channels)


def test_auto_keeps_shifts_to_few_terms_beyond_two_filters():
    """Over ``SHIFTS_MAX_TERMS`` features with 3+ filters, "auto" does not unroll
    "shifts" (XLA ran out of memory compiling ``jnp.sum`` of sweep s2-11's 1152 terms);
    one or two filters, or fewer terms, keep it."""
    geom = make_geometry((2, 6, 22, 14, 6), (4, 8, 6), (3, 3, 1))  # s2-11: 1152 features
    assert geom.feature_dim > implementations_module.SHIFTS_MAX_TERMS
    assert [choose(geom, 2, f, jnp.float32, "cpu") == "shifts" for f in (1, 2, 3)] == [
        True,
        True,
        False,
    ]
    edge = [make_geometry((2, 6, 22, 14, c), (4, 8, 3), (3, 3, 1)) for c in (5, 6)]
    assert [g.feature_dim for g in edge] == [480, 576]
    assert [choose(g, 2, 3, jnp.float32, "cpu") == "shifts" for g in edge] == [True, False]


@pytest.mark.parametrize("terms", [12, 14])
def test_shifts_values_under_a_reduction_hold_at_most_one_result(terms):
    """``sum(f(x, k) * g)``, as any loss reads the values (compile only): over
    ``FUSED_CONSUMER_MAX_TERMS`` terms the sum stays out of YNNPACK fusions (one
    result, 15.2 MiB here; a YNNPACK fusion otherwise materialised 95 MiB of
    broadcasts), up to it the reduction's fusion takes it and holds a fraction of one."""
    geom = make_geometry((108, 450 + terms - 1, 1), terms)  # 450 positions, 1 channel
    x = jax.ShapeDtypeStruct(geom.input_shape(108), jnp.float32)
    k = jax.ShapeDtypeStruct(geom.kernel_shape(82), jnp.float32)
    g = jax.ShapeDtypeStruct(geom.result_shape(108, 82), jnp.float32)
    loss = lambda x, k, g: jnp.sum(local_conv_shifts(x, k, geom) * g)
    compiled = jax.jit(loss).lower(x, k, g).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    result = 4 * math.prod(g.shape)
    written = "reduce-precision" in compiled.as_text()
    assert written == (terms > shifts_module.FUSED_CONSUMER_MAX_TERMS)
    assert temp <= (1.05 if written else 0.5) * result, (temp, result)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_shifts_values_slice_each_offset_once_and_split_the_rest(data_format):
    """Tracing stays cheap: one input slice per window offset, one split per offset and
    one of the kernel (not an index per term: JAX traces these values under
    differentiation too), and no term widened twice; values equal to the reference."""
    shape = (2, 9, 8, 3) if data_format == "channels_last" else (2, 3, 9, 8)
    geom = make_geometry(shape, (3, 2), data_format=data_format)  # 6 offsets x 3 channels
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.bfloat16)
    k = jnp.asarray(np.random.default_rng(1).normal(size=geom.kernel_shape(4)), jnp.bfloat16)
    jaxpr = jax.make_jaxpr(lambda x, k: local_conv_shifts(x, k, geom))(x, k).jaxpr
    counts = collections.Counter(eqn.primitive.name for eqn in _equations(jaxpr))
    offsets = geom.window_items
    assert (counts["slice"], counts["split"]) == (offsets, offsets + 1)
    assert counts["convert_element_type"] == offsets + 2  # input slices, kernel, result
    assert counts["pjit"] == counts["jit"] == 0
    wide = [np.asarray(a, np.float64) for a in (x, k)]
    expected = local_conv_ref(*wide, geom.kernel_size, geom.strides, data_format)
    got = local_conv_shifts(x, k, geom, preferred_element_type=jnp.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def _concatenate_widths(fn, *args) -> list[int]:
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    joins = ("concatenate", "stack")  # jnp.stack is its own primitive in newer JAX
    return [len(eqn.invars) for eqn in _equations(jaxpr) if eqn.primitive.name in joins]


@pytest.mark.parametrize("count", [2, 8, 9, 11, 13, 81])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_small_stacks_nest_groups_that_xla_fuses(count, axis):
    """Equal to ``jnp.stack``, built from concatenates of at most STACK_FUSION_MAX_PARTS
    operands (XLA's CPU backend launches one fusion per part of a wider one)."""
    parts = [jnp.arange(6.0).reshape(3, 2) * 100 + i for i in range(count)]
    np.testing.assert_array_equal(stack(parts, axis), jnp.stack(parts, axis))
    widths = _concatenate_widths(lambda *p: stack(list(p), axis), *parts)
    assert max(widths) <= STACK_FUSION_MAX_PARTS
    assert (len(widths) == 1) == (count <= STACK_FUSION_MAX_PARTS)  # nested beyond the bound


def test_large_stacks_stay_one_concatenate():
    """Over STACK_FUSION_MAX_BYTES the separate slices are faster than one fused loop."""
    parts = [jnp.zeros(STACK_FUSION_MAX_BYTES // 4 // 9 + 1, jnp.float32)] * 9
    assert _concatenate_widths(lambda *p: stack(list(p), 0), *parts) == [9]
    small = [jnp.zeros(STACK_FUSION_MAX_BYTES // 4 // 9, jnp.float32)] * 9
    assert _concatenate_widths(lambda *p: stack(list(p), 0), *small) == [3, 3, 3, 3]


@pytest.mark.parametrize("case", [CASES[6], CASES[15]], ids=str)
def test_tiles_vmap_over_batch_and_kernels(case):
    x, k, _ = case.arrays()
    geom = _geom(case)
    plan = _every_plan(geom)[1]  # several tiles, so the loop really runs
    f = lambda x, k: local_conv_tiles(x, k, geom, plan=plan, precision="highest")
    full = f(x, k)
    per_example = jax.vmap(lambda xi: f(xi[None], k)[0])(x)
    np.testing.assert_allclose(per_example, full, rtol=1e-6, atol=1e-6)
    ens = jax.vmap(lambda kk: f(x, kk))(jnp.stack([k, -2 * k]))
    np.testing.assert_allclose(ens, np.stack([full, -2 * full]), rtol=1e-5, atol=1e-5)


def test_ragged_tiles_vmap_and_second_order_derivatives():
    """The overlapping last tile (``TilePlan`` docstring) under vmap and second-order
    forward and reverse derivatives: 13 positions in tiles of 5 (starts 0, 5, 8)."""
    case = Case((13,), 3, 4, (4,), (1,), padding="causal")
    geom, plan = _geom(case), TilePlan(0, 5)
    assert plan.counts(geom) == (3,) and 13 % 5
    x, k, _ = case.arrays()
    f = jax.jit(lambda x, k: local_conv_tiles(x, k, geom, plan=plan, precision="highest"))
    np.testing.assert_allclose(f(x, k), _ref(case, x, k), rtol=1e-5, atol=1e-5)
    per_example = jax.vmap(lambda xi: f(xi[None], k)[0])(x)
    np.testing.assert_allclose(per_example, f(x, k), rtol=1e-6, atol=1e-6)
    check_grads(f, (x, k), order=2, modes=("fwd", "rev"), atol=1e-2, rtol=1e-2)


def test_tiles_backward_keeps_under_half_of_lax_temp_memory():
    """The memory-lean claim, on a suite shape (compile only; nothing runs)."""
    geom = make_geometry((32, 32, 32, 16), 3)
    x = jax.ShapeDtypeStruct((32, 32, 32, 16), jnp.float32)
    k = jax.ShapeDtypeStruct(geom.kernel_shape(16), jnp.float32)
    k_lax = jax.ShapeDtypeStruct((30, 30, 144, 16), jnp.float32)

    def temp(f, kernel):
        loss = lambda x, k: jnp.sum(f(x, k) ** 2)
        compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(x, kernel).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    ours = temp(lambda x, k: local_conv_tiles(x, k, geom), k)
    lax_dn = ("NHWC", "HWIO", "NHWC")
    theirs = temp(lambda x, k: jax.lax.conv_general_dilated_local(
        x, k, (1, 1), "VALID", (3, 3), dimension_numbers=lax_dn), k_lax)  # fmt: skip
    patch_bytes = 4 * 32 * 900 * 144
    assert ours <= theirs / 2
    assert ours <= patch_bytes / 2  # never the whole patch tensor


@pytest.mark.parametrize("kernel_major", [False, True])
def test_a_single_position_is_one_matmul_without_a_kernel_copy(kernel_major):
    """One output position (a window over the whole input, a dense layer): "slices"
    contracts with one plain matmul; as a batched dot of one position XLA transposed
    the kernel gradient through a kernel-sized buffer (compile only for the memory)."""
    case = Case((11,), 256, 120, (9,), (3,), batch=3)
    geom = _geom(case)
    assert geom.output_items == 1
    x, k, _ = case.arrays()
    f = lambda x, k: local_conv_slices(x, k, geom, precision="highest", kernel_major=kernel_major)
    w = np.random.default_rng(1).standard_normal(_ref(case, x, k).shape).astype(np.float32)
    np.testing.assert_allclose(jax.jit(f)(x, k), _ref(case, x, k), rtol=1e-5, atol=1e-5)
    gx, gk = _grads(f, x, k, w)
    dx, dk, _ = case.arrays(seed=3)
    np.testing.assert_allclose(np.vdot(gx, dx), np.vdot(_ref(case, dx, k), w), rtol=1e-4)
    np.testing.assert_allclose(np.vdot(gk, dk), np.vdot(_ref(case, x, dk), w), rtol=1e-4)
    loss = lambda x, k: jnp.sum(f(x, k) * w)
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(x, k).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < k.nbytes / 4


SUITE = [  # (input shape, kernel_size, strides, padding, filters): the benchmark suite
    ((32, 32, 32, 16), 3, 1, "valid", 16),
    ((32, 28, 28, 1), 5, 1, "valid", 8),
    ((64, 16, 16, 32), 3, 1, "valid", 32),
    ((1, 32, 32, 64), 3, 1, "valid", 64),
    ((128, 12, 12, 16), 3, 2, "valid", 16),
    ((16, 64, 64, 8), 5, 1, "valid", 8),
    ((8, 24, 24, 32), 3, 1, "same", 64),
    ((32, 256, 32), 7, 1, "valid", 32),
    ((4, 12, 12, 12, 4), 3, 1, "valid", 8),
]


@pytest.mark.parametrize("shape, ks, st, pad, filters", SUITE)
def test_auto_choices_follow_the_documented_model(shape, ks, st, pad, filters):
    geom = make_geometry(shape, ks, st, pad)
    batch = shape[0]
    # CPU: "shifts" for few channels and small banks; else derivatives by one contraction
    # ("slices") where the kernel dominates or three window tensors fit the budget over an
    # input at most 32 times the output, else by the tile loop;
    # values by "slices" where derivatives are, but by the loop where it runs a dot per
    # position over several tiles (unless the kernel dominates or windows are few or 1-D).
    few = geom.channels <= SHIFTS_MAX_CHANNELS and geom.feature_dim * filters < 4096
    short = geom.feature_dim <= 15  # a few terms: any number of filters
    few = few and (
        geom.channels <= 4 or short or (filters <= 16 and geom.channels * filters <= 200)
    )
    deep = geom.feature_dim >= 200 and filters > 4  # deep windows: few filters only ...
    deep_values = few and deep and geom.feature_dim < 250  # ... but shallow ones' values
    few = few and not deep
    kernel_bound = batch > 1 and batch * tiles_module.MIN_TILES < filters
    patch_bytes = 4 * batch * geom.output_items * geom.feature_dim
    kernel_bytes = 4 * geom.output_items * geom.feature_dim * filters
    in_budget = 3 * patch_bytes + (kernel_bytes if batch == 1 else 0) <= (32 << 20)
    compact = np.prod(geom.padded_shape) <= 32 * geom.output_items  # input per output
    # ... and the loop where 24+ offsets' transposed stack outweighs the contraction
    transpose_bound = geom.window_items >= 24 and (
        np.prod(geom.padded_shape) >= 1.4 * filters * geom.output_items
    )
    transpose_bound = transpose_bound and not sliced_by_axis(geom, batch, 4)
    # ... or 20+ offsets over 100+ positions, 2+ MiB of windows of 2-16 rows
    many = geom.window_items >= 20 and geom.output_items >= 100 and 2 <= batch <= 16
    rows_bound = many and patch_bytes >= (2 << 20)
    fits = compact and in_budget
    sliced = kernel_bound or (fits and not transpose_bound and not rows_bound)
    assert tiles_module.derivatives_by_slices(geom, batch, filters, 4) == sliced
    plan = plan_tiles(geom, batch, filters, 4)  # per_position_values: checked below
    loop_values = plan.per_position_values and np.prod(plan.counts(geom)) > 1 and batch > 1
    values_sliced = kernel_bound or geom.window_items <= 4 or geom.ndim == 1 or not loop_values
    cheap = kernel_bound or geom.window_items <= 4 or geom.ndim == 1
    # sliced_by_axis: its own doctests and the slices_tangent tests below
    by_axis = sliced_by_axis(geom, batch, 4)
    kernel_major = batch > 1 and filters >= 4 * batch  # the inputs' gradient kernel first
    sliced_values = "slices/slices" if kernel_major or (not cheap and by_axis) else "slices"
    want = sliced_values if values_sliced else "tiles/slices"
    if not sliced:  # values by "slices" where windows fit, or are small beside the input
        gathered = (fits and patch_bytes <= (4 << 20)) or patch_bytes <= (2 << 20)
        want = "slices/tiles" if gathered and values_sliced else "tiles"
    if deep_values:
        want = "shifts/" + want.rpartition("/")[2]
    assert choose(geom, batch, filters, jnp.float32, "cpu") == ("shifts" if few else want)
    for backend in ("gpu", "tpu"):
        assert choose(geom, batch, filters, jnp.float32, backend) == "slices"
    positions = plan.tile_positions(geom)
    assert geom.output_shape[plan.level] % plan.size == 0  # no ragged tiles in the suite
    assert int(np.prod(plan.counts(geom))) <= tiles_module.MAX_TILES
    sizes = sorted(p.tile_positions(geom) for p in _every_plan(geom))
    assert plan.one_shot_forward == (batch * tiles_module.MIN_TILES < filters)
    if plan.one_shot_forward:  # kernel-bound: derivatives over >= MIN_TILES tiles
        assert positions == max(n for n in sizes if n <= geom.output_items // 8)
        return
    # The documented bounds: at most min(TILE_BYTES, 2 * patch_bytes / MIN_TILES) bytes
    # and output_items / MIN_TILES positions; at least MIN_TILE_BYTES and
    # output_items / MAX_TILES positions; the largest tile between, else the smallest above.
    per_position = tiles_module.position_bytes(geom, batch, filters, 4)
    patch_bytes = 4 * batch * geom.output_items * geom.feature_dim
    lower = max(-(-geom.output_items // tiles_module.MAX_TILES),
                -(-tiles_module.MIN_TILE_BYTES // per_position))  # fmt: skip
    upper = min(min(tiles_module.TILE_BYTES, 2 * patch_bytes // tiles_module.MIN_TILES)
                // per_position, geom.output_items // tiles_module.MIN_TILES)  # fmt: skip
    between = [n for n in sizes if lower <= n <= upper]
    smallest = min((n for n in sizes if n >= lower), default=max(sizes))
    if not between and smallest > 2 * upper:  # ragged tiles (none in the suite)
        between = [p.tile_positions(geom) for p in tiles_module._ragged_plans(geom)]
        between = [n for n in between if lower <= n <= upper]
    assert positions == (max(between) if between else smallest)
    few = positions <= tiles_module.PER_POSITION_MAX_POSITIONS
    few = few and batch <= tiles_module.PER_POSITION_MAX_BATCH
    heavy = positions * geom.feature_dim * filters * 4 >= tiles_module.MIN_TILE_BYTES
    assert plan.per_position_values == (few and heavy)


def test_auto_specific_choices():
    a = make_geometry((32, 32, 32, 16), 3)
    assert plan_tiles(a, 32, 16, 4) == TilePlan(0, 3)  # 10 tiles of 3 rows
    g = make_geometry((8, 24, 24, 32), 3, padding="same")  # 64 filters: big filter blocks
    assert plan_tiles(g, 8, 64, 4) == TilePlan(1, 12, per_position_values=True)  # 48 half rows
    small = make_geometry((2, 9, 9, 4), 3)  # a 1.3 KiB filter block: one dot
    assert not plan_tiles(small, 2, 4, 4).per_position_values
    d = make_geometry((1, 32, 32, 64), 3)  # batch 1: the kernel is all that matters
    assert plan_tiles(d, 1, 64, 4) == TilePlan(0, 3, one_shot_forward=True)
    yolo = make_geometry((8, 7, 7, 1024), 3, padding="same")  # a 441 MiB kernel
    assert choose(yolo, 8, 256, jnp.float32, "cpu") == "slices/slices"  # kernel first
    assert choose(d, 1, 64, jnp.float32, "cpu") == "slices/tiles"  # 2 MiB of windows
    tiny = make_geometry((2, 6, 6, 20), 3)  # values: one tile, one contraction
    assert choose(tiny, 2, 4, jnp.float32, "cpu") == "slices/slices"  # kernel grad by rows
    assert choose(make_geometry((2, 6, 6, 3), 3), 2, 4, jnp.float32, "cpu") == "shifts"
    # derivatives by "slices" while three window tensors fit in 32 MiB
    many = make_geometry((2, 12, 12, 20), 6)
    # (at most 16 rows: "slices/slices", the kernel gradient by rows)
    assert choose(many, 2, 8, jnp.float32, "cpu") == "slices/slices"
    assert choose(many, 2, 8, jnp.bfloat16, "cpu") == "slices/slices"  # computed in float32
    assert choose(make_geometry((17, 12, 12, 20), 6), 17, 8, jnp.float32, "cpu") == "slices"
    # ... values by the loop where it runs a dot per position over several tiles
    same = make_geometry((8, 24, 24, 32), 3, padding="same")  # 48 tiles of 12 positions
    assert choose(same, 8, 64, jnp.float32, "cpu") == "tiles/slices"
    wider = make_geometry((9, 24, 24, 32), 3, padding="same")  # 9 rows: one batched dot
    assert choose(wider, 9, 64, jnp.float32, "cpu") == "slices/slices"
    # ... and unstrided windows of 20+ offsets differentiated axis by axis
    assert choose(make_geometry((4, 20, 20, 20), 5), 4, 8, jnp.float32, "cpu") == "slices/slices"
    assert choose(make_geometry((17, 40, 40, 20), 5, 2), 17, 8, jnp.float32, "cpu") == "slices"
    big = make_geometry((64, 40, 40, 8), 6)  # 64 x 35x35 x 288 x 4 B = 90 MiB of windows
    assert choose(big, 64, 8, jnp.float32, "cpu") == "tiles"
    edge = make_geometry((8, 16, 16, 16), 2, 2)  # 4 offsets; 3 x 2 MiB of windows
    assert choose(edge, 8, 17, jnp.float32, "cpu") == "slices/slices"  # 17 filters: not "shifts"
    assert choose(make_geometry((9, 16, 16, 16), 3), 9, 17, jnp.float32, "cpu") == "slices/slices"
    sequence = make_geometry((8, 705, 11), 5)  # 1-D windows: slices of one sequence
    assert choose(sequence, 8, 24, jnp.float32, "cpu") == "slices/slices"
    long = make_geometry((64, 8192, 16), 9)  # 1-D but 288 MiB of windows: the loop
    assert choose(long, 64, 17, jnp.float32, "cpu") == "tiles"
    # The budget's edge: 3 x 2 x n x 16 features x 4 B against 32 MiB (n <= 87381)
    at, over = (make_geometry((2, n + 1, 8), 2) for n in (87381, 87382))
    assert tiles_module.derivatives_by_slices(at, 2, 8, 4)
    assert not tiles_module.derivatives_by_slices(over, 2, 8, 4)
    assert not tiles_module.derivatives_by_slices(at, 1, 8, 4)  # plus a 21 MiB kernel
    # Input elements per output position: at most 32 (64 / 2 positions), or the loop
    at, over = make_geometry((2, 64, 8), 2, 32), make_geometry((2, 65, 8), 2, 32)
    assert at.output_items == over.output_items == 2
    assert tiles_module.derivatives_by_slices(at, 2, 8, 4)
    assert not tiles_module.derivatives_by_slices(over, 2, 8, 4)
    # ... but values by "slices" (gathered) while a window tensor takes at most 2 MiB
    assert choose(make_geometry((2, 65, 20), 2, 32), 2, 8, jnp.float32, "cpu") == "slices/tiles"
    for batch, want in ((64, "slices/tiles"), (128, "tiles")):  # 1.95 / 3.9 MiB of windows
        spread = make_geometry((batch, 6600, 20), 2, 33)  # 33 inputs per output
        assert choose(spread, batch, 8, jnp.float32, "cpu") == want
    assert tiles_module.derivatives_by_slices(over, 2, 64, 4)  # unless the kernel dominates
    # 360 offsets over 6 positions (sweep problem s7-9): neither "shifts" nor slices
    wide = make_geometry((23, 19, 11, 16, 1), (9, 5, 8), (3, 1, 1), dilation=2)
    assert choose(wide, 23, 40, jnp.bfloat16, "cpu") == "slices/tiles"  # 0.6 MiB: gathered
    # "shifts" while a position's bank has fewer than 4096 weights: 81 x 50, not 81 x 51
    bank = make_geometry((8, 20, 20, 1), 9)
    assert choose(bank, 8, 50, jnp.float32, "cpu") == "shifts"
    assert choose(bank, 8, 51, jnp.float32, "cpu") == "tiles/slices"
    # Deep windows (200 features or more): "shifts" only up to 4 filters (sweep s8-46)
    deep = make_geometry((41, 16, 11, 6, 3), (6, 4, 5), (1, 2, 3), "same")  # 360 features
    assert choose(deep, 41, 4, jnp.float32, "cpu") == "shifts"
    assert choose(deep, 41, 5, jnp.float32, "cpu") != "shifts"
    shallow = make_geometry((41, 16, 11, 6, 3), (6, 4, 2), (1, 2, 3), "same")  # 144 features
    assert choose(shallow, 41, 6, jnp.float32, "cpu") == "shifts"
    mnist = make_geometry((32, 28, 28, 1), 5)
    assert choose(mnist, 32, 8, jnp.float32, "cpu") == "shifts"
    assert choose(mnist, 32, 8, jnp.float32, "gpu") == "slices"
    assert choose(a, 32, 16, jnp.bfloat16, "cpu") == "tiles"
    # 5-16 channels: "shifts" up to 16 filters and a product of 200 (16 x 12, not 16 x 13)
    assert choose(a, 32, 12, jnp.float32, "cpu") == "shifts"
    assert choose(a, 32, 13, jnp.float32, "cpu") == "tiles"
    assert choose(make_geometry((32, 32, 32, 12), 3), 32, 16, jnp.float32, "cpu") == "shifts"
    assert choose(make_geometry((32, 32, 32, 12), 3), 32, 17, jnp.float32, "cpu") == "tiles"
    assert choose(make_geometry((32, 32, 32, 17), 3), 32, 8, jnp.float32, "cpu") == "tiles"
    # ... and whatever the filters for at most 15 features (sweep s17-19: 5 x 3, 52 filters)
    short = make_geometry((166, 90, 29, 5), (1, 3), 2)
    assert choose(short, 166, 52, jnp.float32, "cpu") == "shifts"
    sixteen = make_geometry((166, 90, 29, 8), (1, 2), 2)  # 16 features
    assert choose(sixteen, 166, 52, jnp.float32, "cpu") != "shifts"
    assert choose(make_geometry((8, 90, 15), 1), 8, 820, jnp.float32, "cpu") != "shifts"  # bank
    # A prime output extent (sweep s9-9: 2551 positions) has no even tiling between one
    # tile of everything and single positions: ragged tiles, the last one overlapping.
    prime = make_geometry((136, 2551, 7), 4, 1, "causal")
    plan = plan_tiles(prime, 136, 8, 4)
    assert plan == TilePlan(0, 197) and plan.counts(prime) == (13,)  # 13 x 197 = 2561
    # ... and where the kernel dominates: at least MIN_TILES tiles, not 1009 of one position
    dominated = make_geometry((2, 1011, 4), 3, 1)  # 1009 positions, 2 x 8 < 64 filters
    plan = plan_tiles(dominated, 2, 64, 4)
    assert plan == TilePlan(0, 113, one_shot_forward=True) and plan.counts(dominated) == (9,)
    # Deterministic: the same arguments, the same answer.
    assert {choose(a, 32, 16, jnp.float32, "cpu") for _ in range(3)} == {"tiles"}


def test_shallow_deep_windows_take_shifts_values_and_keep_their_derivatives(monkeypatch):
    """Rule 1b of ``choose``: 200-249 features with more than 4 filters compute values
    by "shifts" (sweep s24-38's kind: 3 channels of 72 offsets, 8 filters) and keep
    the derivatives auto takes without it, bit for bit; 250 features and more do not."""
    geom = make_geometry((2, 12, 12, 3), (8, 9))  # 216 features
    name = choose(geom, 2, 8, jnp.float32, "cpu")
    deeper = make_geometry((2, 12, 12, 3), (9, 10))  # 270 features
    assert name.startswith("shifts/") and "shifts" not in choose(deeper, 2, 8, "float32", "cpu")
    rng = np.random.default_rng(0)
    x = rng.standard_normal(geom.input_shape(2)).astype(np.float32)
    k = rng.standard_normal(geom.kernel_shape(8)).astype(np.float32)

    def value_and_grad():  # traced anew: "auto" chooses at trace time
        f = lambda x, k: jnp.sum(jlocalconv.local_conv(x, k, (8, 9), 1) ** 2)
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(x, k)

    now = value_and_grad()
    monkeypatch.setattr(implementations, "SHIFTS_DEEP_VALUES_MAX_FEATURES", 0)
    before = choose(geom, 2, 8, jnp.float32, "cpu")
    assert not before.startswith("shifts") and name == "shifts/" + before.rpartition("/")[2]
    for got, want in zip(jax.tree.leaves(now), jax.tree.leaves(value_and_grad())):
        np.testing.assert_array_equal(got, want)


def test_the_loop_differentiates_where_the_window_stack_transposes_slowly():
    """Many offsets over an input large for the filters (``tiles.loop_transposes_faster``):
    derivatives by the loop, values still by "slices" ("slices/tiles"); the bounds'
    edges, and windows stacked axis by axis (whose transpose is cheap) keep "slices"."""
    geom = make_geometry((15, 65, 25, 7), 9, 3)  # 81 offsets over 19 x 6 positions
    ratio = np.prod(geom.padded_shape) / geom.output_items  # 14.25 inputs per output
    most = int(ratio / tiles_module.LOOP_DERIVATIVES_MIN_INPUT_PER_FILTER)  # 10 filters
    assert tiles_module.loop_transposes_faster(geom, 15, most, 4)
    assert not tiles_module.loop_transposes_faster(geom, 15, most + 1, 4)
    assert not tiles_module.derivatives_by_slices(geom, 15, most, 4)
    assert choose(geom, 15, most, jnp.float32, "cpu") == "slices/tiles"
    assert choose(geom, 15, most, jnp.bfloat16, "cpu") == "slices/tiles"  # computed in f32
    # 11 filters: "slices"' derivatives, but for 17 rows only (15 take the kernel gradient
    # by rows, and then ``loop_rows_faster``: 81 offsets, 114 positions, 3.7 MiB)
    assert choose(geom, 17, most + 1, jnp.float32, "cpu") == "slices"
    assert choose(geom, 15, most + 1, jnp.float32, "cpu") == "slices/tiles"
    # One row: a 0.26 MB window tensor, stacked axis by axis in "slices" derivatives
    assert sliced_by_axis(geom, 1, 4) and not tiles_module.loop_transposes_faster(geom, 1, 2, 4)
    # Offsets: 24 along one axis, 23 not (the same 20 x 33 positions, 3.6 inputs each)
    rows = [make_geometry((15, 20, 120, 7), (1, n), (1, 3)) for n in (24, 23)]
    assert [g.output_shape for g in rows] == [(20, 33), (20, 33)]
    assert tiles_module.loop_transposes_faster(rows[0], 15, 2, 4)
    assert not tiles_module.loop_transposes_faster(rows[1], 15, 2, 4)
    # The route computes the op: values by "slices", gradients by the loop (a scan)
    rng = np.random.default_rng(5)
    x = rng.standard_normal(geom.input_shape(2)).astype(np.float32)
    k = rng.standard_normal(geom.kernel_shape(most)).astype(np.float32)
    w = rng.standard_normal(geom.result_shape(2, most)).astype(np.float32)
    impl = implementations.lookup("slices/tiles")
    run = lambda x, k: impl(x, k, geom, precision="highest", preferred_element_type=None)
    ref = local_conv_ref(x, k, geom.kernel_size, geom.strides)
    np.testing.assert_allclose(run(x, k), ref, rtol=1e-5, atol=1e-4)
    assert "scan" not in str(jax.make_jaxpr(run)(x, k))
    assert "scan" in str(jax.make_jaxpr(jax.grad(lambda x, k: jnp.sum(run(x, k) * w)))(x, k))
    patches = lambda x, k: IMPLEMENTATIONS["patches"](x, k, geom, precision="highest")
    for ours, theirs in zip(_grads(run, x, k, w), _grads(patches, x, k, w)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)
    # "shifts" (4 channels) differentiates such windows by the loop too (sweep s22-5)
    few = make_geometry((13, 24, 9, 15, 4), (4, 3, 6), (2, 3, 3), "same")
    assert choose(few, 13, 2, jnp.float32, "cpu") == "shifts"
    assert tiles_module.loop_transposes_faster(few, 13, 2, 4)
    x = jax.ShapeDtypeStruct(few.input_shape(13), jnp.float32)
    k = jax.ShapeDtypeStruct(few.kernel_shape(2), jnp.float32)
    loss = lambda x, k: jnp.sum(local_conv_shifts(x, k, few))
    assert "scan" in str(jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, k))


def test_the_loop_differentiates_many_windows_of_few_rows():
    """20+ offsets over 100+ positions and 2+ MiB of windows of 2-16 rows
    (``tiles.loop_rows_faster``): derivatives by the loop, whose kernel gradient then goes
    by rows as "slices"' does; each bound's edge keeps "slices"."""
    geom = make_geometry((4, 40, 40, 8), (5, 7))  # 35 offsets, 4 x 36 x 34 x 280 x 4 B
    assert tiles_module.sliced_windows_fit(geom, 4, 8, 4)
    assert tiles_module.loop_rows_faster(geom, 4, 4)
    assert choose(geom, 4, 8, jnp.float32, "cpu") == "tiles"  # 5.2 MiB: the loop's values
    assert not tiles_module.loop_rows_faster(geom, 17, 4)  # 17 rows: no kernel gradient by rows
    assert not tiles_module.loop_rows_faster(geom, 1, 4)  # one row
    # Offsets: 20 along one axis, 19 not (4 rows of 2 x 400 positions x 64 channels)
    offsets = [make_geometry((4, 2, 400 + n - 1, 64), (1, n)) for n in (20, 19)]
    assert [g.output_items for g in offsets] == [800, 800]
    assert [tiles_module.loop_rows_faster(g, 4, 4) for g in offsets] == [True, False]
    # Positions: 100, 99 not (4 rows of 20 offsets x 256 channels: 7.8 MiB)
    positions = [make_geometry((4, n + 19, 256), 20) for n in (100, 99)]
    assert [window_bytes(g, 4, 4) > (2 << 20) for g in positions] == [True, True]
    assert [tiles_module.loop_rows_faster(g, 4, 4) for g in positions] == [True, False]
    # Bytes: 2 MiB of windows (4 rows x 1024 positions x 128 features x 4 B), not under
    at = make_geometry((4, 1024 + 31, 4), 32)
    assert window_bytes(at, 4, 4) == 2 << 20
    assert tiles_module.loop_rows_faster(at, 4, 4)
    assert not tiles_module.loop_rows_faster(make_geometry((4, 1024 + 30, 4), 32), 4, 4)


def test_fitting_windows_are_gathered_for_values_up_to_4_mib():
    """Where the loop differentiates windows whose tensors fit, values go by "slices"
    (gathered) while one window tensor takes at most 4 MiB
    (``SLICED_VALUES_FITTING_MAX_WINDOW_BYTES``), by the loop beyond."""
    at, over = (make_geometry((4, n + 31, 64), 32) for n in (128, 129))  # 4 x n x 2048 x 4 B
    assert window_bytes(at, 4, 4) == 4 << 20 < window_bytes(over, 4, 4)
    for geom, want in ((at, "slices/tiles"), (over, "tiles")):
        assert tiles_module.sliced_windows_fit(geom, 4, 8, 4)
        assert not tiles_module.derivatives_by_slices(geom, 4, 8, 4, 4)
        for dtype in (jnp.float32, jnp.bfloat16):  # 16-bit: windows of float32
            assert choose(geom, 4, 8, dtype, "cpu") == want


def test_the_loop_differentiates_windows_of_many_offsets_stacked_in_one_shot():
    """Over ``tiles.SLICED_DERIVATIVES_MAX_STACKED_OFFSETS`` offsets stacked in one shot
    (whose transpose XLA compiles for seconds) the loop differentiates, even a dominant
    kernel; at the bound, or stacked axis by axis, "slices" still does."""
    bound = tiles_module.SLICED_DERIVATIVES_MAX_STACKED_OFFSETS
    at, over = (make_geometry((4, 40, 40, 8), window, 2) for window in ((16, 8), (16, 9)))
    assert at.window_items == bound < over.window_items
    for geom in (at, over):
        assert not sliced_by_axis(geom, 4, 4)
    assert choose(at, 4, 64, jnp.float32, "cpu") == "slices/slices"
    assert choose(over, 4, 64, jnp.float32, "cpu") == "slices/tiles"
    dominant = make_geometry((2, 25, 25, 19, 27), (9, 9, 7), (2, 3, 2), dilation=3)  # s650-29
    assert tiles_module.kernel_dominates(2, 317)
    assert not tiles_module.derivatives_by_slices(dominant, 2, 317, 4)
    by_axis = make_geometry((2, 40, 40, 8), (8, 17))  # 136 offsets, unstrided
    assert sliced_by_axis(by_axis, 2, 4) and tiles_module.derivatives_by_slices(by_axis, 2, 64, 4)


def test_the_loop_differentiates_a_dominant_16_bit_kernel():
    """A dominant 16-bit kernel beside widened operands (``tiles.NARROW_KERNEL_LOOP_MIN_BYTES``
    and up, at most 16 rows): derivatives by the loop, which widens it block by block,
    where a float32 kernel keeps "slices"' one contraction; "shifts" too."""
    geom = make_geometry((3, 51, 4, 332), (4, 3), (3, 1))  # sweep s52-25: a 15.3 MiB kernel
    assert choose(geom, 3, 63, jnp.bfloat16, "cpu") == "slices/tiles"
    assert choose(geom, 3, 63, jnp.float16, "cpu") == "slices/tiles"
    assert choose(geom, 3, 63, jnp.float32, "cpu").endswith("/slices")
    assert choose(geom, 17, 200, jnp.bfloat16, "cpu").endswith("slices")  # 17 rows
    # The bound: 2 MiB of bf16 kernel (32 positions x 256 features x 128 filters), not under
    at = make_geometry((3, 32 + 3, 64), 4)
    assert 2 * at.output_items * at.feature_dim * 128 == 2 << 20
    assert choose(at, 3, 128, jnp.bfloat16, "cpu") == "slices/tiles"
    assert choose(at, 3, 127, jnp.bfloat16, "cpu") == "slices/slices"
    # "shifts" (one channel, 9 features, 400 filters: a 9.9 MiB kernel) differentiates by
    # the loop when its kernel is 16-bit.
    few = make_geometry((2, 40, 40, 1), 3)
    assert choose(few, 2, 400, jnp.bfloat16, "cpu") == "shifts"
    k = jax.ShapeDtypeStruct(few.kernel_shape(400), jnp.bfloat16)
    x = jax.ShapeDtypeStruct(few.input_shape(2), jnp.bfloat16)
    loss = lambda x, k: jnp.sum(jlocalconv.local_conv(x, k, 3, 1).astype(jnp.float32))
    assert "scan" in str(jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, k))
    wide = jax.ShapeDtypeStruct(few.kernel_shape(400), jnp.float32)
    x32 = jax.ShapeDtypeStruct(few.input_shape(2), jnp.float32)
    assert "scan" not in str(jax.make_jaxpr(jax.grad(loss, (0, 1)))(x32, wide))


def test_the_loop_differentiates_one_rows_large_16_bit_kernel():
    """One row (``tiles.NARROW_KERNEL_LOOP_ONE_ROW``): a 16-bit kernel of 2 MiB and up is
    differentiated by the loop, as beside a few rows; a float32 or smaller one is not."""
    geom = make_geometry((1, 2841, 107), 1, padding="same")  # sweep s61-27: an 18 MiB kernel
    assert choose(geom, 1, 31, jnp.bfloat16, "cpu").endswith("tiles")
    assert choose(geom, 1, 31, jnp.float32, "cpu").endswith("slices")
    at = make_geometry((1, 32 + 3, 64), 4)  # 2 MiB at 128 filters, as above
    assert choose(at, 1, 128, jnp.bfloat16, "cpu").endswith("tiles")
    assert choose(at, 1, 127, jnp.bfloat16, "cpu").endswith("slices")
    x = jax.ShapeDtypeStruct(geom.input_shape(1), jnp.bfloat16)
    k = jax.ShapeDtypeStruct(geom.kernel_shape(31), jnp.bfloat16)
    loss = lambda x, k: jnp.sum(jlocalconv.local_conv(x, k, 1, 1, padding="same"))
    grad = jax.jit(jax.grad(loss, (0, 1))).lower(x, k).compile()
    kernel_f32 = 4 * math.prod(geom.kernel_shape(31))
    assert grad.memory_analysis().temp_size_in_bytes < kernel_f32 / 4


def test_the_loop_differentiates_a_dominant_kernel_over_sparse_windows():
    """A dominant kernel over dilated, strided windows (``tiles._sparse_windows_loop``:
    over 32 padded inputs per output, a transpose of 10 M+ elements, 256+ KiB of
    windows): derivatives by the loop; each bound's edge keeps "slices"."""
    # sweep s53-6: 3 rows of 10x22x22x49 inputs, 2x8x7 windows, 27 filters
    geom = make_geometry((3, 10, 22, 22, 49), (2, 8, 7), (3, 2, 2), dilation=3)
    assert tiles_module.kernel_dominates(3, 27) and input_per_output(geom) > 32
    assert choose(geom, 3, 27, jnp.float32, "cpu") == "slices/tiles"  # gathered values

    def transpose(g):
        return 2 * math.prod(g.padded_shape) * g.feature_dim  # 2 rows: window elements * ratio

    # Transpose: 2 rows x 5000 inputs x 10 offsets x 100 channels = 10 M, 4999 inputs not
    # (100 positions: 50 inputs per output, 0.8 MB of windows)
    edge = [make_geometry((2, n, 100), 10, 50) for n in (5000, 4999)]
    assert [transpose(g) >= 10_000_000 for g in edge] == [True, False]
    assert [tiles_module._sparse_windows_loop(g, 2, 4) for g in edge] == [True, False]
    derivatives = [choose(g, 2, 32, jnp.float32, "cpu").rpartition("/")[2] for g in edge]
    assert derivatives == ["tiles", "slices"]
    # Windows: 256 KiB (2 rows x 64 positions x 8 offsets x 64 channels x 4 B), 63 not
    edge = [make_geometry((2, 160 * (n - 1) + 8, 64), 8, 160) for n in (64, 63)]
    assert [window_bytes(g, 2, 4) for g in edge] == [256 << 10, 4 * 2 * 63 * 512]
    assert all(transpose(g) >= 10_000_000 and input_per_output(g) > 32 for g in edge)
    assert [tiles_module._sparse_windows_loop(g, 2, 4) for g in edge] == [True, False]
    # Dense windows (at most 32 inputs per output) keep "slices" whatever their size.
    dense = make_geometry((2, 5000, 100), 10, 20)  # 20 inputs per output
    assert transpose(dense) >= 10_000_000 and not tiles_module._sparse_windows_loop(dense, 2, 4)


def test_auto_runs_the_chosen_implementation():
    # 32 > SHIFTS_MAX_CHANNELS; 3 x 5.1 MiB of windows: values by tiles (a dot per
    # position in each of 48 tiles), derivatives sliced
    case = Case((24, 24), 32, 64, (3, 3), (1, 1), padding="same", batch=8)
    x, k, _ = case.arrays()
    if jax.default_backend() == "cpu":
        assert choose(_geom(case), 8, 64, x.dtype, "cpu") == "tiles/slices"
    got = jlocalconv.local_conv(x, k, 3, 1, padding="same", precision="highest")
    np.testing.assert_allclose(got, _ref(case, x, k), rtol=1e-5, atol=1e-5)
    # Differentiated, values and tangents come from "slices": one dot per contraction
    # but the kernel gradient's, which 8 rows take by rows (tiles.rows_kernel_tangent);
    # no tile loop (a scan) anywhere in the program.
    loss = lambda x, k: jnp.sum(jlocalconv.local_conv(x, k, 3, 1, padding="same") ** 2)
    text = str(jax.make_jaxpr(jax.value_and_grad(loss, (0, 1)))(x, k))
    if jax.default_backend() == "cpu":
        assert "scan" not in text and text.count("dot_general") == 2
    plain = lambda x, k: jnp.sum(local_conv_tiles(x, k, _geom(case)) ** 2)  # another route
    for got, want in zip(jax.grad(loss, (0, 1))(x, k), jax.grad(plain, (0, 1))(x, k)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU widening policy")
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_auto_computes_16_bit_operands_in_float32_on_cpu(dtype):
    case = Case((12, 12), 5, 8, (3, 3), (1, 1), batch=32)
    x, k, _ = case.arrays()
    x, k = x.astype(dtype), k.astype(dtype)
    chosen = jlocalconv.implementations.lookup(choose(_geom(case), 32, 8, dtype, "cpu"))
    wide = chosen(x.astype(jnp.float32), k.astype(jnp.float32), _geom(case),
                  precision=None, preferred_element_type=None)  # fmt: skip
    # Rounded once from float32: bit-equal to the float32 computation on the same operands.
    got = jax.jit(lambda x, k: jlocalconv.local_conv(x, k, 3, 1))(x, k)
    assert got.dtype == dtype
    np.testing.assert_array_equal(
        np.asarray(got, np.float32), np.asarray(wide.astype(dtype), np.float32)
    )
    accumulated = jlocalconv.local_conv(x, k, 3, 1, preferred_element_type=jnp.float32)
    assert accumulated.dtype == jnp.float32
    np.testing.assert_array_equal(accumulated, wide)
    # Gradients come back in the operands' dtype.
    gx, gk = jax.grad(lambda x, k: jlocalconv.local_conv(x, k, 3, 1).sum(), (0, 1))(x, k)
    assert (gx.dtype, gk.dtype) == (dtype, dtype)
    # Not widened: a float64 accumulation, other backends, float32 operands.
    assert not jlocalconv.implementations.widens(x, k, "float64", "cpu")
    assert not jlocalconv.implementations.widens(x, k, None, "gpu")
    assert not jlocalconv.implementations.widens(x.astype(jnp.float32), k, None, "cpu")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU widening policy")
def test_auto_takes_slices_values_of_a_heavy_bf16_kernel_from_bf16_operands():
    """ "slices" values over a bf16 kernel of 20 filters per batch row and 2-D windows:
    a bf16 dot accumulating in float32, with no float32 copy of the kernel; the same exact
    products summed in float32 as the widened program's, so within one rounding of the
    reference. Differentiated, the widened program itself, bit for bit."""
    case = Case((9, 9), 20, 40, (3, 3), (1, 1), batch=2)
    geom = _geom(case)
    x, k, _ = case.arrays()
    x, k = x.astype(jnp.bfloat16), k.astype(jnp.bfloat16)
    name = choose(geom, 2, 40, jnp.bfloat16, "cpu")
    assert name.startswith("slices") and implementations.narrows_values(name, x, k)
    auto = lambda x, k: jlocalconv.local_conv(x, k, 3, 1)
    wide = implementations.widened(implementations.lookup(name))
    wide_auto = lambda x, k: wide(x, k, geom, precision=None, preferred_element_type=None)
    kernel32 = f"f32[{','.join(map(str, k.shape))}]"
    assert kernel32 not in str(jax.make_jaxpr(auto)(x, k))
    assert kernel32 in str(jax.make_jaxpr(wide_auto)(x, k))  # what it saves
    got = jax.jit(auto)(x, k)
    assert got.dtype == jnp.bfloat16
    want = _ref(case, np.asarray(x, np.float32), np.asarray(k, np.float32))
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=2**-8, atol=1e-6)
    # Not for 1-D windows, float16, or a kernel of at most 4 filters per row.
    x1, k1 = x[:, 0], k[: geom.output_shape[1], :60]
    assert not implementations.narrows_values(name, x1, k1)
    assert not implementations.narrows_values(name, x.astype(jnp.float16), k.astype(jnp.float16))
    assert not implementations.narrows_values(name, x, k[..., :8])  # 4 filters per row
    w = np.random.default_rng(3).standard_normal(want.shape).astype(np.float32)
    for got_g, wide_g in zip(_grads(auto, x, k, w), _grads(wide_auto, x, k, w)):
        np.testing.assert_array_equal(np.asarray(got_g, np.float32), np.asarray(wide_g, np.float32))


def test_auto_counts_narrow_value_windows_at_two_bytes():
    """Where "slices" values would narrow (a bf16 kernel of over 4 filters per row, 2+
    rows), the window byte bounds count their bf16 windows: 3.6 MiB widened, over
    ``SLICED_VALUES_MAX_WINDOW_BYTES``, 1.8 MiB narrow, within it. The loop still
    differentiates; float32, float16, one row or few filters keep the loop's values."""
    geom = make_geometry((6, 20, 22, 9, 12), (4, 4, 9), 2)
    bound = implementations.SLICED_VALUES_MAX_WINDOW_BYTES
    assert window_bytes(geom, 6, 2) <= bound < window_bytes(geom, 6, 4)
    assert choose(geom, 6, 61, jnp.bfloat16, "cpu") == "slices/tiles"
    x = jnp.zeros((6, 20, 22, 9, 12), jnp.bfloat16)
    k = jnp.zeros((geom.output_items, geom.feature_dim, 61), jnp.bfloat16)
    assert implementations.narrows_values("slices/tiles", x, k)
    assert choose(geom, 6, 61, jnp.float32, "cpu") == "tiles"
    assert choose(geom, 6, 61, jnp.float16, "cpu") == "tiles"  # widened, not narrowed
    assert choose(geom, 6, 24, jnp.bfloat16, "cpu") == "tiles"  # 4 filters per row
    bytes_per_item = functools.partial(implementations._value_itemsize, geom)
    assert [bytes_per_item(6, 61, jnp.bfloat16), bytes_per_item(1, 61, jnp.bfloat16)] == [2, 4]


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_widened_tile_loop_rounds_gradients_once(dtype):
    """The tile loop widens its 16-bit kernel a block at a time (no float32 copy of the
    whole kernel), yet both gradients equal the float32 program's, rounded once."""
    case = Case((65,), 20, 8, (2,), (32,), batch=2)  # input per output > 32: the loop
    geom = _geom(case)
    assert choose(geom, 2, 8, dtype, "cpu") == "slices/tiles"  # 640 B of windows
    x, k, _ = case.arrays()
    x, k = x.astype(dtype), k.astype(dtype)
    # The cotangent reaches a 16-bit result in its dtype: draw it representable.
    w = np.random.default_rng(3).standard_normal(_ref(case, x, k).shape)
    w = np.asarray(jnp.asarray(w, dtype), np.float32)
    loss = lambda f: lambda x, k: jnp.sum(f(x, k).astype(jnp.float32) * w)
    auto = lambda x, k: jlocalconv.local_conv(x, k, 2, 32)
    got = jax.jit(jax.grad(loss(auto), (0, 1)))(x, k)
    wide = jax.jit(jax.grad(loss(_impl("tiles", case)), (0, 1)))(
        x.astype(jnp.float32), k.astype(jnp.float32))  # fmt: skip
    for g, want in zip(got, wide):
        assert g.dtype == dtype
        np.testing.assert_array_equal(np.asarray(g, np.float32),
                                      np.asarray(want.astype(dtype), np.float32))  # fmt: skip


def test_shifts_differentiates_kernel_bound_problems_through_slices():
    """batch * MIN_TILES < filters: derivatives (and differentiated values) by "slices"."""
    case = Case((9, 8), 2, 12, (3, 2), (2, 1), padding="same", batch=1)
    assert plan_tiles(_geom(case), 1, 12, 4).one_shot_forward
    x, k, _ = case.arrays()
    w = np.random.default_rng(3).standard_normal(_ref(case, x, k).shape).astype(np.float32)
    np.testing.assert_allclose(_impl("shifts", case)(x, k), _ref(case, x, k), rtol=1e-5, atol=1e-5)
    got, want = _grads(_impl("shifts", case), x, k, w), _grads(_impl("patches", case), x, k, w)
    for g, p in zip(got, want):
        np.testing.assert_allclose(g, p, rtol=1e-5, atol=1e-5)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda k: _impl("shifts", case)(x, k).sum()))(k))
    assert "scan" not in jaxpr  # no tile loop


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize(
    "case",
    [
        Case((20,), 1, 4, (10,), (10,), batch=3),  # the genomic layer's geometry, smaller
        Case((6, 8), 3, 2, (2, 4), (2, 4), data_format="channels_first"),
        Case((4, 6, 2), 2, 3, (2, 3, 1), (2, 3, 1)),
    ],
    ids=str,
)
def test_disjoint_windows_are_a_reshape_and_match_the_reference(case, name):
    """stride == window, no dilation: windows by reshape + transpose, values and gradients."""
    from jlocalconv.implementations import _windows

    assert _windows._tiles_input(_geom(case))
    x, k, _ = case.arrays()
    np.testing.assert_allclose(_impl(name, case)(x, k), _ref(case, x, k), rtol=1e-5, atol=1e-5)
    w = np.random.default_rng(4).standard_normal(_ref(case, x, k).shape).astype(np.float32)
    for g, p in zip(_grads(_impl(name, case), x, k, w), _grads(_impl("patches", case), x, k, w)):
        np.testing.assert_allclose(g, p, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "shape, ks, st, dil, fmt",
    [
        ((2, 9, 13, 3), (9, 3), (1, 2), (1, 1), "channels_last"),  # axis 1: fewer inputs per output
        ((2, 3, 9, 13), (9, 3), (1, 2), (1, 1), "channels_first"),
        ((2, 2, 25, 21, 5), (1, 9, 6), (1, 3, 2), (3, 3, 3), "channels_last"),  # sweep s8-51's tile
        ((1, 4, 11, 7, 6, 2), (2, 3, 1, 2), (2, 1, 1, 3), (1, 2, 1, 1), "channels_last"),  # 4-D
    ],
)
@pytest.mark.parametrize("select", [False, True])
def test_windows_by_axis_equal_the_one_shot_stack_and_its_transpose(
    shape, ks, st, dil, fmt, select, monkeypatch
):
    """Any stage order (see ``_windows._stage_order``) must give Keras's feature order,
    also with every later stage a one-hot contraction (``select``, its bound lowered
    so that each takes it), exactly."""
    from jlocalconv.implementations import _windows

    monkeypatch.setattr(_windows, "STAGE_SELECT_MIN_RATIO", 0)
    geom = make_geometry(shape, ks, st, dilation=dil, data_format=fmt)
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
    # Under jit: one program each, not an eager dispatch (and compile) per slice.
    stack = lambda by: jax.jit(lambda v: _windows.windows(v, geom, by_axis=by, select=select))
    one_shot = stack(False)(x)
    np.testing.assert_array_equal(stack(True)(x), one_shot)
    ct = jnp.asarray(np.random.default_rng(1).standard_normal(one_shot.shape), jnp.float32)
    transpose = lambda by: jax.jit(jax.linear_transpose(stack(by), x))(ct)[0]
    np.testing.assert_allclose(transpose(True), transpose(False), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    "shape, ks, st, dil, fmt",
    [
        ((2, 9, 13, 3), (3, 3), (1, 1), (1, 1), "channels_last"),  # equal offsets on both axes
        ((2, 3, 9, 13), (4, 3), (1, 2), (1, 1), "channels_first"),
        ((2, 2, 25, 21, 5), (1, 3, 2), (1, 3, 2), (3, 3, 3), "channels_last"),  # strided, dilated
        ((3, 17, 2), (5,), (2,), (2,), "channels_last"),
    ],
)
def test_shared_windows_equal_static_ones_under_every_transformation(shape, ks, st, dil, fmt):
    """Slices at run-time offsets (``_windows.shared_windows``) are the same windows, and
    their derivatives (static slices, by ``custom_jvp``) the same derivatives."""
    from jlocalconv.implementations import _windows

    geom = make_geometry(shape, ks, st, dilation=dil, data_format=fmt)
    rng = np.random.default_rng(0)
    x, dx = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(2))
    static = jax.jit(lambda v: _windows.windows(v, geom))  # jit: one program, not op by op
    shared = jax.jit(lambda v: _windows.shared_windows(v, geom))
    np.testing.assert_array_equal(jax.jit(shared)(x), static(x))
    np.testing.assert_array_equal(jax.jvp(shared, (x,), (dx,))[1], static(dx))
    ct = jnp.asarray(rng.standard_normal(static(x).shape), jnp.float32)
    for transpose in (jax.linear_transpose, lambda f, v: jax.vjp(f, v)[1]):
        np.testing.assert_allclose(
            transpose(shared, x)(ct)[0], transpose(static, x)(ct)[0], rtol=1e-6, atol=1e-6
        )
    batch = jnp.stack([x, dx])
    np.testing.assert_array_equal(jax.vmap(shared)(batch), jax.vmap(static)(batch))
    second = lambda f: jax.grad(lambda v: jnp.sum(jax.grad(lambda u: jnp.sum(jnp.sin(f(u))))(v)))
    np.testing.assert_allclose(second(shared)(x), second(static)(x), rtol=1e-5, atol=1e-5)


def test_shared_windows_hide_their_offsets_from_xla():
    """What makes the slices one kernel: each is a ``dynamic_slice`` whose offsets come
    through one ``optimization_barrier`` (XLA would fold constants back into distinct
    static slices), with no negative-index select; a static slice follows only strides."""
    from jlocalconv.implementations import _windows

    def count(geom, **kw):
        x = jax.ShapeDtypeStruct(geom.input_shape(2), jnp.float32)
        text = jax.jit(lambda v: _windows.windows(v, geom, **kw)).lower(x).as_text()
        ops = ("dynamic_slice", "optimization_barrier", "select", "stablehlo.slice")
        return {op: text.count(op) for op in ops}

    assert count(make_geometry((2, 40, 40, 8), 3), shared=True) == {
        "dynamic_slice": 9, "optimization_barrier": 1, "select": 0, "stablehlo.slice": 0
    }  # fmt: skip
    assert count(make_geometry((2, 40, 40, 8), 3, 2), shared=True)["stablehlo.slice"] == 9
    assert count(make_geometry((2, 40, 40, 8), 3))["dynamic_slice"] == 0
    # A stack that XLA fuses into one loop with its slices (STACK_FUSION_MAX_BYTES,
    # STACK_FUSION_MAX_PARTS) is one kernel already: it keeps static slices.
    assert count(make_geometry((2, 9, 13, 3), 3), shared=True)["dynamic_slice"] == 0
    assert count(make_geometry((2, 40, 40, 8), (2, 4)), shared=True)["dynamic_slice"] == 0


@pytest.mark.parametrize(
    "shape, ks, st, dil, filters",
    [
        ((2, 6, 25, 21, 133), (1, 9, 6), (1, 3, 2), (3, 3, 3), 1),  # sweep s8-51
        ((35, 17, 11, 3, 23), (8, 6, 2), (2, 3, 1), (2, 2, 2), 13),  # sweep s51-41
    ],
)
def test_tiles_backward_of_large_dilated_windows_stays_within_lax_temp_memory(
    shape, ks, st, dil, filters
):
    """Few positions under large dilated windows (compile only; nothing runs): s8-51's
    axis-by-axis windows held 8.2 MiB of XLA temporaries against lax's 3.5 MiB when
    their stages ran last axis first; s51-41's (two tiles, 35 rows) 5.8 MiB against
    2.0 while its later stages were padded slices, which XLA holds one per offset
    (``_windows.STAGE_SELECT_MIN_RATIO``)."""
    geom = make_geometry(shape, ks, st, dilation=dil)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)

    def temp(f, kernel_shape):
        k = jax.ShapeDtypeStruct(kernel_shape, jnp.float32)
        loss = lambda x, k: jnp.sum(f(x, k) ** 2)
        compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(x, k).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    ours = temp(lambda x, k: local_conv_tiles(x, k, geom), geom.kernel_shape(filters))
    lax_kernel = (*geom.output_shape, geom.feature_dim, filters)
    theirs = temp(lambda x, k: jax.lax.conv_general_dilated_local(
        x, k, st, "VALID", ks, rhs_dilation=dil,
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC")), lax_kernel)  # fmt: skip
    assert ours <= theirs + (1 << 20)


def test_widened_tile_loop_holds_no_float32_kernel(monkeypatch):
    """bf16 operands, a kernel 2x the input (sweep problem s9-10): the widened tile loop
    converts filter blocks, not the kernel (compile only; nothing runs). Its gradient
    still accumulates in a float32 buffer: XLA's CPU backend widens the loop's bf16 adds
    (23.6 against 60.0 MiB, a float32 kernel being 19.1; 42.8 while XLA could hoist the
    blocks' widening out of the loop). The kernel gradient by rows
    (``tiles.kernel_tangent_by_rows``, which "auto" takes here) adds the window tensor,
    held in bf16 (``window_dtype``: half the float32 one), and nothing kernel-sized."""
    geom = make_geometry((5, 3411, 147), 2, 1)
    x = jax.ShapeDtypeStruct((5, 3411, 147), jnp.bfloat16)
    k = jax.ShapeDtypeStruct(geom.kernel_shape(5), jnp.bfloat16)
    assert choose(geom, 5, 5, jnp.bfloat16, "cpu") == "tiles"
    assert tiles_module.kernel_tangent_by_rows(geom, 5, 4)

    g = jax.ShapeDtypeStruct((5, 3410, 5), jnp.float32)  # a cotangent, as in training

    def temp(f):
        jax.clear_caches()  # the rule is read at trace time
        loss = lambda x, k, g: jnp.sum(f(x, k).astype(jnp.float32) * g)
        compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(x, k, g).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    by_rows = temp(lambda x, k: jlocalconv.local_conv(x, k, 2, 1))
    monkeypatch.setattr(tiles_module, "ROWS_KERNEL_TANGENT_MAX_BATCH", 0)
    auto = temp(lambda x, k: jlocalconv.local_conv(x, k, 2, 1))
    whole = temp(lambda x, k: local_conv_tiles(x.astype(jnp.float32), k.astype(jnp.float32), geom))
    kernel_f32 = 4 * int(np.prod(geom.kernel_shape(5)))
    assert auto <= whole - kernel_f32 * 3 // 4  # no float32 copy of the kernel
    window_bf16 = 2 * 5 * geom.output_items * geom.feature_dim
    assert by_rows <= auto + window_bf16 + (1 << 20)


def test_widened_tile_loop_reads_kernel_blocks_inside_the_loop():
    """A bf16 kernel 40x the input (as sweep problem s52-25): XLA's CPU backend widens a
    16-bit slice by slicing a widened operand, and would hoist that float32 copy of the
    whole kernel out of the loop; the loop makes the kernel it slices loop-variant
    (``optimization_barrier``), so value_and_grad holds no kernel-sized temporary."""
    geom = make_geometry((3, 27, 4, 96), (4, 3), (3, 1))  # 16 positions x 1152 features
    x = jax.ShapeDtypeStruct(geom.input_shape(3), jnp.bfloat16)
    k = jax.ShapeDtypeStruct(geom.kernel_shape(63), jnp.bfloat16)
    g = jax.ShapeDtypeStruct(geom.result_shape(3, 63), jnp.float32)
    impl = implementations.resolve("tiles", x, k, None, "cpu")  # widened
    loss = lambda x, k, g: jnp.sum(
        impl(x, k, geom, precision=None, preferred_element_type=None).astype(jnp.float32) * g
    )
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(x, k, g).compile()
    kernel_bf16 = 2 * int(np.prod(geom.kernel_shape(63)))  # 2.2 MiB
    assert compiled.memory_analysis().temp_size_in_bytes < kernel_bf16 // 2


def test_widened_tile_loop_differentiates_its_kernel_inside_a_scan(monkeypatch):
    """Second order through the widened tile loop's kernel blocks inside a ``lax.scan``
    whose carry is the kernel (layers scanned, as models do): equal to the float32
    route's up to bf16 rounding. Kernel blocks read as 16-bit integer words (behind a
    ``custom_jvp``, for their memory) gave a third of the gradient and a zero second
    derivative here: JAX's partial evaluation of the scan inlines the value route, whose
    bit cast has a zero derivative."""
    geom = make_geometry((2, 65, 20), 2, 32)
    # The loop's own values (as beside windows over 2 MiB), not "slices"' gathered ones
    monkeypatch.setattr(implementations, "SLICED_VALUES_MAX_WINDOW_BYTES", 0)
    assert choose(geom, 2, 8, jnp.bfloat16, "cpu") == "tiles"
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal(geom.input_shape(2)), jnp.bfloat16).astype(jnp.float32)
    k = jnp.asarray(rng.standard_normal(geom.kernel_shape(8)), jnp.bfloat16).astype(jnp.float32)
    auto = lambda x, k: jlocalconv.local_conv(
        x.astype(jnp.bfloat16), k.astype(jnp.bfloat16), 2, 32
    ).astype(jnp.float32)
    wide = lambda x, k: local_conv_tiles(x, k, geom)

    def scanned(f):
        def body(kernel, scale):
            gx = jax.grad(lambda x: jnp.sum(f(x, kernel) ** 2))(x * scale)
            return kernel, jnp.sum(gx**2)

        return lambda k: jax.lax.scan(body, k, jnp.arange(1.0, 3.0))[1].sum()

    for order in (jax.grad, lambda f: lambda k: jax.jvp(jax.grad(f), (k,), (k,))[1]):
        got, expected = order(scanned(auto))(k), order(scanned(wide))(k)
        scale = float(jnp.abs(expected).max())
        assert scale > 0
        np.testing.assert_allclose(got, expected, rtol=0, atol=2**-5 * scale)


def _widened_rows_problem(seed: int) -> tuple:
    """bf16 operands whose tile loop takes the kernel gradient by rows, and the tiles route
    on them widened by ``implementations.widened`` (16-bit rows windows) and by hand
    (float32 windows), each rounding its result to bf16."""
    geom = make_geometry((3, 9, 11, 4), (3, 2))
    assert tiles_module.kernel_tangent_by_rows(geom, 3, 4)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(geom.input_shape(3)), jnp.bfloat16)
    k = jnp.asarray(rng.standard_normal(geom.kernel_shape(5)), jnp.bfloat16)
    narrow = implementations.widened(local_conv_tiles)
    got = lambda x, k: narrow(x, k, geom, precision=None, preferred_element_type=None)
    wide = lambda x, k: local_conv_tiles(x.astype(jnp.float32), k, geom).astype(x.dtype)
    return x, k, got, wide


def test_widened_rows_kernel_gradient_holds_exact_16_bit_windows():
    """Widened bf16 operands: the rows kernel gradient keeps its windows in bf16
    (``window_dtype``), which hold the widened inputs exactly, so the gradient is the
    float32-windows one bit for bit (both accumulate in float32 and round once)."""
    x, k, got, wide = _widened_rows_problem(7)

    def kernel_grad(f):
        return jax.grad(lambda k: jnp.sum(f(x, k).astype(jnp.float32) ** 2))(k)

    want = kernel_grad(wide)
    np.testing.assert_array_equal(
        np.asarray(kernel_grad(got), np.float32), np.asarray(want, np.float32)
    )


def test_widened_rows_kernel_gradient_differentiates_in_the_inputs_inside_a_scan():
    """Second order through the rows kernel gradient of widened bf16 operands, inside a
    ``lax.scan`` whose carry is the input (layers scanned, as models do): equal to the
    float32 route's up to bf16 rounding, not zero. A ``custom_jvp`` whose value route is
    not itself differentiable (windows stacked as integer bits, tried for their memory)
    loses its rule there: JAX's partial evaluation of the scan inlines the value route."""
    x, k, got, wide = _widened_rows_problem(8)

    def scanned(f):
        def kernel_grad(x):
            loss = lambda k, x: jnp.sum(f(x.astype(jnp.bfloat16), k).astype(jnp.float32) ** 2)
            return jax.grad(loss)(k, x).astype(jnp.float32)

        def body(carry, scale):
            total, x = carry
            return (total + jnp.sum(kernel_grad(x * scale) ** 2), x), None

        return lambda x: jax.lax.scan(body, (0.0, x), jnp.arange(1.0, 3.0))[0][0]

    x = x.astype(jnp.float32)
    tangent = jax.jvp(jax.grad(scanned(got)), (x,), (x,))[1]
    expected = jax.jvp(jax.grad(scanned(wide)), (x,), (x,))[1]
    scale = float(jnp.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(tangent, expected, rtol=0, atol=2**-5 * scale)


SLICED_ROWS = [  # (input shape, window, strides, padding, data format, filters)
    ((3, 12, 11, 4), (3, 2), (2, 1), "valid", "channels_last", 5),
    ((2, 3, 9, 9, 6), (3, 3, 3), 1, "same", "channels_first", 3),  # 27 offsets: by axis
    ((1, 40, 7), 5, 3, "causal", "channels_last", 6),  # one row, 1-D
    ((4, 30, 9), 1, 1, "valid", "channels_last", 2),  # 1-wide windows
]


@pytest.mark.parametrize("shape, ks, st, pad, fmt, filters", SLICED_ROWS, ids=str)
def test_slices_derivatives_take_the_kernel_gradient_by_rows(shape, ks, st, pad, fmt, filters):
    """With at most 16 rows (and no dominant kernel), the "slices" derivative route takes
    its kernel gradient from ``tiles.rows_kernel_tangent`` (no ``dot_general`` writes a
    kernel-shaped result) and gives plain "slices"' values, gradients and forward-mode
    derivatives."""
    from jlocalconv.implementations.slices import local_conv_slices

    geom = make_geometry(shape, ks, st, pad, data_format=fmt)
    batch = shape[0]
    assert tiles_module.sliced_kernel_tangent_by_rows(geom, batch, filters, 4)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    k = jnp.asarray(rng.standard_normal(geom.kernel_shape(filters)), jnp.float32)
    w = jnp.asarray(rng.standard_normal(geom.result_shape(batch, filters)), jnp.float32)
    route = implementations.lookup("slices/slices")
    ours = lambda x, k: route(x, k, geom, precision="highest", preferred_element_type=None)
    plain = lambda x, k: local_conv_slices(x, k, geom, precision="highest")
    loss = lambda f: lambda x, k: jnp.vdot(f(x, k), w)
    got, got_grads = jax.jit(jax.value_and_grad(loss(ours), (0, 1)))(x, k)
    want, want_grads = jax.jit(jax.value_and_grad(loss(plain), (0, 1)))(x, k)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for got, want in zip(got_grads, want_grads):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    tangents = (x[::-1], k[::-1])
    got, want = (jax.jit(jax.jvp, static_argnums=0)(f, (x, k), tangents)[1] for f in (ours, plain))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    jaxpr = jax.make_jaxpr(jax.grad(loss(ours), 1))(x, k).jaxpr
    dots = [e for e in _equations(jaxpr) if e.primitive.name == "dot_general"]
    assert not any(v.aval.shape == k.shape for e in dots for v in e.outvars)


def test_slices_derivatives_keep_the_contraction_where_the_kernel_dominates():
    """YOLOv1's local layer (8 rows, 256 filters): the kernel gradient stays one
    contraction per position (the rows' products held twice the temporaries there); the
    inputs' gradient goes kernel first, hence the composite name."""
    geom = make_geometry((8, 7, 7, 1024), 3, padding="same")
    assert tiles_module.kernel_tangent_by_rows(geom, 8, 4)
    assert not tiles_module.sliced_kernel_tangent_by_rows(geom, 8, 256, 4)
    assert slices_module.kernel_major_inputs_gradient(8, 256)
    assert choose(geom, 8, 256, jnp.float32, "cpu") == "slices/slices"


@pytest.mark.parametrize(
    "shape, ks, strides, filters, fmt",
    [
        ((3, 6, 20, 20), (5, 8), (1, 2), 26, "channels_last"),  # 2-D, by axis too
        ((2, 20, 11, 9, 7), (2, 3, 2), 1, 40, "channels_first"),  # 3-D
        ((4, 30, 20), 3, 2, 64, "channels_last"),  # 1-D, strided
    ],
)
def test_inputs_gradient_kernel_first_matches_the_reference(shape, ks, strides, filters, fmt):
    """Where filters outnumber rows "slices" derivatives take the inputs' gradient
    kernel first (``slices.kernel_major_inputs_gradient``): "auto"'s values, gradients,
    forward-mode derivatives and batched gradients must match the float64 reference and
    "patches", and the transposed program must hold the kernel-first product behind its
    barrier."""
    geom = make_geometry(shape, ks, strides, data_format=fmt)
    assert slices_module.kernel_major_inputs_gradient(shape[0], filters)
    name = choose(geom, shape[0], filters, jnp.float32, "cpu")
    assert name.endswith("slices")
    rng = np.random.default_rng(3)
    x, dx = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    k, dk = (rng.standard_normal(geom.kernel_shape(filters)).astype(np.float32) for _ in range(2))
    w = rng.standard_normal(geom.result_shape(shape[0], filters)).astype(np.float32)
    ref = lambda x, k: local_conv_ref(x, k, geom.kernel_size, geom.strides, fmt)
    run = implementations.lookup(name)
    op = jax.jit(lambda x, k: run(x, k, geom, precision="highest", preferred_element_type=None))
    np.testing.assert_allclose(op(x, k), ref(x, k), rtol=1e-5, atol=1e-4)
    gx, gk = _grads(op, x, k, w)
    # <f(x, k), w> is bilinear: <grad_x, dx> = <f(dx, k), w>, <grad_k, dk> = <f(x, dk), w>
    np.testing.assert_allclose(np.vdot(gx, dx), np.vdot(ref(dx, k), w), rtol=1e-4)
    np.testing.assert_allclose(np.vdot(gk, dk), np.vdot(ref(x, dk), w), rtol=1e-4)
    patches = lambda x, k: IMPLEMENTATIONS["patches"](x, k, geom, precision="highest")
    for ours, theirs in zip((gx, gk), _grads(patches, x, k, w)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    forward = jax.jvp(op, (x, k), (dx, np.zeros_like(k)))[1]
    np.testing.assert_allclose(forward, ref(dx, k), rtol=1e-5, atol=1e-4)
    grad_x = lambda w: jax.grad(lambda x: jnp.sum(op(x, k) * w))(x)
    batched = jax.vmap(grad_x)(np.stack([w, -2 * w]))  # through the barrier's batching
    np.testing.assert_allclose(batched, np.stack([gx, -2 * gx]), rtol=1e-5, atol=1e-4)
    program = jax.jit(jax.grad(lambda x: jnp.sum(op(x, k) * w))).lower(x).as_text()
    assert "optimization_barrier" in program


@pytest.mark.parametrize(
    "shape, ks, strides, pad, fmt",
    [
        ((3, 24, 22, 1), (5, 5), 1, "valid", "channels_last"),  # 22 columns -> 18
        ((2, 2, 9, 9, 6), (3, 3, 3), 1, "same", "channels_first"),  # 27 offsets, 3-D
        ((5, 10, 21, 2), (8, 8), (2, 3), "valid", "channels_last"),  # strided, small
        ((2, 3, 7, 10, 4), (2, 8, 3), (1, 2, 1), "same", "channels_first"),  # 3-D, strided
        ((4, 9, 11, 3), (3, 3), (1, 2), "same", "channels_last"),  # 9 offsets, small
    ],
)
def test_slices_tangent_by_axis_matches_the_one_shot_route(shape, ks, strides, pad, fmt):
    """Windows of many offsets, unstrided or small: the tangent route stacks them axis
    by axis (``_windows.sliced_by_axis``) and must give the one-shot route's values,
    gradients and forward-mode derivatives."""
    from jlocalconv.implementations.slices import local_conv_slices, slices_tangent

    geom = make_geometry(shape, ks, strides, pad, data_format=fmt)
    assert sliced_by_axis(geom, shape[0], 4)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    k = jnp.asarray(rng.standard_normal(geom.kernel_shape(3)), jnp.float32)
    w = jnp.asarray(rng.standard_normal(geom.result_shape(shape[0], 3)), jnp.float32)
    ours = jax.jit(lambda x, k: slices_tangent(x, k, geom, precision="highest"))
    one_shot = jax.jit(lambda x, k: local_conv_slices(x, k, geom, precision="highest"))
    np.testing.assert_array_equal(ours(x, k), one_shot(x, k))
    for a, b in zip(_grads(ours, x, k, w), _grads(one_shot, x, k, w)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    tangents = (jnp.ones_like(x), jnp.ones_like(k))
    forward = [jax.jvp(f, (x, k), tangents)[1] for f in (ours, one_shot)]
    np.testing.assert_allclose(*forward, rtol=1e-5, atol=1e-4)


def test_strided_windows_go_axis_by_axis_only_while_their_last_stage_is_small():
    """Strided windows hold their last stage's padded slices in the backward pass (about
    input per output times the window tensor): axis by axis up to
    ``SLICED_BY_AXIS_MAX_STAGE_BYTES`` of it, one shot beyond; unstrided ones always."""
    from jlocalconv.implementations import _windows

    strided = make_geometry((1, 10, 21, 2), (8, 8), (2, 3))  # 2 x 5 outputs of 128 features
    full = _windows.padded(strided)
    last = _windows._stage_order(full)[-1]
    ratio = full.spatial_shape[last] / full.output_shape[last]
    assert ratio > _windows.SLICED_BY_AXIS_MAX_INPUT_PER_OUTPUT
    row_bytes = ratio * _windows.window_bytes(strided, 1, 4)
    fits = int(_windows.SLICED_BY_AXIS_MAX_STAGE_BYTES // row_bytes)
    assert sliced_by_axis(strided, fits, 4) and not sliced_by_axis(strided, fits + 1, 4)
    assert sliced_by_axis(make_geometry((4096, 28, 28, 1), 5), 4096, 4)  # unstrided


def test_slices_tangent_by_axis_holds_less_than_the_one_shot_stack(monkeypatch):
    """The suite's mnist5x5 (32x28x28x1, 5x5, 8 filters): the axis-by-axis tangent route
    held 4.6 MiB of XLA temporaries in value_and_grad against 5.8 MiB for the one-shot
    stack transposed positions first, which is what lax holds (compile only; nothing
    runs). (With slices moved positions first, the one-shot stack's values hold 3.5 MiB
    now, the axis-by-axis route 3.8.)"""
    from jlocalconv.implementations.slices import local_conv_slices, slices_tangent

    monkeypatch.setattr(implementations_module._windows, "POSITIONS_FIRST_PRIMAL_WINDOWS", False)

    geom = make_geometry((32, 28, 28, 1), 5)
    x = jax.ShapeDtypeStruct((32, 28, 28, 1), jnp.float32)
    k = jax.ShapeDtypeStruct(geom.kernel_shape(8), jnp.float32)

    def temp(f):
        loss = lambda x, k: jnp.sum(f(x, k, geom) ** 2)
        compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(x, k).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert temp(slices_tangent) < temp(local_conv_slices) - (512 << 10)


@pytest.mark.parametrize("channels_last", [True, False])
def test_differentiated_slices_windows_are_written_once_positions_first(monkeypatch, channels_last):
    """The suite's stride2 (128x12x12x16, 3x3 stride 2: 9 offsets, a stack XLA does not
    fuse): value_and_grad of "slices" moves each slice positions first and stacks them as
    one loop (``_windows.POSITIONS_FIRST_PRIMAL_WINDOWS``), the same numbers as the
    transposed stack, and holds over 1 MiB less (compile only for the memory)."""
    shape = (128, 12, 12, 16) if channels_last else (128, 16, 12, 12)
    fmt = "channels_last" if channels_last else "channels_first"
    geom = make_geometry(shape, 3, 2, data_format=fmt)
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(np.float32)
    k = rng.standard_normal(geom.kernel_shape(16)).astype(np.float32)
    f = IMPLEMENTATIONS["slices"]
    loss = lambda x, k: jnp.sum(
        f(x, k, geom, precision="highest", preferred_element_type=None) ** 2
    )
    step = jax.value_and_grad(loss, argnums=(0, 1))

    def run(flag):
        monkeypatch.setattr(implementations_module._windows, "POSITIONS_FIRST_PRIMAL_WINDOWS", flag)
        compiled = jax.jit(lambda x, k: step(x, k)).lower(x, k).compile()  # traced anew
        return compiled(x, k), compiled.memory_analysis().temp_size_in_bytes

    (got, got_temp), (want, want_temp) = run(True), run(False)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-4)
    assert got_temp < want_temp - (1 << 20)


def test_the_loop_differentiates_a_problem_of_one_tile():
    """Where the tile plan is one tile over windows of 2+ offsets that "slices" would
    differentiate as they are (``tiles._one_tile_loop``), derivatives go by the loop,
    values stay with "slices"; a single offset, several tiles, the kernel gradient by
    rows or an axis-by-axis stack keep "slices" derivatives. Both give the same numbers."""
    # sweep s54-27: 72 rows of 1x24x6x5 inputs, 1x8x5 windows (40 offsets), 31 filters
    geom = make_geometry((72, 1, 24, 6, 5), (1, 8, 5), (3, 1, 3))
    assert tiles_module.plan_tiles(geom, 72, 31, 4).counts(geom) == (1,)
    assert choose(geom, 72, 31, jnp.float32, "cpu") == "slices/tiles"
    assert choose(geom, 8, 31, jnp.float32, "cpu") == "slices/slices"  # 8 rows: by rows
    wider = make_geometry((72, 1, 24, 12, 5), (1, 8, 5), (3, 1, 3))  # 17 tiles
    assert tiles_module.plan_tiles(wider, 72, 31, 4).counts(wider) == (1, 17)
    assert choose(wider, 72, 31, jnp.float32, "cpu") == "slices"
    taller = make_geometry((72, 1, 40, 6, 5), (1, 8, 5), (3, 1, 3))  # stacked axis by axis
    assert sliced_by_axis(taller, 72, 4) and not tiles_module._one_tile_loop(taller, 72, 31, 4)
    single = make_geometry((20, 1, 24, 6, 40), 1, (3, 1, 3))  # one offset
    assert tiles_module.plan_tiles(single, 20, 31, 4).counts(single) == (1,)
    assert choose(single, 20, 31, jnp.float32, "cpu") == "slices"
    # The same values and gradients as "slices".
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(geom.input_shape(72)), jnp.float32)
    k = jnp.asarray(rng.standard_normal(geom.kernel_shape(31)), jnp.float32)

    def loss(name):
        def f(x, k):
            y = jlocalconv.local_conv(x, k, (1, 8, 5), (3, 1, 3), implementation=name)
            return jnp.sum(y * jnp.cos(y))

        return jax.value_and_grad(f, (0, 1))(x, k)

    (got, (gx, gk)), (want, (wx, wk)) = loss("auto"), loss("slices")
    np.testing.assert_allclose(got, want, rtol=1e-4)
    np.testing.assert_allclose(gx, wx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gk, wk, rtol=1e-4, atol=1e-4)


def test_loop_derivatives_take_whole_rows_where_values_split_them(monkeypatch):
    """Where the values' plan splits the innermost output axis, the loop's derivatives
    tile whole rows (``tiles.derivative_plan``, within ``ROW_TILE_MAX_BYTES`` and the
    memory bound); values and both gradients still equal "slices"'."""
    geom = make_geometry((8, 8, 8, 256), 3)  # 6 x 6 positions, 2.5 MiB of windows
    assert plan_tiles(geom, 8, 2, 4) == TilePlan(1, 3)  # half a row per tile
    assert tiles_module.derivative_plan(geom, 8, 2, 4) == TilePlan(0, 1)  # whole rows
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.standard_normal(geom.input_shape(8)), jnp.float32)
    k = jnp.asarray(rng.standard_normal(geom.kernel_shape(2)), jnp.float32)
    g = jnp.asarray(rng.standard_normal(geom.result_shape(8, 2)), jnp.float32)

    def value_and_grads(impl):
        loss = lambda x, k: jnp.sum(impl(x, k, geom) * g)
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, k)

    got, want = value_and_grads(local_conv_tiles), value_and_grads(local_conv_slices)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-3)
    # A row over the byte bound keeps the values' plan (6 positions' working set)
    row = 6 * tiles_module.position_bytes(geom, 8, 2, 4)
    monkeypatch.setattr(tiles_module, "ROW_TILE_MAX_BYTES", row - 1)
    assert tiles_module.derivative_plan(geom, 8, 2, 4) == TilePlan(1, 3)
    monkeypatch.setattr(tiles_module, "ROW_TILE_MAX_BYTES", row)
    assert tiles_module.derivative_plan(geom, 8, 2, 4) == TilePlan(0, 1)
