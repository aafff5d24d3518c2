"""local_conv_transpose: the exact adjoint of local_conv in its input.

Checked against an independent float64 NumPy loop written from the definition (every output
position scatters ``y[p] @ kernel[p].T`` into the window it read), the adjoint identity,
``jax.linear_transpose`` and ``jax.vjp`` of ``local_conv``, and under every transformation.
Random geometries are covered by the hypothesis property in tests/test_properties.py.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import CASES, CF, CL, Case
from reference import resolve_padding
from strategies import Problem
from tolerances import assert_close

import jlocalconv

CASE_IDS = [str(c) for c in CASES]


def transpose_ref(outputs, kernel, case: Case) -> np.ndarray:
    """The adjoint by explicit loops in float64, in ``case``'s data format."""
    y, w = np.asarray(outputs, np.float64), np.asarray(kernel, np.float64)
    ks, st, dil = case.kernel_size, case.strides, case.dil
    if case.data_format == CF:
        y = np.moveaxis(y, 1, -1)  # (B, *out, F)
    pads = resolve_padding(case.padding, case.spatial, ks, st, dil)
    batch, channels = y.shape[0], w.shape[1] // math.prod(ks)
    padded = np.zeros((batch, *(s + lo + hi for s, (lo, hi) in zip(case.spatial, pads)), channels))
    for p, pos in enumerate(itertools.product(*map(range, y.shape[1:-1]))):
        grad = y[(slice(None), *pos, slice(None))] @ w[p].T  # (B, feature_dim)
        if case.data_format == CF:  # features (C, k...)
            window = np.moveaxis(grad.reshape(batch, channels, *ks), 1, -1)
        else:  # features (k..., C)
            window = grad.reshape(batch, *ks, channels)
        idx = [pos[i] * st[i] + dil[i] * np.arange(ks[i]) for i in range(len(ks))]
        padded[(slice(None), *np.ix_(*idx), slice(None))] += window  # distinct taps
    crop = tuple(slice(lo, lo + s) for s, (lo, _) in zip(case.spatial, pads))
    x = padded[(slice(None), *crop, slice(None))]
    return np.moveaxis(x, -1, 1) if case.data_format == CF else x


def _arrays(case: Case, seed=0, dtype=np.float32):
    x, k, _ = case.arrays(seed, dtype)
    y = np.random.default_rng(seed + 1).standard_normal(_result(case))
    return x, k, y.astype(dtype)


def _result(case: Case):
    f, out = case.filters, case.output_shape
    shape = (*out, f) if case.data_format == CL else (f, *out)
    return (case.batch, *shape)


def _transpose(y, k, case: Case, **kwargs):
    return jlocalconv.local_conv_transpose(
        y, k, case.kernel_size, case.strides, case.spatial, case.data_format,
        **case.kwargs(), **kwargs,
    )  # fmt: skip


def _forward(x, k, case: Case, **kwargs):
    return jlocalconv.local_conv(
        x, k, case.kernel_size, case.strides, None, case.data_format, **case.kwargs(), **kwargs
    )


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_the_float64_loop_reference(case):
    _, k, y = _arrays(case)
    got = _transpose(y, k, case)
    assert got.shape == case.input_shape and got.dtype == jnp.float32
    scale = transpose_ref(np.abs(y), np.abs(k), case)
    assert_close(got, transpose_ref(y, k, case), scale, "float32", what="transpose")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_is_the_exact_adjoint_in_float64(case):
    """<local_conv(x, k), y> == <x, local_conv_transpose(y, k)> up to float64 rounding."""
    with jax.enable_x64(True):
        x, k, y = _arrays(case, dtype=np.float64)
        lhs = float(jnp.vdot(Problem(case, "float64").apply(x, k), y))
        rhs = float(jnp.vdot(x, _transpose(y, k, case)))
    scale = float(np.abs(x).ravel() @ transpose_ref(np.abs(y), np.abs(k), case).ravel())
    assert abs(lhs - rhs) <= 1e-13 * scale, (lhs, rhs)


@pytest.mark.parametrize("case", CASES[::3], ids=CASE_IDS[::3])
def test_agrees_with_jax_linear_transpose_and_vjp(case):
    x, k, y = _arrays(case)
    f = lambda x: _forward(x, k, case)
    by_linear_transpose = jax.jit(jax.linear_transpose(f, jax.ShapeDtypeStruct(x.shape, x.dtype)))
    by_vjp = jax.jit(lambda y: jax.vjp(f, jnp.zeros_like(x))[1](y))
    (by_linear_transpose,), (by_vjp,) = by_linear_transpose(y), by_vjp(y)
    got = _transpose(y, k, case)
    scale = transpose_ref(np.abs(y), np.abs(k), case)
    for name, want in [("linear_transpose", by_linear_transpose), ("vjp", by_vjp)]:
        assert_close(got, want, scale, "float32", both_approximate=True, what=name)


