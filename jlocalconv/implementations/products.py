"""Elementwise derivatives for windows of few features: products, no contraction.

With a handful of features per window, the derivatives of a batched contraction (the
"slices" route) are thin batched dots that XLA's CPU backend runs positions-major: the
cotangent is transposed into that layout once per gradient and the differentiated
values come out positions-major and are transposed back, each a result-sized buffer.
When the result dominates (many filters, rows and positions; few features) those
copies are most of the temporaries and of the time. Here every term is an elementwise
product in the result's own ``(batch, positions, ...)`` layout:

* the kernel gradient ``dk[p, w, f] = sum_b windows[b, p, w] * g[b, p, f]``: one
  product per batch row, summed in one fused loop that writes each element once;
* the inputs' gradient ``dwindows[b, p, w] = sum_f g[b, p, f] * k[p, w, f]``: a
  reduction over filters, then the windows' transpose (padded slices, which XLA fuses).

The window tensor (``feature_dim`` values per output position) is then smaller than
the result itself. "shifts" differentiates this way where :func:`derivatives_by_products`
says so; its shift-and-accumulate values (no window tensor either) stay the values.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp

from jlocalconv.geometry import Geometry
from jlocalconv.implementations._bilinear import Bilinear, split_bilinear
from jlocalconv.implementations._common import result_dtype
from jlocalconv.implementations._windows import channels_last_padded, window_slice

# The route's bounds. value_and_grad of "shifts" differentiated by these products
# against its other routes (one process, alternated; float32 and bf16) on the 112 "shifts"
# problems of sweep seeds 2-29 with at most 8 features: where the (float32) result,
# 4 * batch * output_items * filters bytes, held at least PRODUCTS_MIN_RESULT_BYTES, with
# PRODUCTS_MIN_FILTERS filters or more and 2 to PRODUCTS_MAX_FEATURES features (23
# problems), 0.53x the time (geometric mean; 0.10-0.98x on 22, s22-43 161 -> 15.5 ms,
# s3-52 59 -> 12 ms, s16-6 171 -> 112 ms, s24-45 49 -> 12 ms; 1.00x on s21-44) and lower
# temporaries on 22 (10.8-265 MiB down to 0.4-11.7 MiB wherever they were over 10; s14-14
# 0.7 -> 1.3 MiB). With 8 features the products were 0.86-1.98x (1.2x on four of five),
# with fewer filters (s23-6 1.9x, s6-21 1.6x), smaller results (up to 3x on tiny
# problems), one row (5x: an outer product per position), a single feature (1.4x) or 9-36
# features (shift-and-accumulate then keeps partial sums: 1.1-2.5x on most of 26),
# the other routes were faster.
PRODUCTS_MAX_FEATURES = 7
PRODUCTS_MIN_FILTERS = 16
PRODUCTS_MIN_RESULT_BYTES = 256 << 10
# Up to PRODUCTS_LARGE_MAX_FEATURES features where the result holds at least
# PRODUCTS_LARGE_MIN_RESULT_BYTES: then the contraction's result-sized transpositions
# (two or three buffers of it) outweigh the partial sums. Tuned on the "shifts" problems
# of sweep seeds 16-40 and 300-345 with 8-12 features (45; 0.79x overall, but 2.45x on
# s26-46, a 4.5 MiB result over 139 rows, and 1.1-1.9x on most under 8 MiB); over 8 MiB
# 0.26-1.35x (s326-15, 12 features, the slowest), temp lower on all. Held out (seeds
# 346-420, the 13 such problems, one process, alternated): value_and_grad 0.46x (0.25x
# s368-29 52.4 -> 12.9 ms, at most 0.78x), temp lower on all 13 (s408-31 34.1 -> 1.6 MiB).
# With 14 features (s12-24, s53-32) the products ran 1.7-3.6x slower and held 3x the temp.
PRODUCTS_LARGE_MAX_FEATURES = 12
PRODUCTS_LARGE_MIN_RESULT_BYTES = 8 << 20
# The kernel gradient unrolls one term per row: 200 rows compiled value_and_grad in
# 0.5-0.6 s against the contraction's 0.1-0.15 s. Beyond this many rows, the other routes.
PRODUCTS_MAX_BATCH = 256
# A 16-bit kernel read by float32 products is widened whole (a float32 copy, and its
# gradient accumulated in float32 before rounding): where it outweighs the result (fewer
# rows than features) that held more than the contraction did (bf16 s28-23, 3 rows of 8
# features: 9.2 -> 13.2 MiB; s9-24 1.6 -> 2.1), so a widened kernel needs at least as
# many rows as features.


def derivatives_by_products(
    geom: Geometry, batch: int, filters: int, kernel_dtype: jax.typing.DTypeLike = "float32"
) -> bool:
    """Whether "shifts" is differentiated by :func:`differentiated_by_products`: 2 to
    ``PRODUCTS_MAX_FEATURES`` features, 2 to ``PRODUCTS_MAX_BATCH`` rows (and at least
    as many as features for a 16-bit ``kernel_dtype``, which the float32 products widen
    whole), at least ``PRODUCTS_MIN_FILTERS`` filters and ``PRODUCTS_MIN_RESULT_BYTES``
    of (float32) result; or up to ``PRODUCTS_LARGE_MAX_FEATURES`` features over at least
    ``PRODUCTS_LARGE_MIN_RESULT_BYTES`` of result.

    >>> from jlocalconv.geometry import make_geometry
    >>> geom = make_geometry((64, 30, 30, 2), (3, 1))  # 3x1 windows of 2 channels: 6 features
    >>> [derivatives_by_products(geom, 64, filters) for filters in (8, 64)]
    [False, True]
    >>> derivatives_by_products(make_geometry((64, 30, 30, 4), 2), 64, 64)  # 16 features
    False
    >>> few_rows = make_geometry((4, 200, 200, 2), (3, 1))
    >>> [derivatives_by_products(few_rows, 4, 64, dtype) for dtype in ("float32", "bfloat16")]
    [True, False]
    >>> wide = make_geometry((64, 30, 30, 3), (3, 1))  # 9 features: large results only
    >>> [derivatives_by_products(wide, 64, filters) for filters in (16, 64)]  # 3.3, 13 MiB
    [False, True]
    """
    result_bytes = 4 * batch * geom.output_items * filters
    widened = jnp.dtype(kernel_dtype).itemsize < 4  # _dtypes: at least float32
    large = result_bytes >= PRODUCTS_LARGE_MIN_RESULT_BYTES
    max_features = PRODUCTS_LARGE_MAX_FEATURES if large else PRODUCTS_MAX_FEATURES
    return (
        (geom.feature_dim if widened else 2) <= batch <= PRODUCTS_MAX_BATCH
        and 2 <= geom.feature_dim <= max_features
        and filters >= PRODUCTS_MIN_FILTERS
        and result_bytes >= PRODUCTS_MIN_RESULT_BYTES
    )


def differentiated_by_products(
    values: Bilinear,
    geom: Geometry,
    *,
    preferred_element_type: jax.typing.DTypeLike | None = None,
) -> Bilinear:
    """``values`` (a plain-``lax`` route, also the differentiated values), its tangents
    the products of :func:`products_tangent` and :func:`products_kernel_tangent`.

    Elementwise products take no ``precision``: each is one rounding of exact inputs,
    accumulated in at least float32.
    """
    pet = preferred_element_type
    on_inputs = functools.partial(products_tangent, geom=geom, preferred_element_type=pet)
    for_kernel = functools.partial(products_kernel_tangent, geom=geom, preferred_element_type=pet)
    return split_bilinear(values, on_inputs, for_kernel, tangent_value=values)


def products_tangent(
    inputs: jax.Array,
    kernel: jax.Array,
    geom: Geometry,
    *,
    preferred_element_type: jax.typing.DTypeLike | None = None,
) -> jax.Array:
    """The op as a sum over features of windows times filters, for the inputs' tangent
    term: transposed in the inputs, a reduction over filters (then the windows'
    transpose), with no result-sized transposition.

    >>> from jlocalconv.geometry import make_geometry
    >>> from jlocalconv.implementations.slices import local_conv_slices
    >>> geom = make_geometry((2, 5, 5, 2), 2)
    >>> x, k = jnp.ones(geom.input_shape(2)), jnp.ones(geom.kernel_shape(3))
    >>> bool(jnp.allclose(products_tangent(x, k, geom), local_conv_slices(x, k, geom)))
    True
    """
    dtype, accumulate = _dtypes(inputs, preferred_element_type)
    windows = _windows_by_row(inputs, geom).astype(accumulate)
    products = windows[..., None] * kernel.astype(accumulate)[None]
    return _to_result(jnp.sum(products, axis=2).astype(dtype), geom)


def products_kernel_tangent(
    inputs: jax.Array,
    kernel: jax.Array,
    geom: Geometry,
    *,
    preferred_element_type: jax.typing.DTypeLike | None = None,
) -> jax.Array:
    """The op one batch row at a time, for the kernel's tangent term: transposed in the
    kernel, ``sum_b windows[b, :, :, None] * cotangent[b, :, None, :]`` in one fused
    loop over the kernel (as ``tiles.rows_kernel_tangent``, with the rows in the
    result's layout, so the cotangent is read where it lies)."""
    dtype, accumulate = _dtypes(inputs, preferred_element_type)
    windows = _windows_by_row(inputs, geom).astype(accumulate)
    filters = kernel.astype(accumulate)
    rows = [jnp.sum(windows[b, :, :, None] * filters, axis=1) for b in range(inputs.shape[0])]
    return _to_result(jnp.stack(rows).astype(dtype), geom)


def _dtypes(inputs: jax.Array, preferred_element_type) -> tuple[jnp.dtype, jnp.dtype]:
    """The result dtype and the dtype the products accumulate in: at least float32, as
    "shifts"' values (a 16-bit kernel is then widened whole: ``derivatives_by_products``)."""
    dtype = result_dtype(inputs, preferred_element_type)
    return dtype, jnp.promote_types(jnp.promote_types(inputs.dtype, dtype), jnp.float32)


def _windows_by_row(inputs: jax.Array, geom: Geometry) -> jax.Array:
    """Every window as ``(batch, output_items, feature_dim)``, in Keras's feature order:
    ``(k..., C)`` for channels_last, ``(C, k...)`` for channels_first."""
    x, view = channels_last_padded(inputs, geom)
    offsets = itertools.product(*(range(n) for n in geom.kernel_size))
    parts = [window_slice(x, view, offset) for offset in offsets]  # (B, *out, C) each
    stacked = jnp.stack(parts, axis=-2 if geom.channels_last else -1)
    return stacked.reshape(inputs.shape[0], geom.output_items, geom.feature_dim)


def _to_result(rows: jax.Array, geom: Geometry) -> jax.Array:
    """``(batch, output_items, filters)`` in ``geom``'s result layout."""
    out = rows.reshape(rows.shape[0], *geom.output_shape, rows.shape[-1])
    return out if geom.channels_last else jnp.moveaxis(out, -1, 1)
