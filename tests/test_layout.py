"""jlocalconv.layout: lax/flax kernels, data-format reordering and the dense matrix.

References are independent of the converters: ``jax.lax.conv_general_dilated_local`` and
``flax.linen.ConvLocal`` themselves, the float64 NumPy loop (tests/reference.py) and the
Jacobian of ``local_conv``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import CASES, CF, CL, Case
from reference import local_conv_ref, resolve_padding
from strategies import Problem
from tolerances import assert_close

import jlocalconv
from jlocalconv import layout

CASE_IDS = [str(c) for c in CASES]
_LETTERS = "XYZ"


def _lax_dimension_numbers(n: int, data_format: str) -> tuple[str, str, str]:
    """("NXYC", "XYIO", "NXYC") or ("NCXY", "XYIO", "NCXY") for n spatial dims."""
    spatial = _LETTERS[:n]
    lhs = f"N{spatial}C" if data_format == CL else f"NC{spatial}"
    return lhs, f"{spatial}IO", lhs


def _lax_local_conv(x, lax_kernel, case: Case):
    """``jax.lax.conv_general_dilated_local`` on ``case``'s geometry (explicit padding)."""
    pads = resolve_padding(case.padding, case.spatial, case.kernel_size, case.strides, case.dil)
    return jax.lax.conv_general_dilated_local(
        x,
        lax_kernel,
        case.strides,
        [tuple(p) for p in pads],
        case.kernel_size,
        rhs_dilation=case.dil,
        dimension_numbers=_lax_dimension_numbers(len(case.spatial), case.data_format),
        precision=jax.lax.Precision.HIGHEST,
    )


def _lax_args(case: Case):
    return (case.output_shape, case.kernel_size, case.channels, case.data_format)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_to_lax_kernel_gives_lax_the_keras_results(case):
    """Padded, strided, dilated, both formats, 1-3 D: lax with our converted kernel equals
    the float64 reference of our kernel, and from_lax inverts to_lax exactly."""
    x, k, _ = case.arrays()
    lax_kernel = layout.to_lax(k, *_lax_args(case))
    assert lax_kernel.shape == (*case.output_shape, k.shape[1], case.filters)
    got = _lax_local_conv(x, lax_kernel, case)
    problem = Problem(case)
    assert_close(got, problem.reference(x, k), problem.scale(x, k), "float32", what="lax")
    np.testing.assert_array_equal(layout.from_lax(lax_kernel, *_lax_args(case)), k)


@pytest.mark.parametrize("data_format", [CL, CF])
def test_from_lax_takes_a_lax_kernel_that_was_never_ours(data_format):
    """A kernel built in lax's layout (features (C, k...)) computes lax's results here."""
    case = Case(
        (7, 6),
        3,
        2,
        (3, 2),
        (2, 1),
        padding=((1, 0), (0, 1)),
        dilation=(1, 2),
        data_format=data_format,
    )
    rng = np.random.default_rng(3)
    x = rng.standard_normal(case.input_shape).astype(np.float32)
    lax_kernel = rng.standard_normal((*case.output_shape, 3 * 6, 2)).astype(np.float32)
    want = _lax_local_conv(x, lax_kernel, case)
    ours = layout.from_lax(lax_kernel, *_lax_args(case))
    got = jlocalconv.local_conv(x, ours, (3, 2), (2, 1), None, data_format, **case.kwargs())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", ["VALID", "SAME", "CAUSAL"])