@pytest.mark.parametrize(
    ("fn", "case"),
    [
        (jlocalconv.local_conv1d_transpose, CASES[1]),
        (jlocalconv.local_conv2d_transpose, CASES[6]),
        (jlocalconv.local_conv3d_transpose, CASES[15]),
    ],
)
def test_fixed_rank_forms_equal_the_general_one(fn, case):
    _, k, y = _arrays(case)
    got = fn(y, k, case.kernel_size, case.strides, case.spatial, case.data_format,
             **case.kwargs())  # fmt: skip
    np.testing.assert_array_equal(got, _transpose(y, k, case))


CASE = Case((7, 6), 2, 3, (3, 2), (2, 1), padding=((1, 0), (0, 2)), dilation=(1, 2))


def test_jit_and_vmap():
    _, k, y = _arrays(CASE)
    want = np.asarray(_transpose(y, k, CASE))
    static = ("kernel_size", "strides", "input_shape", "padding", "dilation")
    jitted = jax.jit(jlocalconv.local_conv_transpose, static_argnames=static)
    got = jitted(y, k, kernel_size=(3, 2), strides=(2, 1), input_shape=(7, 6),
                 padding=((1, 0), (0, 2)), dilation=(1, 2))  # fmt: skip
    assert_close(got, want, transpose_ref(np.abs(y), np.abs(k), CASE), "float32",
                 both_approximate=True)  # fmt: skip
    ys = np.stack([y, 2 * y, -y])
    batched = jax.vmap(lambda y: _transpose(y, k, CASE))(ys)
    for i, factor in enumerate([1, 2, -1]):
        np.testing.assert_allclose(batched[i], factor * want, rtol=1e-5, atol=1e-5)
    per_kernel = jax.vmap(lambda k: _transpose(y, k, CASE))(np.stack([k, 3 * k]))
    np.testing.assert_allclose(per_kernel[1], 3 * want, rtol=1e-5, atol=1e-5)


def test_gradients_in_both_arguments_are_the_forward_map_and_its_kernel_gradient():
    """<T(y, k), x> = <local_conv(x, k), y>, so grad_y is local_conv(x, k) and grad_k is
    the kernel gradient of the forward pass (float64: exact up to rounding)."""
    with jax.enable_x64(True):
        x, k, y = _arrays(CASE, dtype=np.float64)
        pairing = lambda y, k: jnp.vdot(_transpose(y, k, CASE), x)
        grad_y, grad_k = jax.grad(pairing, argnums=(0, 1))(y, k)
        np.testing.assert_allclose(grad_y, _forward(x, k, CASE), rtol=1e-12, atol=1e-12)
        want_k = jax.grad(lambda k: jnp.vdot(_forward(x, k, CASE), y))(k)
        np.testing.assert_allclose(grad_k, want_k, rtol=1e-12, atol=1e-12)


