"""Static shape logic against XLA's own convolution shapes."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

import jlocalconv
from jlocalconv.geometry import normalize_padding


def _xla_out_shape(spatial, kernel_size, strides, padding, dilation):
    x = jax.ShapeDtypeStruct((1, 1, *spatial), np.float32)
    w = jax.ShapeDtypeStruct((1, 1, *kernel_size), np.float32)
    out = jax.eval_shape(
        lambda x, w: jax.lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation),
        x,
        w,
    )
    return out.shape[2:]


GRID = list(itertools.product([1, 4, 7, 10], [1, 2, 3], [1, 2, 3], [1, 2]))


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
def test_output_shape_matches_xla(padding):
    for n, k, s, d in GRID:
        if padding == "VALID" and d * (k - 1) + 1 > n:
            continue
        want = _xla_out_shape((n,), (k,), (s,), padding, (d,))
        assert jlocalconv.conv_output_shape((n,), k, s, padding.lower(), d) == tuple(want)


def test_same_pads_match_xla():
    for n, k, s, d in GRID:
        want = jax.lax.padtype_to_pads((n,), (d * (k - 1) + 1,), (s,), "SAME")
        assert normalize_padding("same", (n,), (k,), (s,), (d,)) == tuple(map(tuple, want))


def test_causal_pads_left_only():
    assert normalize_padding("causal", (9,), (3,), (1,), (2,)) == ((4, 0),)
    assert jlocalconv.conv_output_shape((9,), 3, 1, "causal", 2) == (9,)


def test_explicit_padding_forms():
    spatial, k, s, d = (5, 6), (3, 3), (1, 1), (1, 1)
    assert normalize_padding(2, spatial, k, s, d) == ((2, 2), (2, 2))
    assert normalize_padding((1, 2), spatial, k, s, d) == ((1, 1), (2, 2))
    assert normalize_padding(((0, 1), (2, 3)), spatial, k, s, d) == ((0, 1), (2, 3))
    assert normalize_padding("Same", spatial, k, (2, 2), d) == ((1, 1), (0, 1))


def test_kernel_shape_both_formats():
    assert jlocalconv.kernel_shape((8, 10, 12, 3), 5, (3, 2), (2, 1)) == (4 * 11, 18, 5)
    cf = jlocalconv.kernel_shape((8, 3, 10, 12), 5, (3, 2), (2, 1), data_format="channels_first")
    assert cf == (4 * 11, 18, 5)
    assert jlocalconv.kernel_shape((1, 7, 2), 1, 3, padding="causal") == (7, 6, 1)
