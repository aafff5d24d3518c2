"""Windows by strided slices, one batched contraction over all output positions.

The input is padded once; ``prod(kernel_size)`` strided slices, stacked in Keras's
feature order, form the ``(positions, batch, features)`` patch tensor directly (no
one-hot convolution as in "patches", no kernel reordering), and one ``dot_general``
with positions as its batch dimension multiplies every window by its own filters.
One large contraction suits accelerators; on CPU "tiles" bounds the working set.
Everything is plain ``lax``, so "slices" also serves as the tangent route of
:func:`~jlocalconv.implementations._bilinear.split_bilinear` ("auto"'s ``"tiles/slices"``,
"shifts"), as :func:`slices_tangent`. Its windows are stacked all at once, also when
differentiated: the axis-by-axis stack (which "tiles" differentiates from) held 4-8x the
window tensor's bytes in value_and_grad on strided and 3-D problems, the one-shot stack
2x (sweep seed 5: 33 against 8 MiB); the tangent route stacks axis by axis only where
the last stage's input is about its output (unstrided windows) or small (see
``_windows.SLICED_BY_AXIS_MAX_INPUT_PER_OUTPUT`` and ``SLICED_BY_AXIS_MAX_STAGE_BYTES``).
"""

from __future__ import annotations

from typing import Any

import jax
from jax import lax

from jlocalconv.geometry import Geometry
from jlocalconv.implementations._common import (
    contract,
    contract_kernel_major,
    positions_to_result,
)
from jlocalconv.implementations._windows import pad_spatial, padded, sliced_by_axis, windows


def local_conv_slices(
    inputs: jax.Array,
    kernel: jax.Array,
    geom: Geometry,
    *,
    precision: lax.PrecisionLike = None,
    preferred_element_type: jax.typing.DTypeLike | None = None,
    by_axis: bool = False,
    kernel_major: bool = False,
) -> jax.Array:
    """Local convolution via strided-slice windows + one ``dot_general``.

    ``by_axis`` stacks the windows one spatial axis at a time (the same values; see
    :func:`~jlocalconv.implementations._windows.windows`); ``kernel_major`` contracts
    kernel first (:func:`~jlocalconv.implementations._common.contract_kernel_major`: the
    same values, a faster transpose in the inputs where filters outnumber batch rows).
    """
    patches = windows(pad_spatial(inputs, geom), padded(geom), by_axis=by_axis)
    contraction = contract_kernel_major if kernel_major else contract
    out = contraction(patches, kernel, precision, preferred_element_type)
    return positions_to_result(out, geom)


def slices_tangent(
    inputs: jax.Array, kernel: jax.Array, geom: Geometry, **options: Any
) -> jax.Array:
    """:func:`local_conv_slices` (same keywords) as a differentiated route: the tangent of
    :func:`~jlocalconv.implementations._bilinear.split_bilinear` in "tiles/slices" and
    "shifts". Windows are stacked axis by axis where
    :func:`~jlocalconv.implementations._windows.sliced_by_axis` says so: on unstrided
    or small windows of many offsets XLA compiles and runs that transpose faster."""
    by_axis = sliced_by_axis(geom, inputs.shape[0], inputs.dtype.itemsize)
    return local_conv_slices(inputs, kernel, geom, by_axis=by_axis, **options)
