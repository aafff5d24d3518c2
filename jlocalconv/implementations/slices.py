"""Windows by strided slices, one batched contraction over all output positions.

The input is padded once; ``prod(kernel_size)`` strided slices, stacked in Keras's
feature order, form the ``(positions, batch, features)`` patch tensor directly (no
one-hot convolution as in "patches", no kernel reordering), and one ``dot_general``
with positions as its batch dimension multiplies every window by its own filters.
One large contraction suits accelerators; on CPU "tiles" bounds the working set.
Derivatives of windows with many offsets stack them axis by axis
(:func:`~jlocalconv.implementations._windows.by_axis_derivatives`).
"""

from __future__ import annotations

import functools

import jax
from jax import lax

from jlocalconv.geometry import Geometry
from jlocalconv.implementations._bilinear import split_bilinear
from jlocalconv.implementations._common import contract, positions_to_result
from jlocalconv.implementations._windows import by_axis_derivatives, pad_spatial, padded, windows


def local_conv_slices(
    inputs: jax.Array,
    kernel: jax.Array,
    geom: Geometry,
    *,
    precision: lax.PrecisionLike = None,
    preferred_element_type: jax.typing.DTypeLike | None = None,
) -> jax.Array:
    """Local convolution via strided-slice windows + one ``dot_general``."""
    sliced = functools.partial(
        _sliced, geom=geom, precision=precision, preferred_element_type=preferred_element_type
    )
    if not by_axis_derivatives(geom):
        return sliced(inputs, kernel)
    return split_bilinear(sliced, functools.partial(sliced, by_axis=True))(inputs, kernel)


def slices_tangent(
    inputs: jax.Array,
    kernel: jax.Array,
    geom: Geometry,
    *,
    precision: lax.PrecisionLike = None,
    preferred_element_type: jax.typing.DTypeLike | None = None,
) -> jax.Array:
    """The "slices" route as it is differentiated: plain ``lax`` (a ``split_bilinear``
    tangent)."""
    return _sliced(
        inputs,
        kernel,
        geom=geom,
        precision=precision,
        preferred_element_type=preferred_element_type,
        by_axis=by_axis_derivatives(geom),
    )


def _sliced(inputs, kernel, *, geom, precision, preferred_element_type, by_axis=False):
    patches = windows(pad_spatial(inputs, geom), padded(geom), by_axis=by_axis)
    out = contract(patches, kernel, precision, preferred_element_type)
    return positions_to_result(out, geom)
