"""Numerical agreement with the NumPy reference and with jax.lax, on every geometry."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import CASES, CF
from reference import local_conv_ref

import jlocalconv
from jlocalconv.implementations import names

IMPLS = names()


def _run(case, x, k, b, **kw):
    return jlocalconv.local_conv(
        x, k, case.kernel_size, case.strides, None, case.data_format, bias=b, **case.kwargs(), **kw
    )


@pytest.mark.parametrize("implementation", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_numpy_reference(case, implementation):
    x, k, b = case.arrays()
    got = _run(case, x, k, b, implementation=implementation)
    want = local_conv_ref(x, k, case.kernel_size, case.strides, case.data_format,
                          case.padding, case.dil, b)  # fmt: skip
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def _to_lax_kernel(case, k):
    """Our kernel -> lax.conv_general_dilated_local's, with rhs spec '<spatial>IO'.

    lax's I dimension is ordered "C" + spatial letters, i.e. (C, k...).
    """
    n = len(case.spatial)
    p, _, f = k.shape
    if case.data_format == CF:
        k_cmajor = k
    else:
        k_cmajor = k.reshape(p, *case.kernel_size, case.channels, f)
        k_cmajor = np.moveaxis(k_cmajor, n + 1, 1).reshape(p, -1, f)
    return k_cmajor.reshape(*case.output_shape, -1, f)


def _lax_specs(case):
    sp = "DHW"[-len(case.spatial) :]
    lhs = "N" + sp + "C" if case.data_format != CF else "NC" + sp
    return (lhs, sp + "IO", lhs)


@pytest.mark.parametrize("case", [c for c in CASES if c.padding != "causal"], ids=str)
def test_matches_lax_conv_general_dilated_local(case):
    x, k, _ = case.arrays(seed=1)
    from jlocalconv.geometry import normalize_padding

    pads = normalize_padding(case.padding, case.spatial, case.kernel_size, case.strides, case.dil)
    want = jax.lax.conv_general_dilated_local(
        x,
        _to_lax_kernel(case, k),
        window_strides=case.strides,
        padding=pads,
        filter_shape=case.kernel_size,
        rhs_dilation=case.dil,
        dimension_numbers=_lax_specs(case),
        precision=jax.lax.Precision.HIGHEST,
    )
    got = _run(case, x, k, None)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES[::3], ids=str)
def test_jit_equals_eager(case):
    x, k, b = case.arrays()
    eager = _run(case, x, k, b)
    jitted = jax.jit(lambda x, k, b: _run(case, x, k, b))(x, k, b)
    np.testing.assert_array_equal(np.asarray(eager), np.asarray(jitted))


@pytest.mark.parametrize("case", CASES[::3], ids=str)
def test_vmap_over_batch_and_over_kernels(case):
    x, k, b = case.arrays()
    full = _run(case, x, k, b)
    # vmap over the batch: each example as a batch of one.
    per_example = jax.vmap(lambda xi: _run(case, xi[None], k, b)[0])(x)
    np.testing.assert_allclose(per_example, full, rtol=1e-6, atol=1e-6)
    # vmap over an ensemble of kernels.
    ks = jnp.stack([k, 2 * k, -k])
    ens = jax.vmap(lambda kk: _run(case, x, kk, None))(ks)
    no_bias = _run(case, x, k, None)
    np.testing.assert_allclose(ens, np.stack([no_bias, 2 * no_bias, -no_bias]), rtol=1e-5,
                               atol=1e-5)  # fmt: skip


def test_local_conv1d_and_2d_match_generic():
    case = CASES[1]
    x, k, b = case.arrays()
    got = jlocalconv.local_conv1d(x, k, case.kernel_size, case.strides, case.data_format, bias=b)
    np.testing.assert_array_equal(got, _run(case, x, k, b))
    case = CASES[6]
    x, k, b = case.arrays()
    got = jlocalconv.local_conv2d(x, k, case.kernel_size, case.strides, case.output_shape,
                                  case.data_format, bias=b)  # fmt: skip
    np.testing.assert_array_equal(got, _run(case, x, k, b))
    case = CASES[-2]
    x, k, b = case.arrays()
    got = jlocalconv.local_conv3d(x, k, case.kernel_size, case.strides, None, case.data_format,
                                  bias=b)  # fmt: skip
    np.testing.assert_array_equal(got, _run(case, x, k, b))


def test_zero_batch_gives_empty_result():
    case = CASES[5]
    _, k, _ = case.arrays()
    x = np.zeros((0, *case.input_shape[1:]), np.float32)
    out = _run(case, x, k, None)
    assert out.shape == (0, *case.output_shape, case.filters)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_with_f32_accumulation(dtype):
    case = CASES[6]
    x, k, b = case.arrays()
    xl, kl = jnp.asarray(x, dtype), jnp.asarray(k, dtype)
    out = _run(case, xl, kl, b, preferred_element_type=jnp.float32)
    assert out.dtype == jnp.float32
    want = local_conv_ref(np.asarray(xl, np.float32), np.asarray(kl, np.float32),
                          case.kernel_size, case.strides, case.data_format, case.padding,
                          case.dil, b)  # fmt: skip
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    out_low = _run(case, xl, kl, None)
    assert out_low.dtype == dtype


def test_keras_order_differs_between_formats():
    """The same kernel read in the two formats gives different results unless reordered:
    guards against an implementation silently using one order for both."""
    rng = np.random.default_rng(0)
    x_cl = rng.standard_normal((1, 4, 4, 2)).astype(np.float32)
    x_cf = np.moveaxis(x_cl, -1, 1)
    k = rng.standard_normal((4, 3 * 3 * 2, 1)).astype(np.float32)
    out_cl = jlocalconv.local_conv(x_cl, k, 3, 1)
    out_cf = jlocalconv.local_conv(x_cf, k, 3, 1, data_format="channels_first")
    assert not np.allclose(np.moveaxis(np.asarray(out_cf), 1, -1), out_cl)
    # Reordering feature_dim (k, k, C) -> (C, k, k) makes them agree.
    k_cf = k.reshape(4, 3, 3, 2, 1).transpose(0, 3, 1, 2, 4).reshape(4, 18, 1)
    out_cf2 = jlocalconv.local_conv(x_cf, k_cf, 3, 1, data_format="channels_first")
    np.testing.assert_allclose(np.moveaxis(np.asarray(out_cf2), 1, -1), out_cl, rtol=1e-5)
