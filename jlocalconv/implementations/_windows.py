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
import functools
import itertools
import math
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jlocalconv.geometry import Geometry

_Slicer = Callable[[jax.Array, Geometry, list[tuple[int, ...]]], list[jax.Array]]

# Stacking all prod(kernel_size) offsets at once is the fastest way to build windows, but
# its transpose (the input gradient) is one fusion that evaluates every offset's padded
# slice at every input element, and XLA compiles it slowly. Stacked one axis at a time,
# each element sums only k_i slices: value_and_grad compiled 1.5-3x faster from 49
# offsets on (DeepFace L4: 1.9 -> 1.1 s; 9x9 on 40x40x32: 7.1 -> 2.3 s) and ran 4-13%
# faster on three of four such problems (16% slower on 7x7 x 8 channels). Since the
# stages end with the axis of fewest inputs per output (``_stage_order``) it pays from
# about 20 offsets: 21-25 offsets (7x3 on 40x40x8, 5x5 on 64x64x8, 30x30x32 and DeepFace
# L6) ran value_and_grad in the tile loop 0.88-1.01x the one-shot stack's time, compiled
# in 0.5-0.8 s instead of 0.7-1.3 s and held less; 16 offsets (4x4 on 40x40x16) ran 6%
# slower and 9 (3x3, the suite's base and batch64) 13-17% slower. Values keep the one-shot
# stack, which was up to 50% faster. Only the tile loop uses it: its stages hold more
# bytes than the final stack on strided and 3-D windows, which a tile bounds and a whole
# window tensor ("slices") would not.
BY_AXIS_MIN_OFFSETS = 20
# "slices" differentiated (the derivative route of "tiles/slices" and of "shifts") stacks
# axis by axis too, from as many offsets, where the last stage keeps at most
# SLICED_BY_AXIS_MAX_INPUT_PER_OUTPUT input elements per output index along its axis: the
# backward pass holds that stage's k_i padded slices (see ``_stage_order``), about this
# ratio times the window tensor, which a whole window tensor (unlike a tile) does not
# bound. Unstrided windows (1.08-1.2): on the suite's mnist5x5 and 3d and five such shapes,
# value_and_grad compiled in 0.49-0.75x the time (mnist5x5 0.72 -> 0.35 s), held 0.73-0.9x
# the temp memory but one (1.18x, under lax's) and ran 0.66-1.1x the time but the suite's
# 3d (0.9-1.3x across runs). Strided ones (sweep seeds 5 and 6, 1.26-3.75) ran 0.34-1.15x
# the time but held up to 2.4x, over lax's on six of 27.
SLICED_BY_AXIS_MAX_INPUT_PER_OUTPUT = 1.25
# Any window goes axis by axis where that stage's input (the ratio times the window
# tensor) is at most SLICED_BY_AXIS_MAX_STAGE_BYTES: the extra memory is then small in
# absolute terms. value_and_grad of "auto" with and without it (one process, alternated,
# float32) on 50 strided sweep problems of seeds 2-20 that "auto" differentiates by
# "slices": up to 1 MiB (31 problems) 0.31-1.06x the time (under 0.6x on 14: s20-20 0.42x,
# s20-47 0.45x, s20-15 0.52x, s2-3 0.45x, s11-54 0.31x), compile time mostly 0.4-0.8x
# (s13-30 1.9 -> 0.6 s), temp at most 0.9 MiB over the one-shot stack's and 0.6 MiB over
# lax's; from 1.5 MiB it held 1.7-2.5 MiB more (over lax's + 1 MiB on s5-29 and s17-57),
# from 7 MiB it ran up to 1.5x slower (s5-10, s15-8, s19-50). Small stages pay from
# SLICED_BY_AXIS_MIN_OFFSETS offsets on: on 20 sweep problems of 8-19 offsets in two or
# more axes (seeds 2-19) 0.46-1.02x the time, 0.84x the geometric mean, but for a 0.07 ms
# one (s18-9, 1.29x).
SLICED_BY_AXIS_MAX_STAGE_BYTES = 1 << 20
SLICED_BY_AXIS_MIN_OFFSETS = 8
# In the backward pass XLA's CPU backend materialises every one of a later stage's k_i
# padded slices (each the size of that stage's input: the earlier stages' transposes read
# their sum through slices, and XLA holds the parts rather than recompute them), so a
# tile whose stage inputs outweigh its windows (few positions under wide dilated 3-D
# windows, one tile the whole problem) held up to 10x lax's temporaries (sweep s49-33:
# seven 647 KiB pads of its middle stage, 5.6 MiB against lax's 0.7). A later stage whose
# k_i copies of its input exceed STAGE_SELECT_MIN_RATIO times the windows it builds is
# instead a contraction with a one-hot matrix (``_selected``): its transpose is one
# contraction into one buffer, which XLA runs as a library call (no LLVM kernel to
# compile), at the price of ``extent`` multiply-adds per element. Only for the tile loop's
# inputs' tangent (the one transposed) and not beside the rows kernel gradient, which
# holds the whole window tensor anyway (there, on 30 problems of seeds 2-9 and 300-306,
# it ran 1.03x and 1.20x the time and lowered temp on 12). value_and_grad of "auto" with
# and without it (one process, alternated) on the 20 problems of sweep seeds 2 and 5-9
# that it changes (tuning): 0.89x the time (geometric mean; 0.50-1.54x), compile 0.75x,
# temp lower on all 20 (s6-34 28.6 -> 6.6 MiB, s7-40 22.2 -> 5.3); seeds 300-306 (21):
# 0.89x (0.46-1.87x), compile 0.79x, temp lower on all (s305-45 433 -> 78 MiB, 401 -> 182
# ms). Held out with the rule fixed, seeds 307-314 (14): 0.85x (0.22-1.71x: s311-15 41.5
# -> 9.0 ms, s310-39 85 -> 145 ms), compile 0.73x, temp lower on 12 and equal on 2. The
# suite's and real layers' programs are unchanged.
STAGE_SELECT_MIN_RATIO = 4
# "slices" pads its input once and stacks every offset's slice of the padded copy; where
# that copy outweighs the window tensor (more than UNPADDED_STACK_MIN_INPUT_PER_WINDOW
# padded input elements per window element: strided or dilated windows), XLA held it
# whole in value_and_grad (sweep s65-49, a 3x1x1 window strided 1x2x3: 18.8 of 33.7 MiB
# of temporaries, lax's 21.7), so there each slice is padded after it is taken
# (``unpadded_windows``). Every padded problem "slices" computed (tuning, 30 of seeds
# 2-30, one process, alternated): 0.97x the time, compile 1.05x, temp 0.5-2x, hence the
# bound. Held out (the 28 such problems of seeds 49-65 under the bound, s65-49 aside):
# forward 0.96x the time (geometric mean; 0.66-1.15x), value_and_grad 1.00x (0.71-1.15x),
# compile 0.96x, temp 0.98x (0.5-1.3x); s65-49: 33.7 -> 16.5 MiB, 43.5 -> 29.4 ms.
UNPADDED_STACK_MIN_INPUT_PER_WINDOW = 1.0
# XLA's CPU backend fuses a concatenate of at most STACK_FUSION_MAX_PARTS operands, with
# the slices that feed it, into one loop; from nine operands on it launches one fusion
# per slice, each writing its own buffer, and copies them into the concatenate (a 3x3
# window: ten kernel launches instead of one). It also merges nested concatenates along
# one axis, so :func:`stack` nests stacks of at most this many parts along new axes ...
STACK_FUSION_MAX_PARTS = 8
# ... but only up to STACK_FUSION_MAX_BYTES of result: the fused loop picks every
# element's source through the nested stacks, which costs more than the launches it
# saves on larger stacks. "slices" forward, one fused loop against the separate slices
# (one run, alternated): 0.35-0.89x the time with 1-25 KiB of windows (9 to 81 offsets;
# 0.15 -> 0.05 ms for a 9x9 window), 0.89-1.09x at 36 KiB-4 MiB of 3x3 windows,
# 1.16-1.35x at 0.4-1.8 MiB of 5x5 ones, and 1.5-2.1x in the suite's tile loops (base,
# "same", large5x5, DeepFace L6).
STACK_FUSION_MAX_BYTES = 32 << 10
# Differentiated "slices" values keep their window tensor for the kernel gradient. Where
# its one-shot stack is not one fused loop (``STACK_FUSION_MAX_PARTS``,
# ``STACK_FUSION_MAX_BYTES``), XLA's CPU backend wrote every offset's slice to a buffer of
# its own, copied them into the stack, then transposed the whole stack positions first:
# three window-sized buffers, where lax holds two (sweep s106-1, one of seed 106's two
# problems over the temp bounds: 6.9 MiB against lax's 4.9). Slices moved positions first
# by their own fusions and stacked as one fused loop write the tensor once in its final
# layout (s106-1: 2.5 MiB). value_and_grad of auto with and without it (one process,
# alternated, ``bench.studies.constant_ab --keys``; the problems whose program it changes):
# tuned on the 33 of sweep seeds 2200-2219, 0.81x the time (geometric mean), compile 0.76x,
# temp 0.82x; held out, the 27 of seeds 2220-2239: 0.82x (0.46-1.21x: s2228-25 2.3 -> 2.8
# ms), compile 0.76x, temp 0.87x, over the temp bounds 3 -> 1; s106-1 0.87x, temp 6.9 ->
# 2.5 MiB. The suite's stride2 (its only problem changed): 0.96x and 1.10x in two runs,
# temp 5.5 -> 3.7 MiB (lax's 5.3). Forward programs are unchanged (undifferentiated values
# are gathered).
POSITIONS_FIRST_PRIMAL_WINDOWS = True


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


