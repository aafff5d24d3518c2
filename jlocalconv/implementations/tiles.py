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
With at most ``ROWS_KERNEL_TANGENT_MAX_BATCH`` batch rows the kernel gradient is instead
one fused multiply-add per row over the whole window tensor (:func:`rows_kernel_tangent`),
which XLA's CPU backend runs faster than the loop's thin contraction over the rows.
Everything is plain ``lax`` (scan, slices, ``dot_general``, dynamic slices), so
``jvp``, ``linear_transpose``, ``vmap`` and gradients of any order work unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jlocalconv.geometry import Geometry
from jlocalconv.implementations._bilinear import differentiated_as, split_bilinear
from jlocalconv.implementations._common import (
    contract,
    contract_per_position,
    positions_to_result,
    result_dtype,
)
from jlocalconv.implementations._windows import (
    by_axis_derivatives,
    disjoint,
    gathered_windows,
    input_per_output,
    pad_spatial,
    padded,
    sliced_by_axis,
    spatial_axis,
    window_bytes,
    windows,
)
from jlocalconv.implementations.slices import kernel_major_inputs_gradient, local_conv_slices

# Cost model constants (CPU; tuned on a shared 2-core Zen 4, see ``plan_tiles``).
# A tile's working set (windows, filter block, f32 outputs) stays below TILE_BYTES so
# the windows are still in cache when the contraction reads them ...
TILE_BYTES = 4 << 20
# ... and below 2/MIN_TILES of the patch tensor (which the one-shot paths, and lax,
# hold twice in the backward pass), in at least MIN_TILES tiles: the memory bound ...
MIN_TILES = 8
# ... but a tile is never below MIN_TILE_BYTES nor are there more than MAX_TILES:
# every loop iteration costs tens of microseconds of dispatch (far more on a loaded
# machine), which dominates tiles of a few positions.
MIN_TILE_BYTES = 256 << 10
MAX_TILES = 64
# The tile loop's backward pass re-extracts every tile's windows, copies its filter block
# and scatters each window offset's input gradient tile by tile; one "slices"
# contraction ran value_and_grad faster on 59 of the 88 sweep problems (seeds 2 and 5)
# whose window tensors fit (median 1.75x, up to 112x; of the 29 the loop won, 23 took
# under 2 ms, the others 2-10 ms by 1.02-1.2x, and one 2 ms problem 2.5x) and on the
# suite's small-window shapes (stride2 1.8x, 1-D 2.3x). It holds the whole window
# tensor, about three of them in value_and_grad (as lax does), so only while that stays
# within SLICED_DERIVATIVES_BYTES; a batch of one adds a kernel-sized product (XLA's CPU
# backend turns a one-row dot into a multiply and a reduction). Disjoint windows
# (stride == window) always: their tensor is then a reshape of the input, whose
# derivative is a transpose (the genomic layer: 1.6x faster than the loop).
SLICED_DERIVATIVES_BYTES = 32 << 20
# ... but not where there are more than SLICED_DERIVATIVES_MAX_INPUT_PER_OUTPUT padded
# input elements per output position (large dilated or strided windows over few
# positions): the one-shot stack's transpose sums every window offset at every input
# element (``_windows.input_per_output``), while the loop builds windows axis by axis.
# On sweep seeds 6 and 7, of the non-kernel-bound problems "slices" differentiated,
# the five above 32 ran value_and_grad 1.2-16x faster in the loop (16x: 360 offsets
# over 6 positions), one 1.25x slower; none of the 100 below was 2x faster in the loop
# but one 2 ms problem.
SLICED_DERIVATIVES_MAX_INPUT_PER_OUTPUT = 32
# ... nor, below that, where the stack's transpose outweighs the contraction itself: it
# sums every offset's padded slice over the whole input (``padded input * window_items``
# additions per batch row and channel) while the contraction does ``output_items *
# window_items * filters`` multiply-adds, so their ratio is ``input_per_output /
# filters``; the loop transposes one tile's windows at a time, axis by axis. Where that
# ratio is at least LOOP_DERIVATIVES_MIN_INPUT_PER_FILTER over at least
# LOOP_DERIVATIVES_MIN_OFFSETS offsets (and the windows are not stacked axis by axis,
# ``_windows.sliced_by_axis``), the loop differentiates. Found on sweep seed 22's worst
# cases (s22-38: 81 offsets of 7 channels, stride 3, 5 filters, "slices" derivatives 2.4x
# the loop's time). value_and_grad with the loop's derivatives against "slices"' (values
# unchanged; one process, alternated) on the 56 such problems of seeds 2-21: 0.67x the
# time (geometric mean; 0.26-0.6x on 20), 1.1-1.28x on six (1.7-4.6 ms), compile 0.76x;
# temp memory down on 51, up on five by at most 2.1 MiB (s12-41: 2.0 -> 4.1, lax 2.1).
# Fewer offsets or more filters were mixed (0.7-5.8x: s16-48, 12 offsets and 161
# filters, 5.8x). On the 15 such problems of seeds 23-29, drawn after this was fixed:
# 0.87x (0.39-0.98x on ten, 1.01-1.49x on five), temp memory down on twelve.
LOOP_DERIVATIVES_MIN_OFFSETS = 24
LOOP_DERIVATIVES_MIN_INPUT_PER_FILTER = 1.4
# ... nor where the loop takes its kernel gradient by rows (:func:`kernel_tangent_by_rows`,
# 2 to ROWS_KERNEL_TANGENT_MAX_BATCH rows: the thin per-tile contraction over the rows,
# its weak part, is then gone) over at least ROWS_LOOP_MIN_OFFSETS offsets, at least
# ROWS_LOOP_MIN_POSITIONS output positions and a window tensor of at least
# ROWS_LOOP_MIN_WINDOW_BYTES: its inputs' gradient transposes one tile's windows at a
# time, axis by axis, where the one-shot stack's transpose sums that many padded slices
# over the whole tensor. value_and_grad with the loop's derivatives against "slices"'
# (values unchanged; one process, alternated) on sweep seeds 2, 5-9 and 300-330, of the
# 47 problems with 12+ offsets and 2+ MiB of windows of 1-16 rows: the 23 within these
# bounds ran 0.65x the time (geometric mean; 0.36-0.95x, one 1.04x), temp memory lower
# on all (s305-51: 28.6 -> 11.7 MiB); of the others, 12-18 offsets (0.68-2.72x), one row
# (1.58-2.67x) or 16-60 positions (1-2 per tile; 0.76-1.52x) were mixed or slower.
# Held out, seeds 331-370 (24 problems the rule changes): 0.63x (0.26-1.70x, over 1.0x on
# three), compile time 0.79x, temp memory lower on all 24.
ROWS_LOOP_MIN_OFFSETS = 20
ROWS_LOOP_MIN_POSITIONS = 100
ROWS_LOOP_MIN_WINDOW_BYTES = 2 << 20
# A dominant kernel of 16-bit floats beside widened operands (``implementations.widened``)
# is differentiated by the loop after all where its kernel gradient goes by rows (at most
# ROWS_KERNEL_TANGENT_MAX_BATCH rows) and the kernel has at least
# NARROW_KERNEL_LOOP_MIN_BYTES: "slices"' one contraction widens the whole kernel (a
# float32 copy, twice its bytes, read and written again), the loop one block at a time.
# value_and_grad with the loop's derivatives against "slices"' (one process, alternated):
# tuned on the 49 such problems of sweep seeds 2, 5-15 and 300-330, 0.54x the time
# (geometric mean; 0.07-1.27x, over 1.0x on three); smaller kernels or more rows were
# mixed (0.64-2.5x, sub-2 ms problems); held out, seeds 331-375 (55 problems): 0.58x
# (0.19-2.07x; over 1.1x on six, all under 2 ms), temp memory lower on all 55 (s360-54:
# 115.0 -> 6.2 MiB, 54.2 -> 12.8 ms), compile time 1.17x.
NARROW_KERNEL_LOOP_MIN_BYTES = 2 << 20
# So for one row too (where ``kernel_dominates`` does not apply: one row's kernel always
# outweighs its windows): "slices" widened all of sweep s61-27's 18 MiB bf16 kernel, 37.4
# MiB of value_and_grad temporaries against lax's 55.1 (the loop's: 6.8). value_and_grad of
# "auto" with and without it (one process, alternated; ``bench.studies.constant_ab``) on
# the 19 problems of seeds 2-65 it changes: tuning (seeds 2-40, 14 problems) 0.95x the time
# (geometric mean; 0.59-1.51x: s24-36 9.4 -> 14.2 ms), held out (seeds 41-56, four) 0.82x
# (0.53-1.21x: s44-19 14.9 -> 7.9 ms, s56-47 19.2 -> 23.2); temp memory 0.11x (lower on all 19:
# s56-47 31.1 -> 4.6 MiB), compile 1.13x; forward unchanged.
NARROW_KERNEL_LOOP_ONE_ROW = True
# A dominant kernel over windows of more than SLICED_DERIVATIVES_MAX_INPUT_PER_OUTPUT
# padded input elements per output position (large dilated or strided 3-D windows) is
# differentiated by the loop too where the one-shot stack's transpose sums at least
# KERNEL_BOUND_LOOP_MIN_TRANSPOSE elements (every offset's padded slice over the whole
# input: ``window elements * input_per_output``) over at least
# KERNEL_BOUND_LOOP_MIN_WINDOW_BYTES of windows: that transpose then outweighs reading the
# kernel (s53-6: 80 M elements, "slices"' inputs' gradient 20 ms, the loop's 4). Tuned on
# the 69 such problems of sweep seeds 2-30 and 300-349 (value_and_grad, one process,
# alternated): the loop ran 0.76x (seeds 2-30) and 0.98x (300-349) the time, sub-ms
# problems up to 2.5x slower; within these bounds 21 problems, 0.53x (0.04-0.97x but
# s340-5, 14.7 ms, 1.37x and s344-47, 1.3 ms, 2.5x), compile time lower on most (s12-43
# 7.0 -> 1.3 s). Smaller windows (s2-27, s336-57: 0.02 MiB) were 1.5-2.4x slower in the
# loop. Held out (seeds 350-420, the 15 problems this changes): 0.55x (0.11-1.04x),
# compile time 0.31x, temp memory up on six (s351-17 0.7 -> 6.5 MiB), down on nine.
KERNEL_BOUND_LOOP_MIN_TRANSPOSE = 10_000_000
KERNEL_BOUND_LOOP_MIN_WINDOW_BYTES = 256 << 10
# Where the plan is one tile (few positions or a small window tensor: :func:`plan_tiles`),
# the loop is one pass over the whole problem with the loop's own tangents (windows built
# axis by axis from ``BY_AXIS_MIN_OFFSETS``, the inputs' gradient read region by region);
# over windows of at least ONE_TILE_LOOP_MIN_OFFSETS offsets it differentiates faster than
# "slices" differentiated as it is. Not where "slices" derivatives already differ from
# that (kernel gradient by rows, inputs' gradient kernel first, windows stacked axis by
# axis: :func:`sliced_gradients_differ`, ``_windows.sliced_by_axis``): those ran 1.45-2.3x
# slower in the loop (s10-22, s18-45, s30-33). Found on seed 54's worst forward+backward
# case (s54-27: 72 rows, 17 positions, "slices" derivatives 1.5x the loop's time).
# value_and_grad of "auto" with and without it (one process, alternated;
# ``python -m bench.studies.constant_ab``): tuned on seeds 2-30 (108 problems), 0.95x the
# time (geometric mean; 0.38-1.17x), a single offset (12) 1.04x. Held out, seeds 300-330
# (91 problems): 0.94x (0.40-1.32x; the 12 over 1 ms 0.75x), compile time +26 ms on
# average, temp memory up on three by at most 0.5 MiB.
ONE_TILE_LOOP_MIN_OFFSETS = 2
# Whatever the other rules say, "slices" does not differentiate windows of more than
# SLICED_DERIVATIVES_MAX_STACKED_OFFSETS offsets stacked in one shot (not axis by axis:
# ``_windows.sliced_by_axis``): XLA's CPU backend compiles that stack's transpose (a sum
# of every offset's padded slice) for seconds, about linearly in the offsets (144-567
# offsets: 3.6-21.5 s, against 1-4 s for the loop; axis by axis under 2 s), and often runs
# it slower too. value_and_grad of "auto" with and without it (one process, alternated;
# ``python -m bench.studies.constant_ab``): tuned on the 13 problems of sweep seeds
# 600-700 it changes (timed in a rejected rule's run, the loop over 100+ offsets however
# stacked, which routed them alike), 0.70x the time (geometric mean; 0.06-1.47x: s650-29
# 224 -> 12 ms), compile 0.13-0.34x. Held out, the 16 of seeds 701-800: 0.95x
# (0.69-1.75x; slower by over 10% on three, s788-13 33 -> 58 ms), compile 0.29x
# (0.11-0.64x), temp 0.36x; over the temp bounds on lax's 2 -> 1 (s718-2 and
# s723-31 within, s784-1 over).
SLICED_DERIVATIVES_MAX_STACKED_OFFSETS = 128
# Undifferentiated values of tiles of at most PER_POSITION_MAX_POSITIONS positions and
# batches of at most PER_POSITION_MAX_BATCH rows take one dot per position: XLA's CPU
# backend runs a batched dot of such thin matrices on one core, independent dots
# concurrently (forward 8-30% faster on DeepFace L4/L5 and five other shapes with batch
# 2-8; a batch of 16 over 84-position tiles was 12% slower). The bound on positions
# bounds the loop body (one dot each), and tiles whose filter block is under
# MIN_TILE_BYTES keep one dot: too little work per dot to pay for the larger program.
# Derivatives keep the batched dot (one dot per position differentiated 2-30x slower).
PER_POSITION_MAX_BATCH = 8
PER_POSITION_MAX_POSITIONS = 64
# The derivatives' tiles, where the plan splits the innermost output axis, grow to whole
# rows of it (one index along the axis before) while a row's working set
# (``position_bytes``) takes at most ROW_TILE_MAX_BYTES (and at most the memory bound of
# ``plan_tiles``, ``2 / MIN_TILES`` of the window tensor). Split rows cost the backward
# pass more than the cache they save: sweep s102-53 (seed 102's worst value_and_grad, 3
# positions of a 6-position row per tile) ran 330 ms in 43 MiB, by rows 201 ms in 39.
# value_and_grad of auto with and without it (one process, alternated): tuned on the 16
# problems of seeds 430-460 it changes (without the memory bound: 74, 0.83x, but three
# newly over the temp bounds), 0.85x the time (geometric mean; 0.42-1.30x);
# held out, the 42 of seeds 461-540: 0.87x (0.50-1.71x; s469-29, 169 rows of a 9x9
# window over 8 channels, 1.71x), compile 1.06x, temp 1.6x but none newly over the
# issue's bounds against lax's (compiled, same problems); values unchanged.
ROW_TILE_MAX_BYTES = 8 << 20
# The loop's kernel gradient is a batched dot per tile that contracts over the batch
# rows; XLA's CPU backend runs such a thin contraction (DeepFace L4: 1296 x 8 by 8 x 16
# per position) at a fraction of the bandwidth, slower still inside a loop body. With at
# most ROWS_KERNEL_TANGENT_MAX_BATCH rows the kernel's tangent term goes by rows instead
# (:func:`rows_kernel_tangent`): its transpose is one fused loop of a multiply-add per row
# over the whole window tensor, kept from the forward pass while it is at most
# ROWS_KERNEL_TANGENT_MAX_BYTES (about a third of what lax's value_and_grad holds).
# value_and_grad of "auto" with and without it (one run, alternated) on the 39 problems
# of sweep seeds 2 and 5-13 with at most 16 rows that auto differentiates by the loop:
# 0.76x the time (geometric mean; under 0.8x on 21, 0.26x at best), one over 1.1x (s8-51,
# 2.4 ms: 1.14x); compile time 1.03x; temp memory up by the window tensor (s11-31: 13 ->
# 68 MiB). DeepFace L4 0.72-0.84x, L5 0.66-0.87x, the suite's batch1 0.72-0.79x and
# large5x5 0.80-0.96x across runs. With 32 rows (DeepFace L6) it ran 1.27-1.38x slower.
ROWS_KERNEL_TANGENT_MAX_BATCH = 16
ROWS_KERNEL_TANGENT_MAX_BYTES = 128 << 20


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """How "tiles" cuts the output positions.

    Attributes:
      level: the output axis along which tiles take ``size`` consecutive indices;
        they take one index along earlier axes and all indices along later ones.
      size: positions along ``level`` per tile; a divisor of ``output_shape[level]``,
        or (a *ragged* plan, where no divisor gives a tile within bounds, e.g. a prime
        extent) not: the last tile along ``level`` then starts ``size`` before the end
        and overlaps the one before it, which writes the same values again (and, as
        ``dynamic_update_slice`` transposes, takes no gradient twice).
      one_shot_forward: compute undifferentiated values with one contraction over
        all positions ("slices"), differentiated ones with the tile loop; for problems whose
        kernel dwarfs their windows, where copying filter blocks into the loop
        would cost more than the windows it keeps small.
      per_position_values: compute undifferentiated values with one dot per position
        in the loop (``PER_POSITION_MAX_BATCH``), differentiated ones batched.
    """

    level: int
    size: int
    one_shot_forward: bool = False
    per_position_values: bool = False

    def counts(self, geom: Geometry) -> tuple[int, ...]:
        """The number of tiles along output axes ``0..level``."""
        out = geom.output_shape
        return (*out[: self.level], -(-out[self.level] // self.size))

    def tile_positions(self, geom: Geometry) -> int:
        return self.size * math.prod(geom.output_shape[self.level + 1 :])


def position_bytes(geom: Geometry, batch: int, filters: int, itemsize: int) -> int:
    """Bytes one output position contributes to a tile: windows, filters, f32 outputs."""
    return itemsize * geom.feature_dim * (batch + filters) + 4 * batch * filters


def kernel_dominates(batch: int, filters: int) -> bool:
    """Whether the kernel dwarfs the windows: ``batch * MIN_TILES < filters`` (the window
    tensor is then under ``1 / MIN_TILES`` of the kernel).

    >>> kernel_dominates(8, 256), kernel_dominates(32, 16)
    (True, False)
    """
    return batch * MIN_TILES < filters


def derivatives_by_slices(
    geom: Geometry, batch: int, filters: int, itemsize: int, kernel_itemsize: int | None = None
) -> bool:
    """Whether "slices" differentiates this problem faster than the tile loop, in budget.

    Never over windows of more than ``SLICED_DERIVATIVES_MAX_STACKED_OFFSETS`` offsets
    stacked in one shot (:func:`_stack_compiles_slowly`: seconds of compile). Otherwise
    true where the kernel dominates (``batch > 1`` and ``batch * MIN_TILES < filters``:
    one contraction reads it once and writes its gradient once) unless it is a 16-bit
    kernel (``kernel_itemsize`` 2; the operands' ``itemsize`` if None) beside operands
    widened to ``itemsize`` (``implementations.widened``: the contraction would widen
    all of it, the loop widens one block at a time; see ``NARROW_KERNEL_LOOP_MIN_BYTES``;
    so also for one row, ``NARROW_KERNEL_LOOP_ONE_ROW``) or its windows
    are sparse and large (``KERNEL_BOUND_LOOP_MIN_TRANSPOSE``), for disjoint windows
    (:func:`~jlocalconv.implementations._windows.disjoint`), and wherever the window
    tensors fit (:func:`sliced_windows_fit`) unless the loop transposes them faster
    (:func:`loop_transposes_faster`, :func:`loop_rows_faster`) or its plan is one tile
    (:func:`_one_tile_loop`, ``ONE_TILE_LOOP_MIN_OFFSETS``).

    >>> from jlocalconv.geometry import make_geometry
    >>> derivatives_by_slices(make_geometry((2, 12, 12, 8), 6), 2, 8, itemsize=4)
    True
    >>> derivatives_by_slices(make_geometry((64, 40, 40, 8), 6), 64, 8, itemsize=4)
    False
    >>> derivatives_by_slices(make_geometry((32, 20000, 1), 10, 10), 32, 4, itemsize=4)
    True
    >>> derivatives_by_slices(make_geometry((2, 40, 40, 1), 3, 4, dilation=8), 2, 4, 4)
    False
    """
    if _stack_compiles_slowly(geom, batch, itemsize):
        return False
    narrow = _narrow_kernel_loops(geom, batch, filters, itemsize, kernel_itemsize or itemsize)
    if batch > 1 and kernel_dominates(batch, filters):
        return not narrow and not _sparse_windows_loop(geom, batch, itemsize)
    if narrow and batch == 1 and NARROW_KERNEL_LOOP_ONE_ROW:
        return False
    if disjoint(geom):
        return True
    if _one_tile_loop(geom, batch, filters, itemsize):
        return False
    if not sliced_windows_fit(geom, batch, filters, itemsize):
        return False
    loop = loop_transposes_faster(geom, batch, filters, itemsize)
    return not loop and not loop_rows_faster(geom, batch, itemsize)


def _stack_compiles_slowly(geom: Geometry, batch: int, itemsize: int) -> bool:
    """Whether "slices" would differentiate windows of more than
    ``SLICED_DERIVATIVES_MAX_STACKED_OFFSETS`` offsets stacked in one shot (not axis by
    axis: ``_windows.sliced_by_axis``), a transpose XLA compiles for seconds.

    >>> from jlocalconv.geometry import make_geometry
    >>> geom = make_geometry((5, 12, 16, 11, 2), (8, 5, 7), 2)  # sweep s638-42: 280 offsets
    >>> fewer = make_geometry((5, 12, 16, 11, 2), (4, 4, 7), 2)  # 112 offsets
    >>> _stack_compiles_slowly(geom, 5, 4), _stack_compiles_slowly(fewer, 5, 4)
    (True, False)
    """
    many = geom.window_items > SLICED_DERIVATIVES_MAX_STACKED_OFFSETS
    return many and not sliced_by_axis(geom, batch, itemsize)


def _one_tile_loop(geom: Geometry, batch: int, filters: int, itemsize: int) -> bool:
    """Whether the loop differentiates a problem whose plan is one tile: windows of at
    least ``ONE_TILE_LOOP_MIN_OFFSETS`` offsets that "slices" would differentiate as it
    is (:func:`sliced_gradients_differ`, ``_windows.sliced_by_axis``).

    >>> from jlocalconv.geometry import make_geometry
    >>> geom = make_geometry((72, 1, 24, 6, 5), (1, 8, 5), (3, 1, 3))  # sweep s54-27
    >>> _one_tile_loop(geom, 72, 31, 4), _one_tile_loop(geom, 8, 31, 4)  # 8 rows: by rows
    (True, False)
    """
    if geom.window_items < ONE_TILE_LOOP_MIN_OFFSETS:
        return False
    differs = sliced_gradients_differ(geom, batch, filters, itemsize)
    if differs or sliced_by_axis(geom, batch, itemsize):  # "slices" differentiates otherwise
        return False
    return math.prod(plan_tiles(geom, batch, filters, itemsize).counts(geom)) == 1


def _narrow_kernel_loops(
    geom: Geometry, batch: int, filters: int, itemsize: int, kernel_itemsize: int
) -> bool:
    """Whether the loop differentiates a dominant 16-bit kernel beside operands widened
    to ``itemsize``: at most ``ROWS_KERNEL_TANGENT_MAX_BATCH`` rows (its kernel gradient
    by rows) and a kernel of at least ``NARROW_KERNEL_LOOP_MIN_BYTES``."""
    if not kernel_itemsize == 2 < itemsize:
        return False
    kernel_bytes = kernel_itemsize * math.prod(geom.kernel_shape(filters))
    by_rows = kernel_tangent_by_rows(geom, batch, itemsize)
    return by_rows and kernel_bytes >= NARROW_KERNEL_LOOP_MIN_BYTES


def _sparse_windows_loop(geom: Geometry, batch: int, itemsize: int) -> bool:
    """Whether the loop differentiates a dominant kernel over sparse windows: more
    than ``SLICED_DERIVATIVES_MAX_INPUT_PER_OUTPUT`` padded inputs per output, at least
    ``KERNEL_BOUND_LOOP_MIN_WINDOW_BYTES`` of window tensor and a transpose of at least
    ``KERNEL_BOUND_LOOP_MIN_TRANSPOSE`` elements."""
    per_output = input_per_output(geom)
    if per_output <= SLICED_DERIVATIVES_MAX_INPUT_PER_OUTPUT:
        return False
    transpose = window_bytes(geom, batch, 1) * per_output  # window elements * ratio
    return (
        window_bytes(geom, batch, itemsize) >= KERNEL_BOUND_LOOP_MIN_WINDOW_BYTES
        and transpose >= KERNEL_BOUND_LOOP_MIN_TRANSPOSE
    )


def sliced_windows_fit(geom: Geometry, batch: int, filters: int, itemsize: int) -> bool:
    """Whether three window tensors (``itemsize * batch * output_items * feature_dim``
    bytes each), plus the kernel for a batch of one, fit in ``SLICED_DERIVATIVES_BYTES``
    over an input of at most ``SLICED_DERIVATIVES_MAX_INPUT_PER_OUTPUT`` padded elements
    per output position (:func:`~jlocalconv.implementations._windows.input_per_output`).

    >>> from jlocalconv.geometry import make_geometry
    >>> sliced_windows_fit(make_geometry((8, 24, 24, 32), 3), 8, 64, itemsize=4)
    True
    >>> sliced_windows_fit(make_geometry((64, 40, 40, 8), 6), 64, 8, itemsize=4)
    False
    """
    if input_per_output(geom) > SLICED_DERIVATIVES_MAX_INPUT_PER_OUTPUT:
        return False
    one_row = window_bytes(geom, 1, itemsize) * filters if batch == 1 else 0
    return 3 * window_bytes(geom, batch, itemsize) + one_row <= SLICED_DERIVATIVES_BYTES


def loop_transposes_faster(geom: Geometry, batch: int, filters: int, itemsize: int) -> bool:
    """Whether the tile loop differentiates faster than the one-shot window stack of
    "slices" whatever the budget: at least ``LOOP_DERIVATIVES_MIN_OFFSETS`` offsets, at
    least ``LOOP_DERIVATIVES_MIN_INPUT_PER_FILTER`` padded input elements per output
    position and filter, and windows not stacked axis by axis
    (:func:`~jlocalconv.implementations._windows.sliced_by_axis`, whose transpose is cheap).

    >>> from jlocalconv.geometry import make_geometry
    >>> geom = make_geometry((15, 65, 25, 7), 9, 3)  # 81 offsets, 14.3 inputs per output
    >>> loop_transposes_faster(geom, 15, 5, 4), loop_transposes_faster(geom, 15, 16, 4)
    (True, False)
    """
    if geom.window_items < LOOP_DERIVATIVES_MIN_OFFSETS:
        return False
    if input_per_output(geom) < LOOP_DERIVATIVES_MIN_INPUT_PER_FILTER * filters:
        return False
    return not sliced_by_axis(geom, batch, itemsize)


def loop_rows_faster(geom: Geometry, batch: int, itemsize: int) -> bool:
    """Whether the tile loop differentiates faster than "slices" because both take the
    kernel gradient by rows (:func:`kernel_tangent_by_rows`, here of at least two rows)
    and the windows are many (at least ``ROWS_LOOP_MIN_OFFSETS`` offsets and
    ``ROWS_LOOP_MIN_POSITIONS`` positions, a window tensor of at least
    ``ROWS_LOOP_MIN_WINDOW_BYTES``): the loop then transposes them faster.

    >>> from jlocalconv.geometry import make_geometry
    >>> geom = make_geometry((4, 20, 20, 32), 5)  # 25 offsets, 3.1 MiB of windows
    >>> loop_rows_faster(geom, 4, 4), loop_rows_faster(geom, 32, 4)  # 32 rows: not by rows
    (True, False)
    >>> loop_rows_faster(make_geometry((4, 20, 20, 32), 3), 4, 4)  # 9 offsets
    False
    >>> loop_rows_faster(geom, 1, 4)  # one row
    False
    """
    offsets, positions = geom.window_items, geom.output_items
    many = offsets >= ROWS_LOOP_MIN_OFFSETS and positions >= ROWS_LOOP_MIN_POSITIONS
    if batch < 2 or not many or not kernel_tangent_by_rows(geom, batch, itemsize):
        return False
    return window_bytes(geom, batch, itemsize) >= ROWS_LOOP_MIN_WINDOW_BYTES


def kernel_tangent_by_rows(geom: Geometry, batch: int, itemsize: int) -> bool:
    """Whether the tile loop's kernel gradient comes from :func:`rows_kernel_tangent`:
    one to ``ROWS_KERNEL_TANGENT_MAX_BATCH`` rows whose window tensor
    (``itemsize * batch * output_items * feature_dim`` bytes) is at most
    ``ROWS_KERNEL_TANGENT_MAX_BYTES``.

    >>> from jlocalconv.geometry import make_geometry
    >>> kernel_tangent_by_rows(make_geometry((8, 63, 63, 16), 9), 8, itemsize=4)
    True
    >>> kernel_tangent_by_rows(make_geometry((32, 25, 25, 16), 5), 32, itemsize=4)
    False
    >>> kernel_tangent_by_rows(make_geometry((0, 25, 25, 16), 5), 0, itemsize=4)
    False
    """
    # An empty batch has no rows to sum (the loop gives its zero gradient).
    rows = 1 <= batch <= ROWS_KERNEL_TANGENT_MAX_BATCH
    return rows and window_bytes(geom, batch, itemsize) <= ROWS_KERNEL_TANGENT_MAX_BYTES


def sliced_kernel_tangent_by_rows(geom: Geometry, batch: int, filters: int, itemsize: int) -> bool:
    """Whether "slices" derivatives take their kernel gradient from
    :func:`rows_kernel_tangent` too: where :func:`kernel_tangent_by_rows` says so, unless
    the kernel dominates a batch of several rows (there one contraction per position
    already streams the kernel once, and the rows' products held 27.6 against 14.8 MiB
    of temporaries on YOLOv1's local layer, at the same speed).

    The batched contraction's kernel gradient contracts each position over the batch
    rows: with at most ``ROWS_KERNEL_TANGENT_MAX_BATCH`` of them a thin product that XLA's
    CPU backend runs one position at a time (and, for one row, as a kernel-sized outer
    product first). value_and_grad by "slices" with and without it (float32, one process,
    alternated): sweep s18-58 (1169 positions of 9 -> 2, 5 rows) 0.34x the time, s18-57
    (7 positions, 252 -> 377, one row) 0.27x with 12.8 -> 0.1 MiB of temporaries, s12-30
    0.58x, s19-32 0.84x, s19-47 0.80x, s19-50 0.89x, s19-57 0.91x, s10-50 0.86x; temp up on
    s19-50 (13.9 -> 21.0 MiB, lax 21.4: a by-axis window stack copied to the rows' layout)
    and s10-50 (2.3 -> 4.5 MiB: XLA copies the one-filter gradient between layouts).

    >>> from jlocalconv.geometry import make_geometry
    >>> geom = make_geometry((8, 7, 7, 1024), 3, padding="same")
    >>> [sliced_kernel_tangent_by_rows(geom, 8, filters, 4) for filters in (16, 256)]
    [True, False]
    """
    kernel_bound = batch > 1 and kernel_dominates(batch, filters)
    return kernel_tangent_by_rows(geom, batch, itemsize) and not kernel_bound


def sliced_gradients_differ(geom: Geometry, batch: int, filters: int, itemsize: int) -> bool:
    """Whether the "slices" derivative route computes a gradient otherwise than "slices"
    differentiated as it is: the kernel gradient by rows
    (:func:`~jlocalconv.implementations.tiles.sliced_kernel_tangent_by_rows`) or the
    inputs' gradient kernel first (:func:`kernel_major_inputs_gradient`). (Its windows
    may also be stacked axis by axis: ``_windows.sliced_by_axis``.)

    >>> from jlocalconv.geometry import make_geometry
    >>> geom = make_geometry((32, 12, 12, 8), 6)
    >>> sliced_gradients_differ(geom, 32, 8, 4), sliced_gradients_differ(geom, 2, 8, 4)
    (False, True)
    """
    by_rows = sliced_kernel_tangent_by_rows(geom, batch, filters, itemsize)
    return by_rows or kernel_major_inputs_gradient(batch, filters)


def rows_kernel_tangent(
    inputs: jax.Array,
    kernel: jax.Array,
    geom: Geometry,
    preferred_element_type: jax.typing.DTypeLike | None = None,
    window_dtype: jax.typing.DTypeLike | None = None,
    by_axis: bool = False,
    fuse: bool = True,
) -> jax.Array:
    """The op as one sum of products per batch row, for the kernel's tangent term.

    Row ``b`` is ``sum(windows[:, b, :, None] * kernel, axis=1)``, so the transpose in
    the kernel (the kernel gradient) is ``sum_b windows[:, b, :, None] *
    cotangent[:, b, None, :]``: one fused loop that writes each gradient element once,
    accumulated in the result dtype (float32 for 16-bit inputs widened by
    ``preferred_element_type``). The window tensor is a residual of the backward pass.
    Evaluated forward (``jvp`` in the kernel), it is slower than a contraction; the
    products are elementwise, so no ``precision``. ``window_dtype`` holds that residual
    narrower than ``inputs`` (which it must represent exactly: 16-bit inputs that "auto"
    widened, ``implementations.widened``). Beside "slices" derivatives (``fuse=False``)
    the windows are stacked as the tangent stacks its own
    (:func:`~jlocalconv.implementations._windows.windows` with ``by_axis``), so that XLA
    computes one window tensor for both.

    Elsewhere the residual, written once and read once, is gathered
    (:func:`~jlocalconv.implementations._windows.gathered_windows`: one kernel however
    many offsets) rather than stacked: XLA's CPU backend compiles a fused stack of every
    offset's slice into one large LLVM module (large5x5's 25 offsets: 70 ms of its
    value_and_grad compile; DeepFace L4's 81 took 3.2-4.1 s before they went axis by
    axis from 32 offsets, the rule this replaced). value_and_grad of "auto" gathered
    against stacked (one process, alternated) on 75 of the problems of sweep seeds 2-24
    with at most 16 rows that auto differentiates by the loop: 0.99x the time (geometric
    mean; 0.63-1.32x), compile 0.83x; temp memory lower on 34 (s19-24 66.5 -> 13.8 MiB,
    s24-40 31.5 -> 8.2), higher on 17 (s18-31 3.3 -> 25.4: a single offset, one slice
    that XLA fused into the gradient, so a single offset keeps it). Held out (88 such
    problems of seeds 300-339): 0.99x (0.71-1.35x), compile 0.82x, temp lower on 31
    (s300-22 61.1 -> 7.9), higher on 12 (s319-6 24.5 -> 30.9; lax 59.0).
    """
    dtype = result_dtype(inputs, preferred_element_type)
    accumulate = jnp.promote_types(inputs.dtype, dtype)
    patches = _rows_windows(inputs, geom, window_dtype, by_axis, fuse)
    filters = kernel.astype(accumulate)
    rows = [
        jnp.sum(patches[:, b, :, None].astype(accumulate) * filters, axis=1)
        for b in range(inputs.shape[0])
    ]
    return positions_to_result(jnp.stack(rows, axis=1).astype(dtype), geom)


def differentiated_by_loop(
    values: Callable[[jax.Array, jax.Array], jax.Array],
    inputs: jax.Array,
    kernel: jax.Array,
    geom: Geometry,
    *,
    precision: lax.PrecisionLike,
    preferred_element_type: jax.typing.DTypeLike | None,
    window_dtype: jax.typing.DTypeLike | None = None,
    plan: TilePlan | None = None,
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``values`` (any route), differentiated by the tile loop (:func:`tiles_tangent`
    through ``split_bilinear``) over ``plan`` (:func:`derivative_plan` for the operands'
    static shapes if None); its kernel gradient by :func:`rows_kernel_tangent` where
    :func:`kernel_tangent_by_rows` says so, its windows held in ``window_dtype``.
    "tiles" and the "tiles" derivative route (``implementations._routes``) build theirs
    here."""
    batch, itemsize = inputs.shape[0], inputs.dtype.itemsize
    if plan is None:
        plan = derivative_plan(geom, batch, kernel.shape[-1], itemsize)
    pet = preferred_element_type
    by_rows = kernel_tangent_by_rows(geom, batch, itemsize)
    tangent = functools.partial(
        tiles_tangent,
        geom=geom,
        plan=plan,
        precision=precision,
        preferred_element_type=pet,
        select_stages=not by_rows,  # rows hold the window tensor anyway
        stacked=True,  # transposed by reverse mode
    )
    # Windows of the inputs themselves (not of their tangent) are never transposed.
    for_kernel = functools.partial(tangent, shared=True)
    if by_rows:
        for_kernel = functools.partial(
            rows_kernel_tangent, geom=geom, preferred_element_type=pet, window_dtype=window_dtype
        )
    on_inputs = functools.partial(tangent, shared=True, stacked=False)  # never transposed
    if by_rows and _values_by_rows_windows(geom, batch, itemsize, kernel.dtype.itemsize):
        on_inputs = functools.partial(
            _values_over_rows_windows, geom=geom, precision=precision,
            preferred_element_type=pet, window_dtype=window_dtype,
        )  # fmt: skip
    return split_bilinear(values, tangent, for_kernel, tangent_value=on_inputs)


# Where the tile loop's kernel gradient is by rows (:func:`rows_kernel_tangent`), one
# row's differentiated values are one contraction over the rows' window tensor
# (:func:`_values_over_rows_windows`) up to ROWS_VALUES_MAX_WINDOW_BYTES of it, and only
# for a kernel as wide as the inputs: that contraction widens a 16-bit kernel whole
# (sweep s6-2, bf16: temp 3.0 -> 29.7 MiB, lax 44.5). value_and_grad of "auto" with and
# without it (one process, alternated) on the 20 one-row problems of sweep seeds 2-23 that
# the loop differentiates by rows (tuning): 0.83x the time (geometric mean; 0.60-1.0x but
# s6-32, bf16, 2.9x), compile 0.68x; temp up by about the window tensor (s16-29: 4.9 ->
# 30.6 MiB of 30.6, over half lax's 51.6; s17-53 1.6 -> 8.4 of 8.1), hence the bound.
# Held out (27 such problems of seeds 31-55, eight of them bf16 and unchanged): 0.86x the
# time (0.36-1.05x: s31-6 8.2 -> 3.0 ms), compile 0.78x, temp at most doubled and within
# half lax's (s53-21 5.8 -> 11.5 MiB, lax 46.1).
ROWS_VALUES_MAX_WINDOW_BYTES = 8 << 20


def _values_by_rows_windows(
    geom: Geometry, batch: int, itemsize: int, kernel_itemsize: int
) -> bool:
    """Whether :func:`differentiated_by_loop` takes its values from
    :func:`_values_over_rows_windows` (see ``ROWS_VALUES_MAX_WINDOW_BYTES``), given that
    its kernel gradient is by rows."""
    small = window_bytes(geom, batch, itemsize) <= ROWS_VALUES_MAX_WINDOW_BYTES
    return batch == 1 and kernel_itemsize == itemsize and small


def _values_over_rows_windows(
    inputs: jax.Array,
    kernel: jax.Array,
    geom: Geometry,
    *,
    precision: lax.PrecisionLike,
    preferred_element_type: jax.typing.DTypeLike | None,
    window_dtype: jax.typing.DTypeLike | None,
) -> jax.Array:
    """The differentiated values of one batch row as one contraction over the window
    tensor that :func:`rows_kernel_tangent` gathers (the same op: XLA computes it once).

    Why: the loop's values are a second tile loop in the program, whose fusions XLA's
    CPU backend compiles on their own; the rows hold the whole window tensor anyway. The
    suite's batch1 (value_and_grad, one process, alternated): compile 0.39 -> 0.24 s,
    0.92x the time. One row only: with several, XLA gathered the windows offset-major
    for the rows' products and copied them batch-major for the contraction (DeepFace L5,
    8 rows: twice the temporaries, 1.4x the time; L4 2-2.6x).
    """
    patches = _rows_windows(inputs, geom, window_dtype).astype(inputs.dtype)
    out = contract(patches, kernel, precision, preferred_element_type)
    return positions_to_result(out, geom)


def _rows_windows(
    inputs: jax.Array,
    geom: Geometry,
    window_dtype: jax.typing.DTypeLike | None,
    by_axis: bool = False,
    fuse: bool = True,
) -> jax.Array:
    """The window tensor :func:`rows_kernel_tangent` holds (its arguments' meaning), in
    ``window_dtype``: gathered where ``fuse`` (and more than one offset), else stacked."""
    if window_dtype is not None:
        # A 16-bit residual, widened again inside the gradient's fused loop: float32
        # windows of widened bf16 inputs held twice the bytes of lax's bf16 patches.
        # Narrowing the inputs, not the windows, lets XLA cancel the widening.
        inputs = inputs.astype(window_dtype)
    x, full = pad_spatial(inputs, geom), padded(geom)
    if fuse and geom.window_items > 1:
        return gathered_windows(x, full)
    return windows(x, full, by_axis=by_axis, fuse=fuse)


# Static and pure: "auto"'s choice and the implementation it picks plan the same problem
# at every trace, and enumerating the plans of a long axis is the costly part.
@functools.lru_cache(maxsize=256)
def plan_tiles(
    geom: Geometry, batch: int, filters: int, itemsize: int, tile_bytes: int = TILE_BYTES
) -> TilePlan:
    """The tiling "tiles" uses: a deterministic cost model on static shapes only.

    With ``patch_bytes = itemsize * batch * output_items * feature_dim`` and
    ``position_bytes`` a position's share of a tile's working set:

    * if ``batch * MIN_TILES < filters`` the kernel dominates traffic and memory (each
      filter is read once whatever the tiling; the windows are a small fraction of
      it): values in one shot (``one_shot_forward``), no filter blocks copied into a
      loop, and derivatives over the largest tiles that make at least MIN_TILES;
    * otherwise a tile holds at most ``min(tile_bytes, 2 * patch_bytes / MIN_TILES)``
      bytes and ``output_items / MIN_TILES`` positions, and at least
      ``MIN_TILE_BYTES`` bytes and ``output_items / MAX_TILES`` positions. The largest
      tile within those bounds is chosen, else the smallest above the lower bound; but
      where that is over twice the upper bound (a prime extent has only one tile or
      single positions), the largest ragged tile within the bounds (see
      :class:`TilePlan`): it recomputes at most one tile's positions.

    >>> from jlocalconv.geometry import make_geometry
    >>> plan_tiles(make_geometry((32, 32, 32, 16), 3), batch=32, filters=16, itemsize=4)
    TilePlan(level=0, size=3, one_shot_forward=False, per_position_values=False)
    >>> plan_tiles(make_geometry((8, 63, 63, 16), 9), batch=8, filters=16, itemsize=4)
    TilePlan(level=0, size=1, one_shot_forward=False, per_position_values=True)
    """
    plans = sorted(_all_plans(geom), key=lambda p: (p.tile_positions(geom), -p.level))
    if kernel_dominates(batch, filters):
        at_most = max(1, geom.output_items // MIN_TILES)
        fitting = _within(plans, geom, 1, at_most)
        if math.prod(fitting[-1].counts(geom)) > MAX_TILES:  # e.g. a prime extent
            fitting = _within(_ragged_plans(geom), geom, 1, at_most)
        return dataclasses.replace(fitting[-1], one_shot_forward=True)
    per_position = max(position_bytes(geom, batch, filters, itemsize), 1)
    lower = max(-(-geom.output_items // MAX_TILES), -(-MIN_TILE_BYTES // per_position))
    upper = min(min(tile_bytes, _memory_bound(geom, batch, itemsize)) // per_position,
                geom.output_items // MIN_TILES)  # fmt: skip
    fitting = _within(plans, geom, lower, upper)
    above = _within(plans, geom, lower, math.inf)
    smallest = min(above, key=lambda p: (p.tile_positions(geom), p.level)) if above else plans[-1]
    if not fitting and smallest.tile_positions(geom) > 2 * upper:  # e.g. a prime extent
        fitting = _within(_ragged_plans(geom), geom, lower, upper)
    plan = fitting[-1] if fitting else smallest
    positions = plan.tile_positions(geom)
    few = batch <= PER_POSITION_MAX_BATCH and positions <= PER_POSITION_MAX_POSITIONS
    heavy = positions * geom.feature_dim * filters * itemsize >= MIN_TILE_BYTES
    return dataclasses.replace(plan, per_position_values=few and heavy)


def derivative_plan(geom: Geometry, batch: int, filters: int, itemsize: int) -> TilePlan:
    """The tiling of the loop's derivatives: :func:`plan_tiles`, but tiles of one whole
    innermost row each where that plan splits the row (a dominant kernel's excepted) and
    the row's working set takes at most ``ROW_TILE_MAX_BYTES`` and at most the plan's
    memory bound (``2 / MIN_TILES`` of the window tensor).

    >>> from jlocalconv.geometry import make_geometry
    >>> geom = make_geometry((57, 6, 8, 11, 121), (3, 2, 7), (2, 3, 2), "same")  # s102-53
    >>> plan_tiles(geom, 57, 2, 4).size, derivative_plan(geom, 57, 2, 4)
    (3, TilePlan(level=1, size=1, one_shot_forward=False, per_position_values=False))
    """
    plan = plan_tiles(geom, batch, filters, itemsize)
    inner = geom.ndim - 1
    # A dominant kernel's tiles (one_shot_forward) are sized by its filter blocks.
    if inner == 0 or plan.one_shot_forward or plan.level != inner:
        return plan
    row = TilePlan(inner - 1, 1)
    # Within plan_tiles' memory bound, not its cache bound (TILE_BYTES).
    bound = min(ROW_TILE_MAX_BYTES, _memory_bound(geom, batch, itemsize))
    row_bytes = row.tile_positions(geom) * position_bytes(geom, batch, filters, itemsize)
    split = plan.size < geom.output_shape[inner]
    return row if split and row_bytes <= bound else plan


def _memory_bound(geom: Geometry, batch: int, itemsize: int) -> int:
    """The most bytes a tile may hold: ``2 / MIN_TILES`` of the window tensor, which
    the one-shot paths (and lax) hold twice in the backward pass."""
    return 2 * window_bytes(geom, batch, itemsize) // MIN_TILES


def _within(plans: list[TilePlan], geom: Geometry, lower: float, upper: float) -> list[TilePlan]:
    """The plans whose tiles hold ``lower..upper`` positions, in their order."""
    return [p for p in plans if lower <= p.tile_positions(geom) <= upper]


def _all_plans(geom: Geometry) -> list[TilePlan]:
    """Every plan whose tiles divide their axis evenly."""
    out = geom.output_shape
    return [
        TilePlan(level, size)
        for level in range(geom.ndim)
        for size in range(1, out[level] + 1)
        if out[level] % size == 0
    ]


def _ragged_plans(geom: Geometry) -> list[TilePlan]:
    """Plans of ``count`` tiles of ``ceil(extent / count)`` positions along an axis (the
    least overlap for that count), sorted as in :func:`plan_tiles`; a superset of
    :func:`_all_plans`. ``O(sqrt(extent))`` sizes: every size up to ``sqrt(extent) + 1``,
    and the larger ones from counts up to that (trace-time Python stays cheap on long
    sequences)."""
    sizes = set()
    for level, n in enumerate(geom.output_shape):
        root = math.isqrt(n) + 1
        sizes |= {(level, min(size, n)) for size in range(1, root + 1)}
        sizes |= {(level, -(-n // count)) for count in range(1, root + 1)}
    plans = [TilePlan(level, size) for level, size in sizes]
    return sorted(plans, key=lambda p: (p.tile_positions(geom), -p.level))


def local_conv_tiles(
    inputs: jax.Array,
    kernel: jax.Array,
    geom: Geometry,
    *,
    precision: lax.PrecisionLike = None,
    preferred_element_type: jax.typing.DTypeLike | None = None,
    plan: TilePlan | None = None,
    window_dtype: jax.typing.DTypeLike | None = None,
) -> jax.Array:
    """Local convolution over tiles of output positions (see the module docstring).

    ``plan``, given, tiles values and derivatives; by default values take
    :func:`plan_tiles` for this problem and derivatives :func:`derivative_plan`.
    ``window_dtype`` is :func:`rows_kernel_tangent`'s.
    """
    static = (geom, inputs.shape[0], kernel.shape[-1], inputs.dtype.itemsize)
    # A plan given serves both; else the derivatives' own (derivative_plan).
    tangent_plan = derivative_plan(*static) if plan is None else plan
    plan = plan_tiles(*static) if plan is None else plan
    pet = preferred_element_type
    loop = functools.partial(
        _tile_loop,
        geom=geom,
        plan=plan,
        precision=precision,
        preferred_element_type=pet,
        shared=True,
    )
    batch, itemsize = inputs.shape[0], inputs.dtype.itemsize
    values: Callable[[jax.Array, jax.Array], jax.Array]
    if plan.one_shot_forward:
        values = functools.partial(
            local_conv_slices, geom=geom, precision=precision, preferred_element_type=pet
        )
    elif (
        plan.per_position_values
        or by_axis_derivatives(geom)
        or kernel_tangent_by_rows(geom, batch, itemsize)
        # The inputs' tangent pads tile by tile (``_region_reader``), the values not.
        or _pads_tiles(geom, _tile_geometry(padded(geom), plan))
    ):
        values = functools.partial(loop, per_position=plan.per_position_values)
    else:
        # The loop as it is, values and gradients in one program: one backward loop for
        # both gradients; stacked where differentiated (see _tile_loop).
        stacked = functools.partial(loop, stacked=True, plan=tangent_plan)
        return differentiated_as(loop, stacked)(inputs, kernel)
    op = differentiated_by_loop(
        values,
        inputs,
        kernel,
        geom,
        precision=precision,
        preferred_element_type=pet,
        window_dtype=window_dtype,
        plan=tangent_plan,
    )
    return op(inputs, kernel)


def tiles_tangent(
    inputs: jax.Array,
    kernel: jax.Array,
    geom: Geometry,
    *,
    plan: TilePlan,
    precision: lax.PrecisionLike = None,
    preferred_element_type: jax.typing.DTypeLike | None = None,
    shared: bool = False,
    select_stages: bool = False,
    stacked: bool = False,
) -> jax.Array:
    """The "tiles" route as it is differentiated: plain ``lax`` (a ``split_bilinear``
    tangent), windows by axis where :func:`by_axis_derivatives` says so, also on the
    inputs (a one-shot stack there ran large5x5's value_and_grad 8% slower). ``shared``
    (as in :func:`_tile_loop`) is for calls on the inputs, never on their tangent,
    whose windows reverse mode transposes; the tangent pads tile by tile
    (``pad_each_tile``), so that its transpose accumulates the inputs' gradient in
    their own shape (:func:`_region_reader`), and with ``select_stages`` takes large
    by-axis stages by one-hot contractions (``_windows.STAGE_SELECT_MIN_RATIO``)."""
    return _tile_loop(
        inputs,
        kernel,
        geom=geom,
        plan=plan,
        precision=precision,
        preferred_element_type=preferred_element_type,
        by_axis=by_axis_derivatives(geom),
        shared=shared,
        pad_each_tile=not shared,
        select_stages=select_stages and not shared,
        stacked=stacked,
    )


def _tile_loop(
    inputs: jax.Array,
    kernel: jax.Array,
    *,
    geom: Geometry,
    plan: TilePlan,
    precision: lax.PrecisionLike,
    preferred_element_type: jax.typing.DTypeLike | None,
    per_position: bool = False,
    by_axis: bool = False,
    shared: bool = False,
    pad_each_tile: bool = False,
    select_stages: bool = False,
    stacked: bool = False,
) -> jax.Array:
    """The ``lax.scan`` over tiles, its body rematerialised for autodiff.

    ``per_position`` contracts each position's window with its own dot
    (:func:`~jlocalconv.implementations._common.contract_per_position`); ``by_axis``
    builds windows axis by axis, ``shared`` with slices compiled once and
    ``select_stages`` large stages by one-hot contractions
    (:func:`~jlocalconv.implementations._windows.windows`); ``pad_each_tile`` takes
    tiles from the unpadded input where it can (:func:`_region_reader`).

    Each tile's result is written into a carried result, or with ``stacked`` returned
    as a scan output and laid out after the loop (:func:`_stacked_positions`), the form
    for a loop that reverse mode transposes: the write's transpose zeroes the tile in a
    carried cotangent, which XLA's CPU backend copied whole twice per tile (the suite's
    large5x5: 2 x 1.8 MiB x 20 tiles; sweep s62-53: 23.3 MiB of temporaries, 16.9
    stacked), where a stacked output transposes into a scan over the cotangent's tiles.
    """
    contraction = contract_per_position if per_position else contract
    tile = _tile_geometry(padded(geom), plan)
    region_at = _region_reader(inputs, geom, tile, pad_each_tile)

    def tile_result(index: jax.Array) -> tuple[list[jax.Array], jax.Array]:
        """The tile's origin and its ``(tile_positions, B, F)`` result."""
        origin = _tile_origin(index, geom, plan)
        filters_block = _filters_block(kernel, inputs.dtype, index, origin, geom, plan)
        patches = windows(
            region_at(origin), tile, by_axis=by_axis, shared=shared, select=select_stages
        )
        return origin, contraction(patches, filters_block, precision, preferred_element_type)

    indices = jnp.arange(math.prod(plan.counts(geom)), dtype=jnp.int32)
    if stacked:
        _, ys = lax.scan(_remat(lambda _, index: (None, tile_result(index)[1])), None, indices)
        return positions_to_result(_stacked_positions(ys, geom, plan), geom)

    def write(out: jax.Array, index: jax.Array) -> tuple[jax.Array, None]:
        origin, y = tile_result(index)
        at: list[int | jax.Array] = [0] * out.ndim
        first = spatial_axis(geom)
        for axis, start in enumerate(origin):
            at[first + axis] = start
        y = positions_to_result(y, tile)
        return lax.dynamic_update_slice(out, y, _int32(at), allow_negative_indices=False), None

    shape = geom.result_shape(inputs.shape[0], kernel.shape[-1])
    dtype = result_dtype(inputs, preferred_element_type)
    # zeros_like keeps the operands' varying mesh axes: under shard_map the carry must vary
    # like the body's output (scan-vma), which plain jnp.zeros would not.
    init = jnp.zeros_like(inputs, dtype, shape) + jnp.zeros_like(kernel, dtype, shape)
    out, _ = lax.scan(_remat(write), init, indices)
    return out


# Save only the loop's inputs: the backward pass re-extracts each tile's windows.
_remat = functools.partial(
    jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False
)


def _filters_block(
    kernel: jax.Array,
    inputs_dtype: np.dtype,
    index: jax.Array,
    origin: list[jax.Array],
    geom: Geometry,
    plan: TilePlan,
) -> jax.Array:
    """The kernel rows of the tile at ``origin`` (tile number ``index``).

    A dynamic slice of the closed-over kernel, not a scanned operand: scanning over
    blocks made its gradient a stacked scan output that XLA copied into the kernel's
    shape (a second kernel-sized buffer); a slice transposes to an in-place update.
    """
    source = kernel
    if kernel.dtype != inputs_dtype:
        # XLA's CPU backend widens a 16-bit slice by slicing a widened operand, and
        # hoisted that float32 copy of the whole loop-invariant kernel out of the loop
        # (sweep s52-25: 30.6 of 33.1 MiB of temporaries). Tied to the tile index by
        # a barrier, the kernel is loop-variant: each block is widened in the body.
        # Unlike the kernel's 16-bit bits behind a custom_jvp (tried: JAX's partial
        # evaluation of a scan inlines the value route, whose bit cast has a zero
        # derivative), the barrier differentiates and transposes to any order.
        source, _ = lax.optimization_barrier((kernel, index))
    start, size = _flat_start(origin, geom), plan.tile_positions(geom)
    return lax.dynamic_slice_in_dim(source, start, size, allow_negative_indices=False)


def _stacked_positions(ys: jax.Array, geom: Geometry, plan: TilePlan) -> jax.Array:
    """The tiles' stacked outputs ``(tiles, tile_positions, B, F)`` as ``(output_items,
    B, F)``: tiles are row-major blocks of positions, so a reshape, but for a ragged
    plan's last tile along ``level``, of which only the positions past the tile before
    it are kept."""
    counts, level, size = plan.counts(geom), plan.level, plan.size
    rest, tail = geom.output_shape[level + 1 :], ys.shape[2:]
    ys = ys.reshape(*counts, size, *rest, *tail)
    extent, last = geom.output_shape[level], counts[-1] - 1
    if extent % size:  # ragged (as _tile_origin decides): the last tile ends at the edge
        kept = lax.slice_in_dim(ys, 0, last, axis=level)
        kept = kept.reshape(*counts[:-1], last * size, *rest, *tail)
        edge = lax.index_in_dim(ys, last, axis=level, keepdims=False)
        edge = lax.slice_in_dim(edge, counts[-1] * size - extent, size, axis=level)
        ys = lax.concatenate([kept, edge], dimension=level)
    return ys.reshape(geom.output_items, *tail)


def _tile_geometry(full: Geometry, plan: TilePlan) -> Geometry:
    """The geometry of one tile's input box (already padded)."""
    extents = list(full.padded_shape)
    for axis in range(plan.level + 1):
        count = plan.size if axis == plan.level else 1
        extents[axis] = (count - 1) * full.strides[axis] + full.effective_kernel_size[axis]
    return dataclasses.replace(full, spatial_shape=tuple(extents))


def _tile_origin(index: jax.Array, geom: Geometry, plan: TilePlan) -> list[jax.Array]:
    """The output index where tile ``index`` starts, along axes ``0..plan.level``
    (row-major tiles; a ragged plan's last tile along ``level`` ends at the edge)."""
    extent = geom.output_shape[plan.level]
    origin = []
    for axis, count in reversed(list(enumerate(plan.counts(geom)))):
        # lax.rem/div, not % and //: the index is not negative, and jnp's floor division
        # traces a nested jit and puts sign fix-ups into every slice's index arithmetic.
        # The outermost axis's index is already below its count: no remainder kernel.
        start = lax.rem(index, np.int32(count)) if axis else index
        if axis == plan.level:
            start = start * np.int32(plan.size)
            if extent % plan.size:  # ragged: decided statically, no clamp in even loops
                start = lax.min(start, np.int32(extent - plan.size))
        origin.append(start)
        index = lax.div(index, np.int32(count))
    return origin[::-1]


def _flat_start(origin: list[jax.Array], geom: Geometry) -> jax.Array:
    """The row-major position index of ``origin`` (the tile's first kernel row)."""
    flat = origin[0]
    for axis in range(1, geom.ndim):
        flat = flat * geom.output_shape[axis] + (origin[axis] if axis < len(origin) else 0)
    return flat


def _region_reader(
    inputs: jax.Array, geom: Geometry, tile: Geometry, pad_each_tile: bool
) -> Callable[[list[jax.Array]], jax.Array]:
    """``origin -> ``the padded input box under the tile at output ``origin``.

    With ``pad_each_tile``, where every padded axis that tiles slice is at least as
    long as a tile's box along it (:func:`_pads_tiles`), each tile pads its own box
    (:func:`_padded_region`). Otherwise the input is padded once and sliced.

    Why: the inputs' tangent, sliced from a padded copy, transposed into a gradient
    accumulated in the padded shape, which the backward loop held beside the padded
    inputs that the kernel's gradient reads: two input-sized buffers (sweep s30-0: 2 x
    32 MiB of 66). Tile by tile, it accumulates in the inputs' own shape. The inputs
    themselves keep the one padded copy: their windows, taken tile by tile too, made
    value_and_grad up to 1.45x slower (1-D causal windows over 468-1018 channels).
    """
    if pad_each_tile and _pads_tiles(geom, tile):
        return functools.partial(_padded_region, inputs, geom, tile)
    return functools.partial(_input_region, pad_spatial(inputs, geom), padded(geom), tile)


def _pads_tiles(geom: Geometry, tile: Geometry) -> bool:
    """Whether :func:`_padded_region` applies: padding somewhere, and no tile box along
    a sliced, padded axis longer than the input along it."""
    sliced = [t < p for t, p in zip(tile.spatial_shape, geom.padded_shape)]
    pads = [lo > 0 or hi > 0 for lo, hi in geom.padding]
    fits = [t <= n for t, n in zip(tile.spatial_shape, geom.spatial_shape)]
    return any(pads) and all(f for s, p, f in zip(sliced, pads, fits) if s and p)


def _padded_region(
    inputs: jax.Array, geom: Geometry, tile: Geometry, origin: list[jax.Array]
) -> jax.Array:
    """The padded input box under the tile at output ``origin``, from the unpadded input.

    Along a sliced axis the box ``[a, a + E)`` of the padded input is
    ``[a - lo, a - lo + E)`` of the input; the slice starts at that index clamped into
    ``[0, n - E]`` (``E <= n``, :func:`_pads_tiles`), then the box is padded by
    ``(lo, hi)`` and sliced again at ``a - start``: what the clamp cut off lands in
    the padding, so the result is exact without a mask. Axes the tile spans whole are
    padded as they are. All of it is tile-sized.
    """
    first = spatial_axis(geom)
    start: list[int | jax.Array] = [0] * inputs.ndim
    again: list[int | jax.Array] = [0] * inputs.ndim
    size = list(inputs.shape)
    pads = [(0, 0, 0)] * inputs.ndim
    for i, (lo, hi) in enumerate(geom.padding):
        axis, n = first + i, geom.spatial_shape[i]
        pads[axis] = (lo, hi, 0)
        if i < len(origin) and tile.spatial_shape[i] < geom.padded_shape[i]:
            extent = tile.spatial_shape[i]
            at = origin[i] * np.int32(geom.strides[i])
            clamped = lax.clamp(np.int32(0), at - np.int32(lo), np.int32(n - extent))
            start[axis], size[axis], again[axis] = clamped, extent, at - clamped
    box = lax.dynamic_slice(inputs, _int32(start), size, allow_negative_indices=False)
    box = lax.pad(box, jnp.zeros((), inputs.dtype), pads)
    shape = tile.input_shape(inputs.shape[0])
    return lax.dynamic_slice(box, _int32(again), shape, allow_negative_indices=False)


def _input_region(
    padded_inputs: jax.Array, full: Geometry, tile: Geometry, origin: list[jax.Array]
) -> jax.Array:
    """The input box under the tile at output ``origin`` (a dynamic slice of the
    padded input)."""
    at: list[int | jax.Array] = [0] * padded_inputs.ndim
    first = spatial_axis(full)
    for axis, start in enumerate(origin):
        at[first + axis] = start * full.strides[axis]
    shape = tile.input_shape(padded_inputs.shape[0])
    return lax.dynamic_slice(padded_inputs, _int32(at), shape, allow_negative_indices=False)


def _int32(indices: list) -> list[jax.Array]:
    # dynamic_slice wants one index dtype; Python zeros would be int64 under x64. The
    # indices are in range by construction (``allow_negative_indices=False`` above).
    return [jnp.asarray(i, jnp.int32) for i in indices]
