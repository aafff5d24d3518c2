"""Derivative routes: any route's values, differentiated by "slices", "patches" or the loop.

Local convolution is bilinear, so the route that computes undifferentiated values and
the route that computes values and tangents under differentiation can differ
(:func:`~jlocalconv.implementations._bilinear.split_bilinear`). A *derivative route*
names the second: "slices" and "patches" (plain ``lax``, transposed by JAX; "slices"
takes its kernel gradient by rows where
:func:`~jlocalconv.implementations.tiles.sliced_kernel_tangent_by_rows` says so),
"tiles" (the tile loop's own tangents,
:func:`~jlocalconv.implementations.tiles.differentiated_by_loop`) or "products"
(elementwise, for windows of few features: :mod:`~jlocalconv.implementations.products`,
whose differentiated values are the value route's own).
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
from jlocalconv.implementations.products import differentiated_by_products
from jlocalconv.implementations.slices import kernel_major_inputs_gradient, slices_tangent
from jlocalconv.implementations.tiles import (
    differentiated_by_loop,
    rows_kernel_tangent,
    sliced_kernel_tangent_by_rows,
)

# The plain-lax tangents (a value route differentiated by one of these is transposed by
# JAX); "tiles" is the loop, built by differentiated_by_loop, and "products" the
# elementwise tangents of differentiated_by_products.
_TANGENTS: dict[str, Callable[..., jax.Array]] = {
    "patches": local_conv_patches,
    "slices": slices_tangent,
}
DERIVATIVE_ROUTES = (*_TANGENTS, "tiles", "products")


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
      values: the undifferentiated route, bilinear; never transposed ("products" also
        takes its differentiated values from it).
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
    if route == "products":  # elementwise: no precision
        pet = options.get("preferred_element_type")
        return differentiated_by_products(values, geom, preferred_element_type=pet)
    tangent = functools.partial(_TANGENTS[route], geom=geom, **options)
    if route != "slices":
        return split_bilinear(values, tangent)
    batch, filters, itemsize = inputs.shape[0], kernel.shape[-1], inputs.dtype.itemsize
    # Only the inputs' tangent, which reverse mode transposes into their gradient: the
    # differentiated values are computed forward, where kernel first is a transpose more.
    on_inputs = tangent
    if kernel_major_inputs_gradient(batch, filters):
        on_inputs = functools.partial(tangent, kernel_major=True)
    if not sliced_kernel_tangent_by_rows(geom, batch, filters, itemsize):
        return split_bilinear(values, on_inputs, tangent, tangent_value=tangent)
    # Windows stacked as the tangent's, in its dtype: XLA computes one tensor for both.
    for_kernel = functools.partial(
        rows_kernel_tangent,
        geom=geom,
        preferred_element_type=options.get("preferred_element_type"),
        by_axis=sliced_by_axis(geom, batch, itemsize),
        fuse=False,
    )
    return split_bilinear(values, on_inputs, for_kernel, tangent_value=tangent)