def channels_last_padded(inputs: jax.Array, geom: Geometry) -> tuple[jax.Array, Geometry]:
    """``inputs`` channels-last and padded, and the :func:`padded` geometry that sees
    them so: each :func:`window_slice` is then ``(batch, *output_shape, channels)``."""
    if not geom.channels_last:
        inputs = jnp.moveaxis(inputs, 1, -1)
    last = dataclasses.replace(geom, data_format="channels_last")
    return pad_spatial(inputs, last), padded(last)


def windows(
    inputs: jax.Array,
    geom: Geometry,
    *,
    by_axis: bool = False,
    fuse: bool = False,
    shared: bool = False,
    select: bool = False,
    gather: bool = False,
) -> jax.Array:
    """Every window of an unpadded-geometry input as ``(output_items, batch, feature_dim)``.

    Args:
      inputs: ``geom.input_shape(batch)``; ``geom.padding`` must be all zero (apply
        :func:`pad_spatial` and use :func:`padded` first).
      geom: the geometry.
      by_axis: stack the offsets one spatial axis at a time rather than all at once:
        the same values, a cheaper transpose (see ``BY_AXIS_MIN_OFFSETS``).
      fuse: stack in one fused loop whatever the size (:func:`stack`), for a window
        tensor kept whole: each slice then writes no buffer of its own first.
      shared: in a loop body, where the one-shot stack is not one fused loop, take
        its slices at offsets XLA sees as run-time values, so that they compile to
        one kernel (:func:`shared_windows`); the same values.
      select: with ``by_axis``, take a stage whose input outweighs the windows by a
        one-hot contraction (:func:`_selects_by_contraction`); the same values, for
        windows whose transpose is taken.
      gather: where the one-shot stack is not one fused loop, one gather where
        undifferentiated (:func:`value_windows`).

    Returns:
      The patch tensor, features in Keras's order for ``geom.data_format``.
    """
    if _tiles_input(geom):
        return _disjoint_windows(inputs, geom)
    if by_axis:
        return _windows_by_axis(inputs, geom, fuse, select)
    nbytes = window_bytes(geom, inputs.shape[0], inputs.dtype.itemsize)
    if not _one_fusion(geom.window_items, nbytes, fuse):
        if shared:
            return shared_windows(inputs, geom, fuse)
        if gather:
            return value_windows(inputs, geom)
    return _stacked(inputs, geom, fuse, _static_slices)


