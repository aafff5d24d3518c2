"""Tiles of output positions in a loop, each rematerialised: a bounded working set.

The output positions are cut into tiles of consecutive row-major positions (a box:
one index along the leading output axes, ``size`` indices along axis ``level``, all
of the later axes), so each tile's filters are a contiguous block of the kernel and
its windows come from one box of the input. A ``lax.scan`` over tiles extracts a
tile's windows with strided slices, contracts them with its block of filters and
writes the result into the output in place.

Why it is fast and lean on CPU: the ``prod(kernel_size)``-fold patch tensor exists
one tile at a time, small enough to stay in cache, and the loop body is wrapped in
``jax.checkpoint`` so autodiff saves only the inputs, never the patches: the
backward pass re-extracts each tile's windows, forms that tile's kernel gradient
(written straight into its block) and scatters its input gradient with a padded add.
Everything is plain ``lax`` (scan, slices, ``dot_general``, dynamic slices), so
``jvp``, ``linear_transpose``, ``vmap`` and gradients of any order work unchanged.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax

from jlocalconv.geometry import Geometry
from jlocalconv.implementations._common import contract, positions_to_result, result_dtype
from jlocalconv.implementations._windows import pad_spatial, padded, spatial_axis, windows

# Cost model constants (CPU, measured on a 2-core Zen 4; see ``plan_tiles``).
# A tile's working set stays below TILE_BYTES so its windows are still in cache
# when the contraction reads them ...
TILE_BYTES = 4 << 20
# ... and below 1/MIN_TILES of the whole patch tensor, which the one-shot paths
# (and lax) hold twice in the backward pass: the memory-lean guarantee ...
MIN_TILES = 8
# ... but there are at most MAX_TILES tiles: each loop iteration costs tens of
# microseconds of dispatch, which dominates tiles of one or two positions.
MAX_TILES = 64


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """How "tiles" cuts the output positions.

    Attributes:
      level: the output axis along which tiles take ``size`` consecutive indices;
        they take one index along earlier axes and all indices along later ones.
      size: a divisor of ``output_shape[level]``.
    """

    level: int
    size: int

    def counts(self, geom: Geometry) -> tuple[int, ...]:
        """The number of tiles along output axes ``0..level``."""
        out = geom.output_shape
        return (*out[: self.level], out[self.level] // self.size)

    def tile_positions(self, geom: Geometry) -> int:
        return self.size * math.prod(geom.output_shape[self.level + 1 :])


def position_bytes(geom: Geometry, batch: int, filters: int, itemsize: int) -> int:
    """Bytes one output position contributes to a tile: windows, filters, f32 outputs."""
    return itemsize * geom.feature_dim * (batch + filters) + 4 * batch * filters


def plan_tiles(
    geom: Geometry, batch: int, filters: int, itemsize: int, tile_bytes: int = TILE_BYTES
) -> TilePlan:
    """The tiling "tiles" uses: a deterministic cost model on static shapes only.

    A tile may hold ``budget = min(tile_bytes, patch_bytes / MIN_TILES) //
    position_bytes`` positions, where ``patch_bytes`` is the whole patch tensor, but at
    least ``ceil(output_items / MAX_TILES)``. The largest tile within that budget is
    chosen (the smallest above the lower bound if none fits between them).

    >>> from jlocalconv.geometry import make_geometry
    >>> plan_tiles(make_geometry((32, 32, 32, 16), 3), batch=32, filters=16, itemsize=4)
    TilePlan(level=0, size=2)
    """
    patch_bytes = itemsize * batch * geom.output_items * geom.feature_dim
    per_position = max(position_bytes(geom, batch, filters, itemsize), 1)
    lower = -(-geom.output_items // MAX_TILES)
    upper = max(lower, min(tile_bytes, patch_bytes // MIN_TILES) // per_position)
    plans = sorted(_all_plans(geom), key=lambda p: (p.tile_positions(geom), -p.level))
    fitting = [p for p in plans if p.tile_positions(geom) <= upper]
    if fitting and fitting[-1].tile_positions(geom) >= lower:
        return fitting[-1]
    return next(p for p in plans if p.tile_positions(geom) >= lower)


def _all_plans(geom: Geometry) -> list[TilePlan]:
    out = geom.output_shape
    return [
        TilePlan(level, size)
        for level in range(geom.ndim)
        for size in range(1, out[level] + 1)
        if out[level] % size == 0
    ]


def local_conv_tiles(
    inputs: jax.Array,
    kernel: jax.Array,
    geom: Geometry,
    *,
    precision: lax.PrecisionLike = None,
    preferred_element_type: jax.typing.DTypeLike | None = None,
    plan: TilePlan | None = None,
) -> jax.Array:
    """Local convolution over tiles of output positions (see the module docstring).

    ``plan`` defaults to :func:`plan_tiles` for this problem.
    """
    batch, filters = inputs.shape[0], kernel.shape[-1]
    if plan is None:
        plan = plan_tiles(geom, batch, filters, inputs.dtype.itemsize)
    padded_inputs, full = pad_spatial(inputs, geom), padded(geom)
    tile = _tile_geometry(full, plan)
    counts = plan.counts(geom)

    def body(out: jax.Array, xs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        index, filters_block = xs
        starts = _unravel(index, counts)
        region = _input_region(padded_inputs, full, tile, plan, starts)
        y = contract(windows(region, tile), filters_block, precision, preferred_element_type)
        at = [0] * out.ndim
        first = spatial_axis(geom)
        for axis, start in enumerate(starts):
            at[first + axis] = start * (plan.size if axis == plan.level else 1)
        return lax.dynamic_update_slice(out, positions_to_result(y, tile), _int32(at)), None

    n_tiles = math.prod(counts)
    blocks = kernel.reshape(n_tiles, plan.tile_positions(geom), *kernel.shape[1:])
    init = jnp.zeros(
        geom.result_shape(batch, filters), result_dtype(inputs, preferred_element_type)
    )
    # Save only the loop's inputs: the backward pass re-extracts each tile's windows.
    body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)
    out, _ = lax.scan(body, init, (jnp.arange(n_tiles, dtype=jnp.int32), blocks))
    return out


def _tile_geometry(full: Geometry, plan: TilePlan) -> Geometry:
    """The geometry of one tile's input box (already padded)."""
    extents = list(full.padded_shape)
    for axis in range(plan.level + 1):
        count = plan.size if axis == plan.level else 1
        extents[axis] = (count - 1) * full.strides[axis] + full.effective_kernel_size[axis]
    return dataclasses.replace(full, spatial_shape=tuple(extents))


def _unravel(index: jax.Array, counts: tuple[int, ...]) -> list[jax.Array]:
    """Row-major multi-index of tile ``index`` over ``counts``."""
    starts = []
    for count in reversed(counts):
        starts.append(index % count)
        index = index // count
    return starts[::-1]


def _input_region(
    padded_inputs: jax.Array,
    full: Geometry,
    tile: Geometry,
    plan: TilePlan,
    starts: list[jax.Array],
) -> jax.Array:
    """The input box under tile ``starts`` (a dynamic slice of the padded input)."""
    at = [0] * padded_inputs.ndim
    first = spatial_axis(full)
    for axis, start in enumerate(starts):
        step = plan.size if axis == plan.level else 1
        at[first + axis] = start * step * full.strides[axis]
    return lax.dynamic_slice(padded_inputs, _int32(at), tile.input_shape(padded_inputs.shape[0]))


def _int32(indices: list) -> list[jax.Array]:
    # dynamic_slice wants one index dtype; Python zeros would be int64 under x64.
    return [jnp.asarray(i, jnp.int32) for i in indices]
