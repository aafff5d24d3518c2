"""Derivative routes: any route's values, differentiated by "slices", "patches" or the loop.

Local convolution is bilinear, so the route that computes undifferentiated values and
the route that computes values and tangents under differentiation can differ
(:func:`~jlocalconv.implementations._bilinear.split_bilinear`). A *derivative route*
names the second: "slices" and "patches" (plain ``lax``, transposed by JAX; "slices"
takes its kernel gradient by rows where
:func:`~jlocalconv.implementations.tiles.sliced_kernel_tangent_by_rows` says so) or
"tiles" (the tile loop's own tangents,
:func:`~jlocalconv.implementations.tiles.differentiated_by_loop`).
"shifts" picks one of them from static shapes; "auto"'s ``"tiles/slices"`` and autotune's
measured pairs (``implementations.composed``) name it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

from jlocalconv.geometry import Geometry
from jlocalconv.implementations._bilinear import Bilinear, split_bilinear
from jlocalconv.implementations._windows import sliced_by_axis
from jlocalconv.implementations.patches import local_conv_patches
from jlocalconv.implementations.slices import slices_tangent
from jlocalconv.implementations.tiles import (
    differentiated_by_loop,
    rows_kernel_tangent,
    sliced_kernel_tangent_by_rows,
)

# The plain-lax tangents (a value route differentiated by one of these is transposed by
# JAX); "tiles" is the loop, built by differentiated_by_loop.
_TANGENTS: dict[str, Callable[..., jax.Array]] = {
    "patches": local_conv_patches,
    "slices": slices_tangent,
}
DERIVATIVE_ROUTES = (*_TANGENTS, "tiles")


def differentiated(
    values: Bilinear,
    route: str,
    inputs: jax.Array,
    kernel: jax.Array,
    geom: Geometry,
    **options: Any,
) -> Bilinear:
    """``values`` (``(x, k) -> y``, any route), differentiated by ``route``.

    Args:
      values: the undifferentiated route, bilinear; never transposed.
      route: one of ``DERIVATIVE_ROUTES``.
      inputs, kernel: the operands (only their static shapes and dtypes are read).
      geom: their geometry.
      **options: ``precision`` and ``preferred_element_type`` (the contractions'), and
        ``window_dtype``, in which the loop's rows kernel gradient holds its window tensor
        (``tiles.rows_kernel_tangent``; the other routes ignore it).

    Returns:
      ``(x, k) -> y``, equal to ``values``, differentiable to any order.

    Raises:
      KeyError: for an unknown ``route`` (names come from the library, not from users).
    """
    if route == "tiles":
        return differentiated_by_loop(values, inputs, kernel, geom, **options)
    options.pop("window_dtype", None)
    tangent = functools.partial(_TANGENTS[route], geom=geom, **options)
    batch, filters, itemsize = inputs.shape[0], kernel.shape[-1], inputs.dtype.itemsize
    if route != "slices" or not sliced_kernel_tangent_by_rows(geom, batch, filters, itemsize):
        return split_bilinear(values, tangent)
    # Windows stacked as the tangent's, in its dtype: XLA computes one tensor for both.
    for_kernel = functools.partial(
        rows_kernel_tangent,
        geom=geom,
        preferred_element_type=options.get("preferred_element_type"),
        by_axis=sliced_by_axis(geom, batch, itemsize),
        fuse=False,
    )
    return split_bilinear(values, tangent, for_kernel)