def window_bytes(geom: Geometry, batch: int, itemsize: int) -> int:
    """Bytes of the whole window tensor: ``itemsize * batch * output_items * feature_dim``.

    >>> from jlocalconv.geometry import make_geometry
    >>> window_bytes(make_geometry((8, 63, 63, 16), 9), 8, 4)  # DeepFace L4: 120 MiB
    125452800
    """
    return itemsize * batch * geom.output_items * geom.feature_dim


def _stacked(inputs: jax.Array, geom: Geometry, fuse: bool, take: _Slicer) -> jax.Array:
    """:func:`windows`' one-shot stack of every offset's slice, each taken by ``take``."""
    batch = inputs.shape[0]
    slices = take(inputs, geom, list(_offsets(geom)))
    if geom.channels_last:  # (B, *out, W, C) -> (B, P, W*C)
        stacked = stack(slices, geom.ndim + 1, fuse=fuse)
        stacked = stacked.reshape(batch, geom.output_items, geom.feature_dim)
        return lax.transpose(stacked, (1, 0, 2))
    # (B, C, W, *out) -> (B, C*W, P): channels-first windows are ordered (C, k...).
    stacked = stack(slices, 2, fuse=fuse).reshape(batch, geom.feature_dim, geom.output_items)
    return lax.transpose(stacked, (2, 0, 1))


def _offsets(geom: Geometry) -> Iterator[tuple[int, ...]]:
    """Every window offset, row-major (Keras's feature order)."""
    return itertools.product(*(range(k) for k in geom.kernel_size))


def stack(parts: list[jax.Array], axis: int, *, fuse: bool = False) -> jax.Array:
    """``jnp.stack(parts, axis)`` (``axis`` non-negative); where the result is small
    (``STACK_FUSION_MAX_BYTES``) or ``fuse`` says so, one that XLA's CPU backend fuses
    into one loop with the parts' producers (``STACK_FUSION_MAX_PARTS``).

    More parts are stacked in nested groups of at most ``STACK_FUSION_MAX_PARTS``, each
    level along a new axis at ``axis`` (XLA keeps concatenates along different axes
    apart), then those axes are merged; a count with a prime factor over the bound is
    padded with copies of the last part up to the next count without one, and sliced.

    >>> parts = [jnp.full((2,), i) for i in range(11)]  # 11 -> 12 = 6 x 2
    >>> bool((stack(parts, 1) == jnp.stack(parts, 1)).all())
    True
    """
    count = len(parts)
    nbytes = count * parts[0].size * parts[0].dtype.itemsize
    if count <= STACK_FUSION_MAX_PARTS or not _one_fusion(count, nbytes, fuse):
        return jnp.stack(parts, axis)
    groups = _fusible_groups(count)
    padded_count = math.prod(groups)
    parts = parts + parts[-1:] * (padded_count - count)
    for size in reversed(groups):
        parts = [jnp.stack(parts[i : i + size], axis) for i in range(0, len(parts), size)]
    (x,) = parts
    x = x.reshape(*x.shape[:axis], padded_count, *x.shape[axis + len(groups) :])
    return lax.slice_in_dim(x, 0, count, axis=axis) if padded_count > count else x


