"""Windows by strided slices, one batched contraction over all output positions.

The input is padded once; ``prod(kernel_size)`` strided slices, stacked in Keras's
feature order, form the ``(positions, batch, features)`` patch tensor directly (no
one-hot convolution as in "patches", no kernel reordering), and one ``dot_general``
with positions as its batch dimension multiplies every window by its own filters.
One large contraction suits accelerators; on CPU "tiles" bounds the working set.
"""

from __future__ import annotations

import jax
from jax import lax

from jlocalconv.geometry import Geometry
from jlocalconv.implementations._common import contract, positions_to_result
from jlocalconv.implementations._windows import pad_spatial, padded, windows


def local_conv_slices(
    inputs: jax.Array,
    kernel: jax.Array,
    geom: Geometry,
    *,
    precision: lax.PrecisionLike = None,
    preferred_element_type: jax.typing.DTypeLike | None = None,
) -> jax.Array:
    """Local convolution via strided-slice windows + one ``dot_general``."""
    patches = windows(pad_spatial(inputs, geom), padded(geom))
    out = contract(patches, kernel, precision, preferred_element_type)
    return positions_to_result(out, geom)