def test_flax_conv_local_kernel_round_trips_through_from_lax(padding):
    nn = pytest.importorskip("flax.linen")
    x = jax.random.normal(jax.random.key(0), (2, 9, 3))
    module = nn.ConvLocal(4, (3,), strides=(2,), padding=padding, kernel_dilation=(2,))
    variables = module.init(jax.random.key(1), x)
    kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
    out = kernel.shape[:1]
    ours = layout.from_lax(kernel, out, 3, 3)
    pad = {"VALID": "valid", "SAME": "same", "CAUSAL": "causal"}[padding]
    got = jlocalconv.local_conv1d(x, ours, 3, 2, padding=pad, dilation=2, bias=bias)
    np.testing.assert_allclose(got, module.apply(variables, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(layout.to_lax(ours, out, 3, 3), kernel)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_convert_data_format_computes_the_same_map_in_the_other_format(case):
    x, k, _ = case.arrays()
    other = CF if case.data_format == CL else CL
    args = (case.kernel_size, case.channels)
    there = layout.convert_data_format(k, *args, case.data_format, other)
    np.testing.assert_array_equal(
        layout.convert_data_format(there, *args, other, case.data_format), k
    )
    x_other = np.moveaxis(x, -1, 1) if other == CF else np.moveaxis(x, 1, -1)
    got = np.asarray(Problem(dataclasses.replace(case, data_format=other)).apply(x_other, there))
    got = np.moveaxis(got, 1, -1) if other == CF else np.moveaxis(got, -1, 1)
    problem = Problem(case)
    assert_close(got, problem.reference(x, k), problem.scale(x, k), "float32", what="convert")


def test_convert_data_format_accepts_an_int_window_and_equal_formats():
    k = np.arange(2 * 9 * 2 * 1).reshape(2, 18, 1)  # window 3x3, C=2; any dtype
    by_int = layout.convert_data_format(k, 3, 2, "channels_last", "CHANNELS_FIRST")
    np.testing.assert_array_equal(by_int, layout.convert_data_format(k, (3, 3), 2, None, CF))
    np.testing.assert_array_equal(by_int[0, :, 0], np.arange(18).reshape(9, 2).T.ravel())
    assert layout.convert_data_format(k, 3, 2, CL, None) is k


def test_converters_keep_the_array_kind_and_work_under_jit():
    """NumPy in, NumPy out (float64 survives without x64); JAX in, JAX out, also traced."""
    k64 = np.random.default_rng(0).standard_normal((12, 18, 2))
    args = ((4, 3), (3, 3), 2)
    assert isinstance(layout.to_lax(k64, *args), np.ndarray)
    assert layout.to_lax(k64, *args).dtype == np.float64
    assert isinstance(layout.convert_data_format(k64, (3, 3), 2, CL, CF), np.ndarray)
    k32 = jnp.asarray(k64, jnp.float32)
    jitted = jax.jit(lambda k: layout.from_lax(layout.to_lax(k, *args), *args))
    np.testing.assert_array_equal(jitted(k32), k32)
    dense = jax.jit(lambda k: layout.to_dense_matrix(k, (6, 5), 3, 1, data_format=CL))
    np.testing.assert_array_equal(dense(k32), layout.to_dense_matrix(np.asarray(k32), (6, 5), 3, 1))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_to_dense_matrix_is_the_linear_map(case):
    """x.reshape(batch, -1) @ M equals the float64 reference, flattened in the data format."""
    x, k, _ = case.arrays(dtype=np.float64)
    m = layout.to_dense_matrix(
        k, case.spatial, case.kernel_size, case.strides, case.padding, case.dil, case.data_format
    )
    c, f = case.channels, case.filters
    assert m.shape == (math.prod(case.spatial) * c, math.prod(case.output_shape) * f)
    want = local_conv_ref(
        x, k, case.kernel_size, case.strides, case.data_format, case.padding, case.dil
    )
    np.testing.assert_allclose(
        x.reshape(len(x), -1) @ m, want.reshape(len(x), -1), rtol=1e-12, atol=1e-12
    )
    # Every kernel weight whose tap reads the input appears exactly once; the rest is zero.
    assert np.count_nonzero(m) <= k.size


@pytest.mark.parametrize("case", CASES[::6], ids=CASE_IDS[::6])
def test_to_dense_matrix_equals_the_jacobian_of_local_conv_exactly(case):
    x, k, _ = case.arrays()
    x, k = jnp.asarray(x[:1]), jnp.asarray(k)
    f = lambda x: jlocalconv.local_conv(
        x, k, case.kernel_size, case.strides, None, case.data_format, **case.kwargs()
    ).ravel()
    jacobian = jax.jit(jax.jacfwd(f))(x).reshape(-1, x.size).T  # (inputs, outputs)
    m = layout.to_dense_matrix(
        k, case.spatial, case.kernel_size, case.strides, case.padding, case.dil, case.data_format
    )
    assert isinstance(m, jax.Array)
    np.testing.assert_array_equal(m, jacobian)


@pytest.mark.parametrize("data_format", [CL, CF])
@pytest.mark.parametrize("spatial", [(7,), (5, 4)])
def test_to_dense_matrix_transposed_holds_keras_implementation_3_weights(spatial, data_format):
    """M.T is Keras's implementation-3 matrix: its entries at Keras's kernel_idxs are the
    sparse values and every other entry is zero (same flattening orders)."""
    n = len(spatial)
    kernel_size, strides = (3, 2)[:n], (2, 1)[:n]
    x_shape = (1, *spatial, 3) if data_format == CL else (1, 3, *spatial)
    shape = jlocalconv.kernel_shape(x_shape, 2, kernel_size, strides, data_format=data_format)
    k = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    values, idxs = layout.to_keras_sparse(k, spatial, kernel_size, strides, "valid", data_format)
    keras = np.zeros_like(
        layout.to_dense_matrix(k, spatial, kernel_size, strides, data_format=data_format).T
    )
    keras[idxs[:, 0], idxs[:, 1]] = values
    m = layout.to_dense_matrix(k, spatial, kernel_size, strides, data_format=data_format)
    np.testing.assert_array_equal(m.T, keras)


K = np.zeros((12, 27, 4), np.float32)  # 6x5 input, C=3, 3x3 window -> 4x3 outputs


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: layout.to_lax(K.tolist(), (4, 3), 3, 3), TypeError,
         r"to_lax: `kernel` must be a jax.Array or numpy.ndarray; got list"),
        (lambda: layout.to_lax(K[0], (4, 3), 3, 3), ValueError,
         r"`kernel` must be of rank 3 \(output_items, feature_dim, filters\); got .*\(27, 4\)"),
        (lambda: layout.to_lax(K, (4, 4), 3, 3), ValueError,
         r"`kernel` must be of output_items \(axis 0\) = prod\(output_shape=\(4, 4\)\) = 16; "
         r"got kernel.shape=\(12, 27, 4\)"),
        (lambda: layout.to_lax(K, (4, 3), 3, 2), ValueError,
         r"`kernel` must be of feature_dim \(axis 1\) = prod\(kernel_size\) \* channels_in = "
         r"9 \* 2 = 18; got kernel.shape=\(12, 27, 4\)"),
        (lambda: layout.to_lax(K, (4, 3), (3, 3, 3), 3), ValueError,
         r"`kernel_size` must be an int >= 1 or a tuple of 2 such ints"),
        (lambda: layout.to_lax(K, 12, 3, 3), TypeError,
         r"`output_shape` must be a non-empty tuple of non-negative ints; got 12"),
        (lambda: layout.to_lax(K, (4, 3), 3, 0), ValueError,
         r"`channels_in` must be a positive int; got 0"),
        (lambda: layout.to_lax(K, (4, 3), 3, 3.0), TypeError,
         r"`channels_in` must be a positive int; got 3.0"),
        (lambda: layout.to_lax(K, (4, 3), 3, 3, "NHWC"), ValueError,
         r"`data_format` must be None or one of"),
        (lambda: layout.from_lax(K, (4, 3), 3, 3), ValueError,
         r"from_lax: `kernel` must be of rank 4 \(\*output_shape, C \* prod\(kernel_size\), "
         r"filters\)"),
        (lambda: layout.from_lax(K.reshape(4, 3, 27, 4)[:, :2], (4, 3), 3, 3), ValueError,
         r"`kernel` must be of shape \(\*output_shape, C \* prod\(kernel_size\), filters\) = "
         r"\(4, 3, 27, filters\); got kernel.shape=\(4, 2, 27, 4\)"),
        (lambda: layout.convert_data_format(K, 3, 2, CL, CF), ValueError,
         r"convert_data_format: `kernel` must be of feature_dim \(axis 1\) = 3\*\*N \* "
         r"channels_in=2 for some N; got feature_dim 27"),
        (lambda: layout.convert_data_format(K, (3, 2), 3, CL, CF), ValueError,
         r"`kernel` must be of feature_dim \(axis 1\) = prod\(kernel_size\) \* channels_in = "
         r"6 \* 3 = 18; got kernel.shape=\(12, 27, 4\)"),
        (lambda: layout.convert_data_format(K, 3, 3, CL, "channels_middle"), ValueError,
         r"`data_format` must be None or one of"),
        (lambda: layout.to_dense_matrix(K, (6, 6), 3, 1), ValueError,
         r"to_dense_matrix: `kernel` must be of output_items \(axis 0\) = prod\(output_shape="
         r"\(4, 4\)\) = 16 for input spatial shape \(6, 6\)"),
        (lambda: layout.to_dense_matrix(K[:, :26], (6, 5), 3, 1), ValueError,
         r"`kernel` must be of feature_dim \(axis 1\) a positive multiple of prod\(kernel_size\)"
         r" = 9; got kernel.shape=\(12, 26, 4\)"),
        (lambda: layout.to_dense_matrix(K, (2, 6, 5, 3), 3, 1), ValueError,
         r"`kernel_size` must be an int >= 1 or a tuple of 4 such ints|`kernel` must be"),
        (lambda: layout.to_dense_matrix(K, 30, 3, 1), TypeError,
         r"`input_shape` must be the input's spatial shape, a non-empty tuple of positive "
         r"ints; got 30"),
        (lambda: layout.to_dense_matrix(K, (0, 5), 3, 1), ValueError,
         r"`input_shape` must be an int >= 1 or a tuple of 2 such ints; got \(0, 5\)"),
    ],
)  # fmt: skip
def test_bad_arguments_raise_naming_them(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_shape_arguments_must_be_static():
    with pytest.raises(TypeError, match=r"`output_shape` .*static_argnames"):
        jax.jit(lambda s: layout.to_lax(K, (s, 3), 3, 3))(4)