def _one_fusion(count: int, nbytes: int, fuse: bool) -> bool:
    """Whether XLA fuses a :func:`stack` of ``count`` parts (``nbytes`` in all) and the
    slices feeding it into one loop (``STACK_FUSION_MAX_PARTS``)."""
    return count <= STACK_FUSION_MAX_PARTS or fuse or nbytes <= STACK_FUSION_MAX_BYTES


def _fusible_groups(count: int) -> list[int]:
    """Group sizes of at most ``STACK_FUSION_MAX_PARTS`` whose product is the least
    number at or above ``count`` that they factor (outermost first).

    >>> _fusible_groups(81), _fusible_groups(11), _fusible_groups(360)
    ([3, 3, 3, 3], [6, 2], [8, 5, 3, 3])
    """
    bound = STACK_FUSION_MAX_PARTS
    for padded_count in itertools.count(count):
        groups, rest = [], padded_count
        while rest > 1:
            size = max(d for d in range(1, bound + 1) if rest % d == 0)
            if size == 1:
                break
            groups.append(size)
            rest //= size
        if rest == 1:
            return groups
    raise AssertionError("unreachable: powers of two factor")


def by_axis_derivatives(geom: Geometry) -> bool:
    """Whether differentiated windows of ``geom`` are built axis by axis (``BY_AXIS_MIN_OFFSETS``).

    >>> from jlocalconv.geometry import make_geometry
    >>> by_axis_derivatives(make_geometry((8, 63, 63, 16), 9))  # 81 offsets
    True
    >>> by_axis_derivatives(make_geometry((8, 9, 9, 16), 5))  # 25 offsets
    True
    >>> by_axis_derivatives(make_geometry((8, 9, 9, 16), 4))
    False
    """
    return geom.window_items >= BY_AXIS_MIN_OFFSETS


def sliced_by_axis(geom: Geometry, batch: int, itemsize: int) -> bool:
    """Whether differentiated "slices" builds ``geom``'s windows axis by axis: windows
    of at least ``BY_AXIS_MIN_OFFSETS`` offsets whose last stage (:func:`_stage_order`)
    has at most ``SLICED_BY_AXIS_MAX_INPUT_PER_OUTPUT`` input elements per output index
    along its axis, and windows of at least ``SLICED_BY_AXIS_MIN_OFFSETS`` offsets whose
    last stage has an input of at most ``SLICED_BY_AXIS_MAX_STAGE_BYTES`` (that ratio times
    the :func:`window_bytes` of ``batch`` rows of ``itemsize`` bytes).

    >>> from jlocalconv.geometry import make_geometry
    >>> sliced_by_axis(make_geometry((32, 28, 28, 1), 5), 32, 4)  # 25 offsets, 28 rows -> 24
    True
    >>> strided = make_geometry((256, 28, 28, 1), 5, 2)  # 28 rows -> 12: 8.6 MB of stage
    >>> sliced_by_axis(strided, 256, 4), sliced_by_axis(strided, 8, 4)  # or 0.27 MB
    (False, True)
    >>> three = make_geometry((64, 28, 28, 1), 3)  # 9 offsets: 1.7 MB of stage, or 0.2
    >>> sliced_by_axis(three, 64, 4), sliced_by_axis(three, 8, 4)
    (False, True)
    """
    if geom.window_items < SLICED_BY_AXIS_MIN_OFFSETS:
        return False
    full = padded(geom)
    last = _stage_order(full)[-1]
    ratio = full.spatial_shape[last] / full.output_shape[last]
    if ratio <= SLICED_BY_AXIS_MAX_INPUT_PER_OUTPUT and by_axis_derivatives(geom):
        return True
    return ratio * window_bytes(geom, batch, itemsize) <= SLICED_BY_AXIS_MAX_STAGE_BYTES


def _windows_by_axis(
    inputs: jax.Array, geom: Geometry, fuse: bool = False, select: bool = False
) -> jax.Array:
    """:func:`windows` one spatial axis at a time, in :func:`_stage_order`.

    Axis i of extent S becomes ``out_i`` and a new axis ``k_i`` lands after batch (and
    channels, for channels_first) among the ``k`` axes already there in axis order, so
    the result is already ``(o1, ..., oN, B, [C,] k1, ..., kN[, C])``. Each stage
    transposes to a sum of ``k_i`` padded slices instead of ``prod(kernel_size)`` (see
    ``BY_AXIS_MIN_OFFSETS``); with ``select``, a later stage that
    :func:`_selects_by_contraction` to a one-hot contraction.
    """
    n, first = geom.ndim, spatial_axis(geom)
    spatial = tuple(range(first, first + n))
    others = tuple(a for a in range(inputs.ndim) if a not in spatial)  # (B, C) or (B,)
    x = lax.transpose(inputs, (*spatial, *others))
    lands = n + len(others) - (1 if geom.channels_last else 0)
    done: list[int] = []
    window_items = geom.output_items * inputs.shape[0] * geom.feature_dim
    for i in _stage_order(geom):
        at = lands + sum(j < i for j in done)
        if select and done and _selects_by_contraction(x.size, geom.kernel_size[i], window_items):
            x = _selected(x, i, at, geom, i)
        else:
            x = _sliding(x, i, at, geom, i, fuse)
        done.append(i)
    return x.reshape(geom.output_items, inputs.shape[0], geom.feature_dim)


