"""The products derivative route ("shifts" where the result outweighs few-feature windows):
gradients against the NumPy reference and "patches", autodiff of any order (also inside
a scan), bf16, when "shifts" takes it, and the result-sized copies it avoids."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import CF, Case
from jax.test_util import check_grads
from reference import local_conv_ref

import jlocalconv
from jlocalconv.geometry import make_geometry
from jlocalconv.implementations import products, shifts
from jlocalconv.implementations.patches import local_conv_patches
from jlocalconv.implementations.products import derivatives_by_products, differentiated_by_products

CASES = [  # every rank and format, strides, dilation, padding; 1-8 features
    Case((11,), 2, 5, (3,), (2,), padding="causal"),
    Case((9, 8), 2, 4, (2, 2), (1, 2), padding="same"),
    Case((7, 9), 1, 3, (3, 2), (2, 1), dilation=(2, 1), data_format=CF),
    Case((5, 6, 4), 1, 3, (2, 2, 2), (1, 2, 1), batch=3),
    Case((6, 5, 4), 2, 2, (1, 2, 2), (1, 1, 1), padding="same", data_format=CF),
]


def _route(case: Case, out_dtype=jnp.float32):
    """The products route with "shifts"' values, forced whatever its bounds say."""
    geom = case.geometry()
    values = functools.partial(shifts._shift_accumulate, geom=geom, out_dtype=out_dtype)
    return differentiated_by_products(values, geom)


def _ref(case: Case, x, k):
    return local_conv_ref(x, k, case.kernel_size, case.strides, case.data_format,
                          case.padding, case.dil)  # fmt: skip


def _patches(case: Case):
    geom = case.geometry()
    return lambda x, k: local_conv_patches(x, k, geom, precision="highest")


def _grads(f, x, k, w):
    return jax.jit(jax.grad(lambda x, k: jnp.sum(f(x, k) * w), argnums=(0, 1)))(x, k)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_products_route_matches_the_reference(case):
    x, k, _ = case.arrays()
    dx, dk, _ = case.arrays(seed=4)
    f = _route(case)
    want = _ref(case, x, k)
    np.testing.assert_allclose(jax.jit(f)(x, k), want, rtol=1e-5, atol=1e-5)
    w = np.random.default_rng(1).standard_normal(want.shape).astype(np.float32)
    gx, gk = _grads(f, x, k, w)
    # <f(x, k), w> is bilinear: <grad_x, dx> = <f(dx, k), w>, <grad_k, dk> = <f(x, dk), w>.
    np.testing.assert_allclose(np.vdot(gx, dx), np.vdot(_ref(case, dx, k), w), rtol=1e-4)
    np.testing.assert_allclose(np.vdot(gk, dk), np.vdot(_ref(case, x, dk), w), rtol=1e-4)
    px, pk = _grads(_patches(case), x, k, w)
    np.testing.assert_allclose(gx, px, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gk, pk, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES[1:4], ids=str)
def test_products_route_differentiates_to_second_order_both_modes(case):
    x, k, _ = case.arrays()
    # Under jit: each derivative program compiles once, not op by op.
    route = jax.jit(_route(case))
    check_grads(route, (x, k), order=2, modes=("fwd", "rev"), atol=1e-2, rtol=1e-2)


def test_products_route_second_order_inside_a_scan_equals_the_contractions():
    """A scan whose carry is the input (layers scanned) partially evaluates the route's
    custom_jvp per iteration: second order must still be the op's, not lost."""
    case = CASES[1]
    x, k, _ = case.arrays()

    def scanned(f):
        def body(carry, scale):
            total, x = carry
            gk = jax.grad(lambda k: jnp.sum(f(x * scale, k) ** 2))(k)
            return (total + jnp.sum(gk**2), x), None

        return lambda x: jax.lax.scan(body, (0.0, x), jnp.arange(1.0, 3.0))[0][0]

    got = jax.jvp(jax.grad(scanned(_route(case))), (x,), (x,))[1]
    want = jax.jvp(jax.grad(scanned(_patches(case))), (x,), (x,))[1]
    assert float(jnp.abs(want).max()) > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))


# 64 rows of 30x30 3-channel inputs, 2x1 windows (6 features), 64 filters: 14 MiB of result
HEAVY = (64, 30, 30, 3), (2, 1), 64


def _heavy_arrays(dtype=jnp.float32):
    shape, window, filters = HEAVY
    geom = make_geometry(shape, window)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), dtype)
    k = jnp.asarray(rng.standard_normal(geom.kernel_shape(filters)) / 3, dtype)
    return geom, x, k


def _dots_in_gradient(geom, x, k) -> int:
    f = lambda x, k: jnp.sum(shifts.local_conv_shifts(x, k, geom) ** 2)
    jaxpr = jax.make_jaxpr(jax.grad(f, (0, 1)))(x, k)
    return str(jaxpr).count("dot_general")


def test_shifts_differentiates_result_heavy_problems_by_products(monkeypatch):
    """Within the bounds, "shifts"' gradient has no contraction at all (and "auto" picks
    "shifts" there); with the feature bounds at 0 it is "slices"' batched dots again."""
    geom, x, k = _heavy_arrays()
    assert derivatives_by_products(geom, 64, 64)
    assert jlocalconv.implementations.choose(geom, 64, 64, "float32", "cpu") == "shifts"
    assert _dots_in_gradient(geom, x, k) == 0
    monkeypatch.setattr(products, "PRODUCTS_MAX_FEATURES", 0)
    monkeypatch.setattr(products, "PRODUCTS_LARGE_MAX_FEATURES", 0)
    assert _dots_in_gradient(geom, x, k) > 0


