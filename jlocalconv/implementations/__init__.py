"""Registry of local-convolution implementations and the "auto" choice.

Every implementation has the same contract::

    impl(inputs, kernel, geom, *, precision, preferred_element_type) -> result

``inputs`` and ``kernel`` are already validated against ``geom`` (a
:class:`jlocalconv.geometry.Geometry`); ``kernel`` is in Keras's layout for
``geom.data_format``; the result is ``(batch, *output_shape, filters)`` or
``(batch, filters, *output_shape)`` without bias. Implementations must support
every feature (both formats, 1-3+ spatial dims, padding, dilation, jit, vmap,
grad of any order, jvp, linear_transpose, low-precision dtypes).
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from jlocalconv.geometry import Geometry
from jlocalconv.implementations.patches import local_conv_patches
from jlocalconv.implementations.slices import local_conv_slices
from jlocalconv.implementations.tiles import local_conv_tiles

Implementation = Callable[..., jax.Array]

IMPLEMENTATIONS: dict[str, Implementation] = {
    "patches": local_conv_patches,
    "slices": local_conv_slices,
    "tiles": local_conv_tiles,
}


def choose(geom: Geometry, batch: int, filters: int, dtype: object, backend: str) -> str:
    """The implementation "auto" picks, from static shapes, dtype and backend only.

    Deterministic: the same arguments always give the same name.
    """
    del geom, batch, filters, dtype, backend
    return "patches"


def names() -> tuple[str, ...]:
    """Every accepted value of ``implementation=``, "auto" first."""
    return ("auto", *IMPLEMENTATIONS)