def _stage_order(geom: Geometry) -> list[int]:
    """The order of :func:`_windows_by_axis`'s stages: the axis with the fewest input
    elements per output index (``spatial / output``) among those with ``k_i > 1`` last.

    Why: the backward pass transposes the last stage first, and XLA materialises its
    ``k_i`` padded slices (each the size of that stage's input, ``spatial_i /
    output_i`` times the final window tensor) because the earlier stages' transposes
    read their sum through ``k_i`` slices; the other stages' pads fuse. Last-axis-first
    (the old order) put a tile of one output row of DeepFace L4 last: nine pads of nine
    input rows each. This order cut L4's value_and_grad temp from 24.7 to 10.2 MiB
    (569 -> 446 ms, compile 1.8 -> 0.9 s); sweep problem s8-51 (``6x25x21``, window
    ``1x9x6``, dilation 3, strides ``1x3x2``) from 8.2 to 2.3 MiB (13.0 -> 6.6 ms).

    >>> from jlocalconv.geometry import make_geometry
    >>> _stage_order(make_geometry((2, 9, 63, 16), 9))  # a tile of one L4 output row
    [0, 1]
    >>> _stage_order(make_geometry((2, 2, 25, 21, 133), (1, 9, 6), (1, 3, 2), dilation=3))
    [0, 1, 2]
    """
    per_output = [s / o for s, o in zip(geom.spatial_shape, geom.output_shape)]
    return sorted(range(geom.ndim), key=lambda i: (geom.kernel_size[i] > 1, -per_output[i]))


def _sliding(
    x: jax.Array, axis: int, lands: int, geom: Geometry, i: int, fuse: bool = False
) -> jax.Array:
    """Spatial ``axis`` of ``x`` -> ``geom.output_shape[i]`` positions, with the window
    offsets along ``geom``'s axis ``i`` as a new axis at ``lands``."""
    out, stride, dilation = geom.output_shape[i], geom.strides[i], geom.dilation[i]
    slices = [
        lax.slice_in_dim(x, o * dilation, o * dilation + (out - 1) * stride + 1, stride, axis)
        for o in range(geom.kernel_size[i])
    ]
    return stack(slices, lands, fuse=fuse)


def _selects_by_contraction(stage_items: int, offsets: int, window_items: int) -> bool:
    """Whether a stage after the first, over ``stage_items`` input elements with
    ``offsets`` window offsets, is a one-hot contraction (:func:`_selected`): where
    ``offsets * stage_items`` is over ``STAGE_SELECT_MIN_RATIO`` times the
    ``window_items`` of the windows it builds.

    >>> _selects_by_contraction(1000, 7, 1000), _selects_by_contraction(1000, 3, 1000)
    (True, False)
    """
    return offsets * stage_items > STAGE_SELECT_MIN_RATIO * window_items


def _selected(x: jax.Array, axis: int, lands: int, geom: Geometry, i: int) -> jax.Array:
    """:func:`_sliding` (the same arguments) as one contraction of ``x`` with a one-hot
    selection matrix.

    Exact (each result element is one input element times one, plus zeros; HIGHEST
    precision keeps float32 whole on TPU and GPU), and its transpose is one
    contraction into one buffer of the stage's input (see ``STAGE_SELECT_MIN_RATIO``).
    """
    size, out = x.shape[axis], geom.output_shape[i]
    stride, dilation, offsets = geom.strides[i], geom.dilation[i], geom.kernel_size[i]
    index = np.arange(out)[:, None] * stride + np.arange(offsets)[None, :] * dilation
    select = (np.arange(size)[:, None, None] == index[None]).astype(x.dtype)
    numbers = (((axis,), (0,)), ((), ()))
    y = lax.dot_general(x, jnp.asarray(select), numbers, precision=lax.Precision.HIGHEST)
    # y is (x's other axes in order, out, offsets): out goes back to ``axis`` and the
    # offsets to ``lands`` (as ``_sliding``'s stack puts them).
    kept = [a for a in range(x.ndim) if a != axis]
    order = [kept.index(a) if a != axis else len(kept) for a in range(x.ndim)]
    order.insert(lands, len(kept) + 1)
    return lax.transpose(y, tuple(order))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def shared_windows(inputs: jax.Array, geom: Geometry, fuse: bool = False) -> jax.Array:
    """:func:`windows`' one-shot stack, its slices compiled once (see ``_shared_slices``).

    Differentiated, the tangent windows are plain static slices, whose transpose (the
    input gradient) is a padded add that XLA fuses: a dynamic slice would transpose to
    one dynamic update per offset, which compiled slower than the kernels it saves.

    >>> from jlocalconv.geometry import make_geometry
    >>> geom = make_geometry((2, 5, 6, 3), (3, 2), (1, 2))
    >>> x = jnp.arange(2 * 5 * 6 * 3.0).reshape(2, 5, 6, 3)
    >>> bool((shared_windows(x, geom) == windows(x, geom)).all())
    True
    """
    return _stacked(inputs, geom, fuse, _shared_slices)


@shared_windows.defjvp
def _shared_windows_jvp(geom: Geometry, fuse: bool, primals: tuple, tangents: tuple) -> tuple:
    ((x,), (dx,)) = primals, tangents
    return shared_windows(x, geom, fuse), _stacked(dx, geom, fuse, _static_slices)


