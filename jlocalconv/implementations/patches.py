"""The design card's path: XLA patch extraction + one batched contraction.

This is exactly what ``jax.lax.conv_general_dilated_local`` does: build every
window with ``lax.conv_general_dilated_patches`` (a grouped convolution against a
one-hot kernel) and contract with ``lax.dot_general`` using output positions as
the batch dimension. It is the simplest correct path and the baseline the faster
implementations are measured against.
"""

from __future__ import annotations

import chex
import jax
from jax import lax

from jlocalconv.geometry import Geometry
from jlocalconv.implementations._common import (
    dimension_numbers,
    kernel_channels_major,
    patches_keras_order,
    positions_to_result,
)


def local_conv_patches(
    inputs: jax.Array,
    kernel: jax.Array,
    geom: Geometry,
    *,
    precision: lax.PrecisionLike = None,
    preferred_element_type: jax.typing.DTypeLike | None = None,
) -> jax.Array:
    """Local convolution via ``conv_general_dilated_patches`` + ``dot_general``."""
    batch = inputs.shape[0]
    patches = lax.conv_general_dilated_patches(
        inputs,
        filter_shape=geom.kernel_size,
        window_strides=geom.strides,
        padding=geom.padding,
        rhs_dilation=geom.dilation,
        dimension_numbers=dimension_numbers(geom),
        # The one-hot "kernel" must not round the copied values (TF32/bf16 passes).
        precision=lax.Precision.HIGHEST,
    )
    chex.assert_shape(patches, (batch, *geom.output_shape, geom.feature_dim))
    patches = patches.reshape(batch, geom.output_items, geom.feature_dim)
    # Reorder whichever of patches and kernel is smaller into the other's feature order.
    if batch < kernel.shape[-1]:
        patches = patches_keras_order(patches, geom)
    else:
        kernel = kernel_channels_major(kernel, geom)
    out = lax.dot_general(
        patches,
        kernel,
        dimension_numbers=(((2,), (1,)), ((1,), (0,))),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )  # (output_items, batch, filters)
    return positions_to_result(out, geom)