def test_jvp_is_bilinear_and_second_order_works():
    with jax.enable_x64(True):
        x, k, y = _arrays(CASE, dtype=np.float64)
        rng = np.random.default_rng(7)
        dy, dk = rng.standard_normal(y.shape), rng.standard_normal(k.shape)
        t = lambda y, k: _transpose(y, k, CASE)
        value, tangent = jax.jvp(t, (y, k), (dy, dk))
        np.testing.assert_allclose(value, t(y, k), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(tangent, t(dy, k) + t(y, dk), rtol=1e-12, atol=1e-12)
        # d/dk <grad_y <T(y, k), x>, z> = d/dk <local_conv(x, k), z>: a second derivative.
        z = rng.standard_normal(y.shape)
        inner = lambda k: jax.grad(lambda y: jnp.vdot(t(y, k), x))(y)
        got = jax.grad(lambda k: jnp.vdot(inner(k), z))(k)
        want = jax.grad(lambda k: jnp.vdot(_forward(x, k, CASE), z))(k)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        hessian_yk = jax.jacfwd(jax.grad(lambda y, k: jnp.vdot(t(y, k), x)), argnums=1)(y, k)
        assert hessian_yk.shape == y.shape + k.shape


def test_preferred_element_type_gives_the_exact_products_in_float32():
    _, k, y = _arrays(CASE)
    k16, y16 = jnp.asarray(k, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16)
    got = _transpose(y16, k16, CASE, preferred_element_type=jnp.float32)
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(_transpose(y16, k16, CASE, preferred_element_type="float32"), got)
    # bf16 products are exact in float32: the same as transposing the upcast operands.
    want = _transpose(y16.astype(jnp.float32), k16.astype(jnp.float32), CASE)
    np.testing.assert_array_equal(got, want)
    assert _transpose(y16, k16, CASE).dtype == jnp.bfloat16
    scale = transpose_ref(np.abs(y), np.abs(k), CASE)
    for precision in ["highest", jax.lax.Precision.HIGHEST, [jax.lax.Precision.HIGH] * 2]:
        got = _transpose(y, k, CASE, precision=precision)
        assert_close(got, transpose_ref(y, k, CASE), scale, "float32", what=str(precision))


def test_uncovered_inputs_get_zeros_and_empty_batches_work():
    case = Case((9,), 2, 3, (2,), (3,))  # windows read 0-1, 3-4, 6-7: never 2, 5, 8
    _, k, y = _arrays(case)
    got = np.asarray(_transpose(y, k, case))
    np.testing.assert_array_equal(got[:, 2::3], 0)
    assert np.abs(got[:, 0::3]).min() > 0
    empty = _transpose(y[:0], k, case)
    assert empty.shape == (0, 9, 2)


Y = np.zeros((2, 4, 3, 4), np.float32)  # the forward result of a 6x5x3 input, 3x3 window
K = np.zeros((12, 27, 4), np.float32)
T = jlocalconv.local_conv_transpose


def _t2(outputs=Y, kernel=K, kernel_size=3, strides=1, input_shape=(6, 5), **kwargs):
    return jlocalconv.local_conv2d_transpose(
        outputs, kernel, kernel_size, strides, input_shape, **kwargs
    )


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: _t2(Y.tolist()), TypeError,
         r"local_conv2d_transpose: `outputs` must be a jax.Array or numpy.ndarray; got list"),
        (lambda: _t2(Y.astype(np.int32)), TypeError,
         r"`outputs` must be a real floating array .* dtype int32"),
        (lambda: _t2(Y[0]), ValueError,
         r"`outputs` must be of rank 4 \(batch, \*output_shape, filters\) or \(batch, filters, "
         r"\*output_shape\); got .*shape \(4, 3, 4\)"),
        (lambda: T(Y[0, 0], K, 3, 1, (6, 5)), ValueError,
         r"local_conv_transpose: `outputs` must be of rank 3 or more"),
        (lambda: _t2(kernel=K.astype(np.float16)), TypeError,
         r"`kernel` must be of the same dtype as `outputs` \(float32\); got .*float16"),
        (lambda: _t2(kernel=K[:, :26]), ValueError,
         r"`kernel` must be of feature_dim \(axis 1\) a positive multiple of prod\(kernel_size\) "
         r"= 9; got kernel.shape=\(12, 26, 4\)"),
        (lambda: _t2(kernel=K[0]), ValueError, r"`kernel` must be of rank 3"),
        (lambda: _t2(input_shape=(7, 5)), ValueError,
         r"`kernel` must be of output_items \(axis 0\) = prod\(output_shape=\(5, 3\)\) = 15 "
         r"for input spatial shape \(7, 5\)"),
        (lambda: _t2(Y[:, :, :, :3]), ValueError,
         r"`outputs` must be of shape \(2, 4, 3, 4\) \(the forward result for "
         r"input_shape=\(6, 5\): output shape \(4, 3\), the kernel's 4 filters, channels_last\)"
         r"; got .*shape \(2, 4, 3, 3\)"),
        (lambda: _t2(data_format="channels_first"), ValueError,
         r"`outputs` must be of shape \(2, 4, 4, 3\)"),
        (lambda: _t2(input_shape=(6, 5, 1)), ValueError,
         r"`input_shape` must be an int >= 1 or a tuple of 2 such ints; got \(6, 5, 1\) "
         r"\(length 3\)"),
        (lambda: _t2(input_shape=(6, 0)), ValueError, r"`input_shape` must be an int >= 1"),
        (lambda: jax.jit(lambda n: _t2(input_shape=(n, 5)))(6), TypeError,
         r"`input_shape` must be .*; got .*Tracer.* static_argnames"),
        (lambda: _t2(strides=0), ValueError, r"`strides` must be an int >= 1"),
        (lambda: _t2(padding="full"), ValueError, r"`padding` must be one of"),
        (lambda: _t2(preferred_element_type=jnp.int32), TypeError,
         r"`preferred_element_type` must be None or a real floating dtype"),
    ],
)  # fmt: skip
def test_bad_arguments_raise_naming_them(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