def _static_slices(inputs: jax.Array, geom: Geometry, offsets: list[tuple[int, ...]]) -> list:
    return [window_slice(inputs, geom, offset) for offset in offsets]


def _shared_slices(inputs: jax.Array, geom: Geometry, offsets: list[tuple[int, ...]]) -> list:
    """Every offset's :func:`window_slice`, each one identical fusion for XLA.

    Why: XLA's CPU backend compiles every distinct fusion into an LLVM module of its
    own, and a static slice at each offset is a distinct one (10-36 ms apiece on a
    2-core host: the copy over the channel axis is unrolled, more so for more
    channels): a 3x3 window's nine slices were 40-50% of value_and_grad's compile time
    in the tile loop. With the offsets as run-time scalars every slice is the same
    fusion, which XLA compiles once and reuses. ``optimization_barrier`` keeps XLA
    from folding them back into constants, but only in a loop body, which receives
    them as loop operands: elsewhere XLA drops the barrier and folds them (a "slices"
    forward kept its 100 static slice kernels), so only the tile loop shares. They
    are in range by construction: no negative-index select
    (``allow_negative_indices=False``; one more kernel each).
    Strides go to a static slice after the dynamic one: the same for every offset.
    """
    first = spatial_axis(geom)
    # One scalar per axis and offset, so that no fusion sees the same scalar twice
    # (equal offsets along two axes would give it one operand fewer: another kernel).
    starts = lax.optimization_barrier(
        tuple(
            tuple(jnp.int32(o * d) for o in range(k))
            for k, d in zip(geom.kernel_size, geom.dilation)
        )
    )
    sizes, strides = list(inputs.shape), [1] * inputs.ndim
    for i, (n, s) in enumerate(zip(geom.output_shape, geom.strides)):
        sizes[first + i], strides[first + i] = (n - 1) * s + 1, s
    strided = any(s > 1 for s in strides)
    parts = []
    for offset in offsets:
        index = [jnp.int32(0)] * inputs.ndim
        for i, o in enumerate(offset):
            index[first + i] = starts[i][o]
        part = lax.dynamic_slice(inputs, index, sizes, allow_negative_indices=False)
        if strided:
            part = lax.slice(part, [0] * part.ndim, part.shape, strides)
        parts.append(part)
    return parts


