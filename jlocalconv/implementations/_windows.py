"""Window extraction with strided slices: the ``(positions, batch, features)`` patch tensor.

A window offset ``o`` (one index per kernel axis) selects, for every output position,
the input element ``position * stride + o * dilation``: one strided ``lax.slice`` of
the padded input. Stacking the ``prod(kernel_size)`` slices next to the channel axis
gives every window flattened in Keras's order (``(k..., C)`` for channels_last,
``(C, k...)`` for channels_first), so the kernel is used as given. Slices are exact
copies (no one-hot convolution, no rounding), and their transpose is a padded add,
which XLA fuses.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
from jax import lax

from jlocalconv.geometry import Geometry


def spatial_axis(geom: Geometry) -> int:
    """The axis of the first spatial dimension in ``geom``'s (batch-major) format."""
    return 1 if geom.channels_last else 2


def pad_spatial(inputs: jax.Array, geom: Geometry) -> jax.Array:
    """Zero-pads the spatial axes by ``geom.padding`` (no copy when there is none)."""
    if all(lo == hi == 0 for lo, hi in geom.padding):
        return inputs
    config = [(0, 0, 0)] * inputs.ndim
    first = spatial_axis(geom)
    for i, (lo, hi) in enumerate(geom.padding):
        config[first + i] = (lo, hi, 0)
    return lax.pad(inputs, jnp.zeros((), inputs.dtype), config)


def padded(geom: Geometry) -> Geometry:
    """The same convolution seen on the already padded input (padding all zero)."""
    return dataclasses.replace(geom, spatial_shape=geom.padded_shape, padding=((0, 0),) * geom.ndim)


def windows(inputs: jax.Array, geom: Geometry) -> jax.Array:
    """Every window of an unpadded-geometry input as ``(output_items, batch, feature_dim)``.

    Args:
      inputs: ``geom.input_shape(batch)``; ``geom.padding`` must be all zero (apply
        :func:`pad_spatial` and use :func:`padded` first).
      geom: the geometry.

    Returns:
      The patch tensor, features in Keras's order for ``geom.data_format``.
    """
    batch = inputs.shape[0]
    offsets = itertools.product(*(range(k) for k in geom.kernel_size))
    slices = [window_slice(inputs, geom, offset) for offset in offsets]
    if geom.channels_last:  # (B, *out, W, C) -> (B, P, W*C)
        stacked = jnp.stack(slices, axis=-2).reshape(batch, geom.output_items, geom.feature_dim)
        return lax.transpose(stacked, (1, 0, 2))
    # (B, C, W, *out) -> (B, C*W, P): channels-first windows are ordered (C, k...).
    stacked = jnp.stack(slices, axis=2).reshape(batch, geom.feature_dim, geom.output_items)
    return lax.transpose(stacked, (2, 0, 1))


def window_slice(inputs: jax.Array, geom: Geometry, offset: tuple[int, ...]) -> jax.Array:
    """The input element under window ``offset`` for every output position.

    ``inputs`` as in :func:`windows`; the result is ``inputs`` with its spatial axes
    replaced by ``geom.output_shape``.
    """
    first = spatial_axis(geom)
    start, limit, strides = [0] * inputs.ndim, list(inputs.shape), [1] * inputs.ndim
    for i, (o, d, s, n) in enumerate(zip(offset, geom.dilation, geom.strides, geom.output_shape)):
        start[first + i] = o * d
        limit[first + i] = o * d + (n - 1) * s + 1
        strides[first + i] = s
    return lax.slice(inputs, start, limit, strides)
