"""Shift-and-accumulate values, tiled derivatives: for inputs with few channels.

With few input channels a window's features are mostly window offsets, and each
position's contraction is a tiny ``(batch, features) x (features, filters)`` product
that no matmul kernel runs efficiently. Instead, for every window offset ``o`` and
channel ``c``, one strided slice of the padded input (``(batch, *output, 1)``) times
that offset's filters (``(*output, filters)``) is added to the result: elementwise
work that XLA fuses into a few loops over the output, with no patch tensor at all.

The transpose of that sum would hold one product per term for the backward pass, so
under differentiation values and derivatives come from "slices" or the "tiles" loop
instead (through :func:`~jlocalconv.implementations._bilinear.split_bilinear`, which
keeps forward mode, higher orders and ``linear_transpose``): fast values, lean gradients.
Where the result outweighs windows of a few features, the derivatives are elementwise
products in the result's layout instead (:mod:`~jlocalconv.implementations.products`),
and the differentiated values stay these.
The number of fused terms is ``prod(kernel_size) * channels``, each over all filters,
which is why "auto" only picks this for a handful of channels and small filter banks
(``implementations.SHIFTS_MAX_BANK``), and, with three or more filters, only up to
``implementations.SHIFTS_MAX_TERMS`` terms: asked for explicitly beyond that, compiling
a reduction over its result (``jnp.sum(local_conv(...))``) can exhaust memory in XLA's
CPU backend (jaxlib 0.10: 1152 terms over 3 filters took 24 GB).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jlocalconv.geometry import Geometry
from jlocalconv.implementations._common import result_dtype
from jlocalconv.implementations._routes import differentiated
from jlocalconv.implementations._windows import channels_last_padded, window_slice
from jlocalconv.implementations.products import derivatives_by_products
from jlocalconv.implementations.tiles import derivatives_by_slices

# A 16-bit kernel read by more than WIDEN_ONCE_MIN_TERMS fused terms is widened to the
# accumulator's dtype once, before the terms slice it: widened term by term, XLA's CPU
# backend gave every term's filters a fusion (a kernel launch) of their own, which
# dominated sub-millisecond problems. Widening once for every term count computed values
# of the 49 bf16 problems of sweep seeds 2 and 5-11 that "auto" runs by "shifts" in 0.81x
# the time (geometric mean; one run, both alternated) but 1.5-2.4x on three of at most 10
# terms over 0.3-1 million outputs (s5-35, s6-21, s8-41: XLA then re-converts the kernel
# in the loop for every batch row). With this bound: 0.74x (0.16-0.6x on nine 0.2-1 ms
# problems, e.g. s11-38 0.17 -> 0.03 ms); none slower by over 1.27x (four by 1.16-1.27x,
# one of them s7-17, whose program this leaves unchanged: the noise of such timings).
WIDEN_ONCE_MIN_TERMS = 10
# A sum of more than FUSED_CONSUMER_MAX_TERMS terms ends in an op that YNNPACK fusions do
# not take. Otherwise XLA's CPU backend (jaxlib 0.10) may pull the whole sum into a
# consumer's reduction as one YNNPACK fusion, which takes at most about two dozen
# operands and materialises the rest as result-sized broadcasts: ``sum(f(x, k) * g)``
# held 95 MiB of temporaries and ran 13x slower than ``f`` itself (sweep s53-32, 14
# terms; with the op, XLA's own fusion: 30.5 -> 2.3 ms, 15.6 MiB, one result; s17-19 41.7
# -> 3.8 ms). Up to 12 terms the YNNPACK fusion took every operand (2.6 MiB for 8 terms
# against 15 for the result written once), so the sum stays open to it.
FUSED_CONSUMER_MAX_TERMS = 12


def local_conv_shifts(
    inputs: jax.Array,
    kernel: jax.Array,
    geom: Geometry,
    *,
    precision: lax.PrecisionLike = None,
    preferred_element_type: jax.typing.DTypeLike | None = None,
    window_dtype: jax.typing.DTypeLike | None = None,
) -> jax.Array:
    """Local convolution: shift-and-accumulate values; products, "slices" or "tiles"
    when differentiated (``window_dtype``: see ``tiles.rows_kernel_tangent``).

    Derivatives are elementwise products where ``products.derivatives_by_products``
    says so (a result that outweighs windows of few features), else they come from
    "slices" wherever ``tiles.derivatives_by_slices`` says so (a dominant kernel,
    disjoint windows, or a window tensor within budget over an input not much larger
    than the output): one contraction, which the tile loop's backward pass is far
    slower than.
    ``precision`` applies to the derivatives' contractions; values are elementwise
    products accumulated in float32 (or ``preferred_element_type``, if wider).
    """
    batch, filters, itemsize = inputs.shape[0], kernel.shape[-1], inputs.dtype.itemsize
    out_dtype = result_dtype(inputs, preferred_element_type)
    values = functools.partial(_shift_accumulate, geom=geom, out_dtype=out_dtype)
    if derivatives_by_products(geom, batch, filters, kernel.dtype):
        route = "products"
    elif derivatives_by_slices(geom, batch, filters, itemsize, kernel.dtype.itemsize):
        route = "slices"
    else:
        route = "tiles"
    op = differentiated(
        values,
        route,
        inputs,
        kernel,
        geom,
        precision=precision,
        preferred_element_type=preferred_element_type,
        window_dtype=window_dtype,
    )
    return op(inputs, kernel)


def _shift_accumulate(
    inputs: jax.Array, kernel: jax.Array, *, geom: Geometry, out_dtype: jnp.dtype
) -> jax.Array:
    """``sum over (offset, channel)`` of a strided input slice times its filters.

    Written in ``lax`` primitives, one split per operand rather than an index per term:
    under differentiation JAX still traces these values (a ``custom_jvp``'s primal) and
    ``jnp`` indexing and broadcasting cost ~0.3 ms of Python per term (large5x5's 200
    terms: 61 ms, a third of lax's whole value_and_grad compile).
    """
    x, view = channels_last_padded(inputs, geom)  # each term is then (B, *out, 1)
    acc_dtype = jnp.promote_types(out_dtype, jnp.float32)
    if geom.feature_dim > WIDEN_ONCE_MIN_TERMS:  # one term per feature
        kernel = kernel.astype(acc_dtype)
    out_shape = (inputs.shape[0], *geom.output_shape, kernel.shape[-1])
    # (output_items, 1, filters) per feature, features in Keras's order: (k..., C) for
    # channels_last, (C, k...) for channels_first.
    filters = _split(kernel, 1)
    acc = None
    offsets = itertools.product(*(range(n) for n in geom.kernel_size))
    for i, offset in enumerate(offsets):
        xo = _widened(window_slice(x, view, offset), acc_dtype)
        for c, xc in enumerate(_split(xo, x.ndim - 1)):
            f = i * geom.channels + c if geom.channels_last else c * geom.window_items + i
            k = _widened(lax.reshape(filters[f], out_shape[1:]), acc_dtype)
            term = lax.mul(_broadcast(xc, out_shape), _broadcast(k, out_shape))
            acc = term if acc is None else lax.add(acc, term)
    assert acc is not None  # window_items * channels >= 1
    acc = acc.astype(out_dtype)
    if geom.feature_dim > FUSED_CONSUMER_MAX_TERMS:
        acc = _written_whole(acc)
    return acc if geom.channels_last else jnp.moveaxis(acc, -1, 1)


def _written_whole(array: jax.Array) -> jax.Array:
    """``array``, through an op no YNNPACK fusion takes (a ``reduce_precision`` to its own
    precision: exact, linear for JAX, kept by XLA), so that XLA's own fusion emits the sum
    before it (``FUSED_CONSUMER_MAX_TERMS``)."""
    info = jnp.finfo(array.dtype)
    return lax.reduce_precision(array, exponent_bits=info.nexp, mantissa_bits=info.nmant)


def _split(array: jax.Array, axis: int) -> Sequence[jax.Array]:
    """``array``'s slices of size one along ``axis`` (one primitive for all of them)."""
    return lax.split(array, (1,) * array.shape[axis], axis=axis)


def _widened(array: jax.Array, dtype: jnp.dtype) -> jax.Array:
    return array if array.dtype == dtype else lax.convert_element_type(array, dtype)


def _broadcast(array: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``array`` broadcast to ``shape`` from the right (its size-one axes stretched)."""
    dims = tuple(range(len(shape) - array.ndim, len(shape)))
    return lax.broadcast_in_dim(array, shape, dims)