def window_slice(inputs: jax.Array, geom: Geometry, offset: tuple[int, ...]) -> jax.Array:
    """The input element under window ``offset`` for every output position.

    ``inputs`` unpadded for ``geom.padding`` (already padded where it is zero, as in
    :func:`windows`): the positions whose element lies in the input are sliced, and
    zero-padded to all of them. The result is ``inputs`` with its spatial axes replaced
    by ``geom.output_shape``.
    """
    first = spatial_axis(geom)
    start, limit, strides = [0] * inputs.ndim, list(inputs.shape), [1] * inputs.ndim
    pads = [(0, 0, 0)] * inputs.ndim
    for i, (o, d, s, n) in enumerate(zip(offset, geom.dilation, geom.strides, geom.output_shape)):
        begin = o * d - geom.padding[i][0]  # input index of output position 0
        first_in = min(n, -(begin // s)) if begin < 0 else 0
        end_in = max(first_in, min(n, (geom.spatial_shape[i] - 1 - begin) // s + 1))
        if end_in == first_in:  # every position in the padding
            shape = list(inputs.shape)
            shape[first : first + geom.ndim] = geom.output_shape
            return jnp.zeros(shape, inputs.dtype)
        start[first + i] = begin + first_in * s
        limit[first + i] = begin + (end_in - 1) * s + 1
        strides[first + i] = s
        pads[first + i] = (first_in, n - end_in, 0)
    sliced = lax.slice(inputs, start, limit, strides)
    if all(p == (0, 0, 0) for p in pads):
        return sliced
    return lax.pad(sliced, jnp.zeros((), inputs.dtype), pads)


def padded_windows(
    inputs: jax.Array, geom: Geometry, *, by_axis: bool = False, gather: bool = False
) -> jax.Array:
    """:func:`windows` of ``inputs`` padded by ``geom.padding`` (the other arguments'
    meaning as there): "slices"' windows.

    Where the padded input outweighs the window tensor
    (``UNPADDED_STACK_MIN_INPUT_PER_WINDOW``), a one-shot stack of static slices pads each
    slice after taking it (:func:`unpadded_windows`), and gathered values pad inside
    (:func:`value_windows`); elsewhere the input is padded first.

    >>> from jlocalconv.geometry import make_geometry
    >>> geom = make_geometry((2, 6, 9, 3), (3, 1), (1, 3), padding="same", dilation=2)
    >>> x = jnp.arange(2 * 6 * 9 * 3.0).reshape(2, 6, 9, 3)
    >>> bool((padded_windows(x, geom) == windows(pad_spatial(x, geom), padded(geom))).all())
    True
    """
    full = padded(geom)
    light = input_per_output(geom) <= UNPADDED_STACK_MIN_INPUT_PER_WINDOW * geom.window_items
    if by_axis or _tiles_input(full) or light:
        return windows(pad_spatial(inputs, geom), full, by_axis=by_axis, gather=gather)
    nbytes = window_bytes(geom, inputs.shape[0], inputs.dtype.itemsize)
    if gather and not _one_fusion(geom.window_items, nbytes, False):
        return value_windows(inputs, geom)
    return unpadded_windows(inputs, geom)


def unpadded_windows(inputs: jax.Array, geom: Geometry) -> jax.Array:
    """:func:`windows`' one-shot stack (the same values) of the *unpadded* input: each
    offset's slice is taken where it overlaps the input and padded after
    (:func:`window_slice`), so no padded copy of the input exists.

    >>> from jlocalconv.geometry import make_geometry
    >>> geom = make_geometry((2, 5, 7, 3), (3, 2), (2, 3), padding="same", dilation=2)
    >>> x = jnp.arange(2 * 5 * 7 * 3.0).reshape(2, 5, 7, 3)
    >>> bool((unpadded_windows(x, geom) == windows(pad_spatial(x, geom), padded(geom))).all())
    True
    """
    return _stacked(inputs, geom, False, _static_slices)


def disjoint(geom: Geometry) -> bool:
    """Whether ``geom``'s windows (after padding) are disjoint and cover the padded input.

    Their tensor is then a reshape of the input, no larger than it, and its derivative a
    transpose (see :func:`windows`).

    >>> from jlocalconv.geometry import make_geometry
    >>> disjoint(make_geometry((32, 20000, 1), 10, 10)), disjoint(make_geometry((1, 9, 1), 3))
    (True, False)
    """
    return _tiles_input(padded(geom))


def input_per_output(geom: Geometry) -> float:
    """Padded input elements per output position (per batch row and channel).

    The one-shot window stack's transpose (the input gradient) is one fusion that sums,
    at every padded input element, every window offset's padded slice: work in
    proportion to ``padded input * window_items``, against ``output_items *
    window_items`` for the windows themselves. This ratio is that overhead.

    >>> from jlocalconv.geometry import make_geometry
    >>> input_per_output(make_geometry((1, 12, 12, 1), 3))  # 144 elements, 100 positions
    1.44
    >>> input_per_output(make_geometry((1, 19, 11, 16, 1), (9, 5, 8), (3, 1, 1), dilation=2))
    557.3333333333334
    """
    return math.prod(geom.padded_shape) / geom.output_items


def gathered_windows(inputs: jax.Array, geom: Geometry) -> jax.Array:
    """:func:`windows` as one ``lax.gather``: ``(output_items, batch, feature_dim)``.

    The window starts are static (one ``(position, offset)`` index pair each, built in
    NumPy), so XLA emits one small gather kernel however many offsets there are, where
    a stack is one slice (and more LLVM) per offset. For a window tensor kept whole,
    written once and read once (the residual of ``tiles.rows_kernel_tangent``).
    ``inputs`` and ``geom`` as in :func:`windows` (already padded).

    >>> from jlocalconv.geometry import make_geometry
    >>> geom = make_geometry((2, 5, 6, 3), (3, 2), (1, 2), dilation=(1, 2))
    >>> x = jnp.arange(2 * 5 * 6 * 3.0).reshape(2, 5, 6, 3)
    >>> bool((gathered_windows(x, geom) == windows(x, geom)).all())
    True
    """
    n, first = geom.ndim, spatial_axis(geom)
    spatial = tuple(range(first, first + n))
    starts = _window_starts(geom)  # (output_items, window_items, ndim)
    # Features in Keras's order: (k..., C) for channels_last, (C, k...) for channels_first.
    offset_dims = (1, 3) if geom.channels_last else (1, 2)
    numbers = lax.GatherDimensionNumbers(
        offset_dims=offset_dims, collapsed_slice_dims=spatial, start_index_map=spatial
    )
    sizes = [1] * inputs.ndim
    sizes[0], sizes[-1 if geom.channels_last else 1] = inputs.shape[0], geom.channels
    mode = lax.GatherScatterMode.PROMISE_IN_BOUNDS  # in range by construction
    out = lax.gather(inputs, starts, numbers, tuple(sizes), mode=mode)
    return out.reshape(geom.output_items, inputs.shape[0], geom.feature_dim)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def value_windows(inputs: jax.Array, geom: Geometry) -> jax.Array:
    """:func:`gathered_windows` where undifferentiated; differentiated, the one-shot stack
    of static slices, values and tangents.

    Why the gather: where a stack is not one fused loop (``STACK_FUSION_MAX_PARTS``), XLA's
    CPU backend compiles each offset's slice into an LLVM module of its own (10-36 ms
    apiece, more for more channels); one gather kernel moves the same bytes. Forward of
    "slices" values, the stack against the gather (one process, alternated) on the 60
    problems of sweep seeds 2-8 whose "auto" values are one-shot slices not fused into
    one loop (tuning): 0.90x the time (geometric mean; 0.35-1.57x: s2-56 0.16 -> 0.06 ms,
    s4-16 21.6 -> 8.5 ms; s7-6, 213 rows of a 3x7 input, 0.65 -> 1.03 ms), compile 0.19x
    (0.03-0.55x: s6-32's 324 offsets 4.5 -> 0.16 s; the suite's batch1 0.31 -> 0.08 s).
    Held out (the first 30 such problems of seeds 40-42): 0.99x the time (0.72-1.48x:
    s41-31, bf16, 1.0 -> 1.5 ms; s42-6 1.7 -> 2.4 ms), compile 0.19x.

    Why not the gather under differentiation: its transpose would be a scatter where the
    stack's is a padded add that XLA fuses, and value_and_grad of "slices" with the gather
    for its values only (the tangent stacked) ran 1.12x slower (geometric mean of 14
    problems of seeds 2-7; s5-29 2.2 -> 4.1 ms), though it compiled 2.3x faster.
    ``inputs`` as in :func:`padded_windows` (padded here, by ``geom.padding``).

    >>> from jlocalconv.geometry import make_geometry
    >>> geom = make_geometry((2, 5, 6, 3), (3, 2), (1, 2))
    >>> x = jnp.arange(2 * 5 * 6 * 3.0).reshape(2, 5, 6, 3)
    >>> bool((value_windows(x, geom) == windows(x, geom)).all())
    True
    """
    return gathered_windows(pad_spatial(inputs, geom), padded(geom))


@value_windows.defjvp
def _value_windows_jvp(geom: Geometry, primals: tuple, tangents: tuple) -> tuple:
    ((x,), (dx,)) = primals, tangents
    return _primal_windows(x, geom), _stacked(dx, geom, False, _static_slices)


def _primal_windows(inputs: jax.Array, geom: Geometry) -> jax.Array:
    """:func:`value_windows`' values under differentiation (never transposed): where
    their one-shot stack is not one fused loop, each offset's slice moved positions first
    and the slices stacked as one (see ``POSITIONS_FIRST_PRIMAL_WINDOWS``)."""
    nbytes = window_bytes(geom, inputs.shape[0], inputs.dtype.itemsize)
    if not POSITIONS_FIRST_PRIMAL_WINDOWS or _one_fusion(geom.window_items, nbytes, False):
        return _stacked(inputs, geom, False, _static_slices)
    return _positions_first(_static_slices(inputs, geom, list(_offsets(geom))), geom)


def _positions_first(slices: list[jax.Array], geom: Geometry) -> jax.Array:
    """The window tensor ``(P, B, F)`` of every offset's slice, each moved positions
    first (by its own fusion) and stacked as one fused loop, in the tensor's layout."""
    nd = geom.ndim
    if geom.channels_last:  # (B, *out, C) -> (*out, B, C), stacked to (*out, B, W, C)
        order, lands = (*range(1, nd + 1), 0, nd + 1), nd + 1
    else:  # (B, C, *out) -> (*out, B, C), stacked to (*out, B, C, W): features (C, k...)
        order, lands = (*range(2, nd + 2), 0, 1), nd + 2
    moved = [lax.transpose(part, order) for part in slices]
    stacked = stack(moved, lands, fuse=True)
    return stacked.reshape(geom.output_items, slices[0].shape[0], geom.feature_dim)


def _window_starts(geom: Geometry) -> np.ndarray:
    """Every window offset's input index at every output position, row-major both."""

    def grid(extents, steps):
        axes = [np.arange(e) * s for e, s in zip(extents, steps)]
        return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, geom.ndim)

    positions = grid(geom.output_shape, geom.strides)
    offsets = grid(geom.kernel_size, geom.dilation)
    return (positions[:, None, :] + offsets[None, :, :]).astype(np.int32)


def _tiles_input(geom: Geometry) -> bool:
    """Whether the windows are disjoint and cover the input: stride == window, no dilation."""
    return all(
        s == k and d == 1 and n * k == extent
        for s, k, d, n, extent in zip(
            geom.strides, geom.kernel_size, geom.dilation, geom.output_shape, geom.spatial_shape
        )
    )


def _disjoint_windows(inputs: jax.Array, geom: Geometry) -> jax.Array:
    """:func:`windows` when the windows tile the input: a reshape and one transpose.

    Each spatial axis ``n * k`` splits into ``(n, k)``; no strided slices are taken, and
    the derivative is the inverse transpose instead of ``prod(kernel_size)`` padded adds
    (the 1-D genomic layer of the bench, window 10 and stride 10, is such a problem).
    """
    batch, nd = inputs.shape[0], geom.ndim
    split = [x for n, k in zip(geom.output_shape, geom.kernel_size) for x in (n, k)]
    outs, wins = list(range(0, 2 * nd, 2)), list(range(1, 2 * nd, 2))
    if geom.channels_last:  # (B, n1, k1, ..., C) -> (n..., B, k..., C)
        x = inputs.reshape(batch, *split, geom.channels)
        order = (*(1 + a for a in outs), 0, *(1 + a for a in wins), 2 * nd + 1)
    else:  # (B, C, n1, k1, ...) -> (n..., B, C, k...)
        x = inputs.reshape(batch, geom.channels, *split)
        order = (*(2 + a for a in outs), 0, 1, *(2 + a for a in wins))
    x = lax.transpose(x, order)
    return x.reshape(geom.output_items, batch, geom.feature_dim)
