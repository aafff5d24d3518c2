"""Windows by strided slices, one batched contraction over all output positions.

The input is padded once (or, where that copy would outweigh the windows, each slice
after it is taken: ``_windows.padded_windows``); ``prod(kernel_size)`` strided slices,
stacked in Keras's feature order, form the ``(positions, batch, features)`` patch tensor
directly (no one-hot convolution as in "patches", no kernel reordering), and one
``dot_general`` with positions as its batch dimension multiplies every window by its own
filters.
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
from jlocalconv.implementations._windows import padded_windows, sliced_by_axis

# The inputs' gradient of a batched contraction is a batched dot of the cotangent with the
# kernel that contracts the kernel's last (filter) axis; XLA's CPU backend runs that
# transposed kernel far below its speed as a dot's first operand (a 91-position bank of
# 2600 x 26, 3 rows: 24 ms against 3.6 ms). With at least KERNEL_MAJOR_MIN_FILTERS_PER_ROW
# filters per batch row (the kernel outweighs the cotangent) "slices" derivatives write
# the inputs' tangent kernel first (``_common.contract_kernel_major``). value_and_grad by
# "slices" derivatives with and without it (one process, alternated), on 24 problems of
# sweep seeds 2-21, the suite and the real layers with 4.4-218 filters per row: 0.47-0.63x
# the time on nine (s21-25, s12-16, s13-24, s15-7, the suite's "same" 0.55x), 0.72-0.99x
# on eleven (YOLOv1's local layer 0.88x), 1.03-1.16x on four (s18-45, 2.8 ms, the most);
# temp memory unchanged. On 29 problems with 0.01-2.9 filters per row it ran 0.93-1.51x,
# and with one row (a product of vectors) there is nothing to gain: 0.98-1.05x on six.
KERNEL_MAJOR_MIN_FILTERS_PER_ROW = 4


def kernel_major_inputs_gradient(batch: int, filters: int) -> bool:
    """Whether "slices" derivatives take the inputs' gradient kernel first: at least two
    batch rows and ``KERNEL_MAJOR_MIN_FILTERS_PER_ROW`` filters per row.

    >>> kernel_major_inputs_gradient(8, 256), kernel_major_inputs_gradient(128, 16)
    (True, False)
    >>> kernel_major_inputs_gradient(1, 64)
    False
    """
    return batch > 1 and filters >= KERNEL_MAJOR_MIN_FILTERS_PER_ROW * batch


def local_conv_slices(
    inputs: jax.Array,
    kernel: jax.Array,
    geom: Geometry,
    *,
    precision: lax.PrecisionLike = None,
    preferred_element_type: jax.typing.DTypeLike | None = None,
    by_axis: bool = False,
    kernel_major: bool = False,
    gather: bool = True,
) -> jax.Array:
    """Local convolution via strided-slice windows + one ``dot_general``.

    ``by_axis`` stacks the windows one spatial axis at a time (the same values; see
    :func:`~jlocalconv.implementations._windows.windows`); ``kernel_major`` contracts
    kernel first (:func:`~jlocalconv.implementations._common.contract_kernel_major`: the
    same values, a faster transpose in the inputs where filters outnumber batch rows);
    ``gather`` takes undifferentiated windows by one gather where their stack is not one
    fused loop (:func:`~jlocalconv.implementations._windows.value_windows`; off in the
    tangent route, :func:`slices_tangent`).
    """
    patches = padded_windows(inputs, geom, by_axis=by_axis, gather=gather)
    contraction = contract_kernel_major if kernel_major else contract
    out = contraction(patches, kernel, precision, preferred_element_type)
    return positions_to_result(out, geom)


def slices_tangent(
    inputs: jax.Array, kernel: jax.Array, geom: Geometry, **options: Any
) -> jax.Array:
    """:func:`local_conv_slices` (same keywords) as a differentiated route: the tangent of
    :func:`~jlocalconv.implementations._bilinear.split_bilinear` in "tiles/slices" and
    "shifts", plain ``lax`` (its windows stacked, never gathered). Windows are stacked axis
    by axis where :func:`~jlocalconv.implementations._windows.sliced_by_axis` says so: on
    unstrided or small windows of many offsets XLA compiles and runs that transpose faster."""
    by_axis = sliced_by_axis(geom, inputs.shape[0], inputs.dtype.itemsize)
    return local_conv_slices(inputs, kernel, geom, by_axis=by_axis, gather=False, **options)