def test_windows_of_more_features_take_products_only_over_large_results():
    """9 features (3x1 windows of 3 channels): products over a 13 MiB result (no
    contraction in the gradient), the contractions over a 3.3 MiB one (16 filters)."""
    geom = make_geometry((64, 30, 30, 3), (3, 1))
    assert geom.feature_dim == 9 > products.PRODUCTS_MAX_FEATURES
    x = jnp.ones(geom.input_shape(64))
    for filters, by_products in ((64, True), (16, False)):
        assert 4 * 64 * geom.output_items * filters >= products.PRODUCTS_MIN_RESULT_BYTES
        assert derivatives_by_products(geom, 64, filters) is by_products
        k = jnp.ones(geom.kernel_shape(filters))
        assert (_dots_in_gradient(geom, x, k) == 0) is by_products


def test_products_route_holds_under_half_of_lax_temp_memory_and_no_result_copy():
    """value_and_grad of ``sum(f * g)`` (the bench's loss; compile only, nothing runs):
    lax and the contractions hold result-sized copies of the values and of the
    cotangent in their layout (29.6 MiB here, the result 13.1), the products under half
    of one result (6.2 MiB)."""
    geom, x, k = _heavy_arrays()
    result_bytes = 4 * 64 * geom.output_items * 64
    g = jax.ShapeDtypeStruct(geom.result_shape(64, 64), jnp.float32)

    def temp(f, kernel):
        loss = lambda x, k, g: jnp.sum(f(x, k) * g)
        compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(x, kernel, g).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    ours = temp(lambda x, k: shifts.local_conv_shifts(x, k, geom), k)
    k_lax = k.reshape(*geom.output_shape, geom.feature_dim, -1)
    lax_dn = ("NHWC", "HWIO", "NHWC")
    theirs = temp(lambda x, k: jax.lax.conv_general_dilated_local(
        x, k, (1, 1), "VALID", (2, 1), dimension_numbers=lax_dn), k_lax)  # fmt: skip
    assert theirs >= result_bytes  # lax holds at least one result-sized copy
    assert ours <= theirs / 2, (ours, theirs)
    assert ours <= result_bytes / 2


def test_widened_bf16_products_match_the_float32_route():
    """bf16 operands (computed in float32 on CPU by "auto"): the products' gradients
    equal float32's, rounded once to bf16."""
    geom, x, k = _heavy_arrays(jnp.bfloat16)
    assert derivatives_by_products(geom, 64, 64, jnp.bfloat16)

    def grads(x, k):
        f = lambda x, k: jnp.sum(jlocalconv.local_conv(x, k, (2, 1), 1).astype(jnp.float32) ** 2)
        return jax.jit(jax.grad(f, (0, 1)))(x, k)

    got = grads(x, k)
    wide = grads(x.astype(jnp.float32), k.astype(jnp.float32))
    for g, w in zip(got, wide):
        assert g.dtype == jnp.bfloat16
        scale = float(jnp.abs(w).max())
        np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=2**-7, atol=2**-7 * scale)


def test_autotune_times_products_only_where_shifts_takes_them():
    """A derivative candidate of autotune's on CPU exactly where "shifts" takes it, timed
    (and composed) as "shifts/products": the same op as "shifts" there."""
    from jlocalconv import autotune, implementations

    geom, x, k = _heavy_arrays()
    problem = autotune.Problem(geom, 64, 64, "float32", "float32", None, None)
    assert "products" in autotune.derivative_candidates("cpu", problem)
    assert "products" not in autotune.derivative_candidates("gpu", problem)
    few_filters = autotune.Problem(geom, 64, 8, "float32", "float32", None, None)
    assert "products" not in autotune.derivative_candidates("cpu", few_filters)
    composed = implementations.composed("shifts", "products")
    f = lambda impl: lambda x, k: jnp.sum(
        impl(x, k, geom, precision=None, preferred_element_type=None) ** 2)  # fmt: skip
    got = jax.jit(jax.grad(f(composed), (0, 1)))(x, k)
    want = jax.jit(jax.grad(f(shifts.local_conv_shifts), (0, 1)))(x, k)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_products_take_16_bit_operands_as_they_are():
    """bf16 operands taken as they are (no widening, as off CPU): bf16 gradients, within
    a bf16 rounding of the float32 route's over sums of 128 terms. (XLA:CPU computes bf16
    arithmetic in float32 anyway, so on CPU this cannot tell the accumulator apart.)"""
    case = Case((9, 8), 2, 128, (2, 1), (1, 1), batch=128)  # sums of 128 rows and filters
    x, k, _ = case.arrays()
    bf16 = lambda a: jnp.asarray(a, jnp.bfloat16)

    def grads(dtype):
        f = _route(case, out_dtype=dtype)
        loss = lambda x, k: jnp.sum(f(x, k).astype(jnp.float32) ** 2)
        return jax.jit(jax.grad(loss, (0, 1)))

    got = grads(jnp.bfloat16)(bf16(x), bf16(k))
    want = grads(jnp.float32)(bf16(x).astype(jnp.float32), bf16(k).astype(jnp.float32))
    for g, w in zip(got, want):
        assert g.dtype == jnp.bfloat16
        scale = float(jnp.abs(w).max())
        np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=2**-6, atol=2**-6 * scale)
