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

import functools
import inspect
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jlocalconv.geometry import Geometry
from jlocalconv.implementations import _routes, products
from jlocalconv.implementations._bilinear import differentiated_as
from jlocalconv.implementations._common import result_dtype
from jlocalconv.implementations._windows import sliced_by_axis, window_bytes
from jlocalconv.implementations.patches import local_conv_patches
from jlocalconv.implementations.shifts import local_conv_shifts
from jlocalconv.implementations.slices import local_conv_slices
from jlocalconv.implementations.tiles import (
    derivatives_by_slices,
    kernel_dominates,
    local_conv_tiles,
    plan_tiles,
    sliced_gradients_differ,
    sliced_windows_fit,
)

Implementation = Callable[..., jax.Array]

IMPLEMENTATIONS: dict[str, Implementation] = {
    "patches": local_conv_patches,
    "slices": local_conv_slices,
    "tiles": local_conv_tiles,
    "shifts": local_conv_shifts,
}

# Up to this many input channels a position's contraction is too thin for a matmul
# kernel, and "shifts" (prod(kernel_size) * channels fused multiply-adds) computes
# values 3-4x faster than "tiles" (measured on the suite's 1- and 4-channel shapes) ...
SHIFTS_FEW_CHANNELS = 4
# ... and up to SHIFTS_MAX_CHANNELS with at most SHIFTS_MANY_CHANNELS_MAX_FILTERS filters:
# each fused term then spans few filters, where a contraction's matmul kernel has little
# to fill. Re-timed forward on the 77 problems of sweep seeds 2 and 5-9 with 5-16 channels
# (and under 512 features; "shifts" was never timed there before), auto's choice left a
# regret of 1.32 (geometric mean, worst 4.5: "shifts" 0.2x the loop's time on s9-9's
# 7 -> 8 channels), "shifts" for those with at most 16 filters (and the rules below) 1.09
# (worst 2.1, a 0.05 ms problem); with at most 8 filters 1.14. Over 16 filters it ran up
# to 18x slower (s8-8: 14 -> 164). And only while channels * filters is at most
# SHIFTS_MANY_CHANNELS_MAX_PRODUCT: the suite's 16-channel, 16-filter shapes (256) ran
# forward 1.04x (base) and, widened, 1.33x (bf16) the loop's time and value_and_grad 1.22x
# (base) in one run; no sweep problem of seeds 2 and 5-11 with 5-16 channels and at most
# 16 filters has a product over 200.
SHIFTS_MAX_CHANNELS = 16
SHIFTS_MANY_CHANNELS_MAX_FILTERS = 16
SHIFTS_MANY_CHANNELS_MAX_PRODUCT = 200
# ... but windows of at most SHIFTS_FEW_TERMS features (``window_items * channels``, one
# fused multiply-add each) take "shifts" whatever the filters: a contraction that short
# leaves a matmul kernel nothing to gain. On sweep seeds 11-17, of the five problems with
# 5-16 channels, over 16 filters and at most 15 features, "shifts" computed values 1.47-2.84x
# faster than auto's "slices" on three (s16-6, s16-20, s17-19), tied on one and was 1.15x
# slower on a 0.09 ms one; from 16 features on the ratio was mixed (0.88-1.27x) and from 49
# "slices" or the loop won (up to 11x).
SHIFTS_FEW_TERMS = 15
# ... while a position's filter bank (``feature_dim * filters`` weights, one multiply-add
# each per batch row) stays under SHIFTS_MAX_BANK: above it a contraction's matmul
# kernel wins. On sweep seeds 2, 5, 6 and 7, "shifts" computed values 1.2-4x slower
# than "slices" or "tiles" on the four few-channel problems with banks of 8640-68040
# (3-D windows of 135-360 offsets; one 2-D bank of 6432 was 8% faster), and on none below
# 4096 was it more than 2x slower but two sub-millisecond ones.
SHIFTS_MAX_BANK = 4096
# ... and, for deep windows (at least SHIFTS_DEEP_FEATURES features: hundreds of 3-D
# offsets), only with at most SHIFTS_DEEP_MAX_FILTERS filters. Each fused term is a
# multiply-add across the filters, which a few filters leave no vector width to fill,
# while hundreds of features give a contraction's matmul kernel a deep enough product.
# On sweep seeds 2, 7 and 8 "shifts" computed values 1.13-1.97x slower than the tile loop
# or "slices" on all five few-channel problems with 252-540 features and 5-7 filters, and
# in 0.44-0.96x their time on the three with 252-324 features and 2-3 filters.
SHIFTS_DEEP_FEATURES = 200
SHIFTS_DEEP_MAX_FILTERS = 4
# Below SHIFTS_DEEP_VALUES_MAX_FEATURES features, though, "shifts" computes the values of
# such windows (more filters, the other rules met) faster anyway, and the derivatives
# stay with the route auto would take otherwise (a ``"shifts/..."`` name): "shifts"'
# own derivatives ran value_and_grad up to 1.3x (float32) and 3.5x (bf16) slower. In the
# committed sweeps (seeds 5-30 and 49), all nine such float32 problems with 210-240
# features and 6-15 filters ran "shifts" forward in 0.23-0.80x auto's time (s24-38, 3
# channels of 72 offsets, 8 filters: 0.23x; the worst forward case of seeds 24, 30 and
# 49), two bf16 ones in 0.47-0.55x; from 280 features on, 12 of 18 with 5-15 filters ran
# 1.2-4.5x slower (the six faster had 1-5 rows). Held out (the 37 such problems of seeds
# 50-199, auto with and without this rule, one process, alternated): forward 0.58x
# (geometric mean; 0.22-1.05x), value_and_grad the same programs but for names (1.05x).
SHIFTS_DEEP_VALUES_MAX_FEATURES = 250
# Nor beyond SHIFTS_MAX_TERMS features with more than two filters: XLA's CPU backend
# (jaxlib 0.10) fuses that many unrolled terms into a consumer that reduces over the
# filters (``jnp.sum(f(x, k))``, any loss), and with 3 or 5-7 filters compiling that ran
# out of memory (24 GB; s2-11: 1152 terms, 3 filters; from 512 terms on, where 480
# compiled in a second; 1, 2 and 4 filters compiled). Of the 7 such problems of sweep
# seeds 2-53, three (s2-11, s22-21, s24-52) did that; the windowed routes computed values
# of the other four in 0.57x "shifts"' time (geometric mean; value_and_grad 0.89x).
# Held out, seeds 300-420: 16 problems with 3-4 filters, values 0.80x (0.21-2.09x),
# value_and_grad 1.08x; with 2 filters (34) "shifts" computed values faster (the
# windowed routes 1.13x its time), so they keep it.
SHIFTS_MAX_TERMS = 480
# Timing "shifts" as a trial (autotune, the sweep) compiles it: beyond SHIFTS_FEW_CHANNELS
# channels only under this many features (one unrolled term each; 1-4 channels reach 2916).
SHIFTS_TRIAL_MAX_FEATURES = 1024
# XLA's CPU backend has no fast 16-bit path through these loops' slices, dots and
# scatters: bf16 value_and_grad ran about 2x slower than float32 on the suite's bf16
# shape, and about 2x faster once widened. A product of two 16-bit floats is exact in
# float32, so widening the operands once, accumulating in float32 and rounding the
# result once gives what a float32-accumulating 16-bit dot gives.
CPU_WIDENED_DTYPES = (np.dtype(jnp.bfloat16), np.dtype(jnp.float16))
# ... except the undifferentiated values of "slices" over a bfloat16 kernel that outweighs
# the windows (more than NARROW_MIN_FILTERS_PER_ROW filters per batch row: the kernel then
# holds that many times the window tensor's elements) and windows of 2+ spatial
# dimensions: a bf16 dot accumulating in float32 (XLA's CPU backend runs it through
# YNNPACK) reads the kernel at half the width, where widening first writes and reads a
# float32 copy of the whole kernel (the same exact products, accumulated in float32,
# rounded once). Forward, one process, alternated (``python -m bench.studies.constant_ab``):
# for a dominant kernel (over 8 filters per row, ``tiles.kernel_dominates``) tuned on the
# 58 such problems of sweep seeds 980-999, 2-3-D windows 0.79x the time (37; 0.16-1.22x:
# s980-15 21.6 -> 3.5 ms), 1-D windows 1.00x (21; 0.54-1.39x: left out); held out, seeds
# 1000-1019 (37): 0.79x (0.28-1.29x; s1010-14 22.2 -> 6.3 ms, five over 1.1x, the worst
# s1007-57 0.13 -> 0.17 ms). Then over 4 filters per row: tuned on the 13 more problems of
# seeds 1120-1159, 0.89x (0.53-1.28x, the slower ones under 0.2 ms); held out, the 16 of
# seeds 1160-1209, 0.88x (0.59-1.26x: s1190-27 1.7 -> 2.1 ms). value_and_grad runs the
# widened program.
NARROW_KERNEL_BOUND_VALUES = True
NARROW_MIN_FILTERS_PER_ROW = 4
# Those bf16 value windows take half the bytes of the widened program's, so the window
# byte bounds of rule 2 of :func:`choose` (``SLICED_VALUES_MAX_WINDOW_BYTES``,
# ``SLICED_VALUES_FITTING_MAX_WINDOW_BYTES``) count them at 2 bytes where "slices" values
# would narrow, batch of 2+ rows: values by bf16 "slices" where the widened loop computed
# them. (Sweep s105-7, seed 105's worst forward case, 18.9 ms by the loop and 7.1 by bf16
# "slices", raised it; its 2.04 MiB of bf16 windows beside a large input stay over both
# bounds, and with the loop.) Forward, one process, alternated
# (``bench.studies.constant_ab``; value_and_grad runs the same program): tuned on the
# 22 such problems of seeds 1300-1799, 0.57x the time (batch-1 problems, 0.92-1.33x,
# left out there); held out, the 15 of seeds 1800-2199: 0.66x (geometric mean;
# 0.36-1.13x, s1857-48 9.1 -> 10.3 ms).
NARROW_VALUE_WINDOW_BYTES = True
# With this few window offsets the window stack is a handful of slices and one batched
# dot computed values faster than the tile loop: on sweep seeds 2 and 5, 0.48-0.98x the
# loop's time on 10 of 17 such problems (under 0.8x on seven), 1.03-1.34x on the other
# seven (all under a millisecond but one 13 ms problem, 1.16x). So it did for 1-D windows,
# which are slices of one sequence: 0.35-0.98x the loop's time on 13 of the 17 1-D problems
# of sweep seeds 5 and 6 that "slices" differentiates, 1.01-1.41x on the other four.
SLICED_VALUES_MAX_OFFSETS = 4
# Elsewhere, where derivatives go by "slices" (its window tensor fits), values do too,
# unless the tile loop contracts positions one dot each (``TilePlan.per_position_values``:
# small batches, which XLA's CPU backend runs concurrently where a batched dot of thin
# matrices stays on one core) over more than one tile. Re-timed forward on the 46 such
# problems of sweep seeds 2 and 5-8 (current code, one run, the three alternated):
# values always by the loop (the rule before) left a regret of 1.115 (geometric mean;
# worst 2.35), always by "slices" 1.075 (worst 2.04), this rule 1.037 (worst 1.50);
# the loop won on 6 of the 8 per-position problems of several tiles (1.04-2.04x), and
# "slices" on most of the others (up to 2x: 30 tiles of one position on s9-22).
# Not for one batch row (LOOP_VALUES_MIN_BATCH): since "slices" gathers its windows for
# values (``_windows.value_windows``) its one batched contraction computed one row's values
# in 0.43-0.89x the loop's time on five of the six such problems of seeds 2-40 (s11-36,
# s16-46; s15-29 1.19x) and on s64-59 (0.47x; seed 64's worst forward case, 2.7x).
# Held out (the six such problems of seeds 41-62): forward 0.90x the time (geometric
# mean; s46-26 0.56x, s62-16 0.81x; s56-47, bf16, 1.22x and s60-52 1.17x).
LOOP_VALUES_MIN_BATCH = 2
# Where the loop differentiates because the window tensors do not fit beside a large
# input (``tiles.sliced_windows_fit``: over SLICED_DERIVATIVES_MAX_INPUT_PER_OUTPUT input
# elements per output position, whose stack's transpose would sum them all), values
# still go by "slices" ("slices/tiles") while one window tensor takes at most this many
# bytes: "slices" gathers its value windows (``_windows.value_windows``), reading only
# what the windows hold however large the input. Tuned on the 77 problems of sweep seeds
# 2-40 this changes (auto with and without it, one process, alternated): forward 0.86x
# the time (geometric mean; 0.32-1.76x, worst s8-13: 206 rows of 3 positions), value_and_
# grad the same programs but for names (1.00x). Held out, the 67 such problems of seeds
# 67-100: forward 0.87x (0.42-1.51x), value_and_grad 1.00x, compile 1.00x, temp 1.00x.
SLICED_VALUES_MAX_WINDOW_BYTES = 2 << 20
# Beyond that, values are gathered where the window tensors fit (``sliced_windows_fit``)
# only while one takes at most this many bytes: larger, writing the gathered tensor and
# reading it back cost more than the loop's tiles, which stay in cache. Sweep seed 102's
# worst forward case (s102-50: 6.2 MiB, 943 channels, 2.1x the loop's time) found it.
# Tuned on the 36 problems of seeds 430-480 the bound changes (auto with and without
# it, one process, alternated): no bound 1.00, 2 MiB 0.90x the forward time (geometric
# mean) but up to 2.43x (three 2.6-3.0 MiB problems 1.39-2.43x), 4 MiB 0.91x, worst
# 1.08x. Held out, the 47 such problems of seeds 481-560: forward 0.86x (0.32-1.42x),
# value_and_grad, compile and temp 1.00x (the same derivatives).
SLICED_VALUES_FITTING_MAX_WINDOW_BYTES = 4 << 20
# A composed route's derivatives: ``_routes.DERIVATIVE_ROUTES`` (re-exported).
DERIVATIVE_ROUTES = _routes.DERIVATIVE_ROUTES
# Where "shifts" takes the "products" route (autotune times it there).
derivatives_by_products = products.derivatives_by_products


def choose(
    geom: Geometry, batch: int, filters: int, dtype: jax.typing.DTypeLike, backend: str
) -> str:
    """The implementation "auto" picks, from static shapes, dtype and backend only.

    The cost model (deterministic: no timing, the same arguments give the same name;
    constants tuned on the bench suite and sweep seeds 2 and 5-9, evaluated on seeds 10
    and 11; later bounds each evaluated on a seed drawn after it or on held-out problems)
    picks one route for undifferentiated values and one for derivatives; a name
    ``"values/derivatives"`` (e.g. ``"tiles/slices"``) says they differ (:func:`composed`).

    * ``backend == "cpu"``:

      1. "shifts" if the input has at most ``SHIFTS_FEW_CHANNELS`` channels (or at
         most ``SHIFTS_MAX_CHANNELS`` and at most ``SHIFTS_MANY_CHANNELS_MAX_FILTERS``
         filters, ``channels * filters`` at most ``SHIFTS_MANY_CHANNELS_MAX_PRODUCT``, or
         at most ``SHIFTS_FEW_TERMS`` features whatever the filters), a
         position's filter bank fewer than ``SHIFTS_MAX_BANK`` weights
         (``feature_dim * filters``) and, for windows of at least
         ``SHIFTS_DEEP_FEATURES`` features, at most ``SHIFTS_DEEP_MAX_FILTERS`` filters
         (and beyond ``SHIFTS_MAX_TERMS`` features at most two):
         values with no window tensor at all (its derivatives: see
         :mod:`jlocalconv.implementations.shifts`); 1b. where only that last bound
         keeps "shifts" out and the windows have fewer than
         ``SHIFTS_DEEP_VALUES_MAX_FEATURES`` features, values by "shifts" and
         derivatives by the route rules 2-3 give (``"shifts/tiles"``,
         ``"shifts/slices"``);
      2. derivatives by "slices" where
         :func:`~jlocalconv.implementations.tiles.derivatives_by_slices` says so (never
         over windows of more than ``tiles.SLICED_DERIVATIVES_MAX_STACKED_OFFSETS`` offsets
         stacked in one shot, whose transpose compiles for seconds; otherwise a
         dominant kernel, unless a 16-bit one of 2+ MiB beside at most 16 rows, whose
         operands are widened (so also for one row: ``tiles.NARROW_KERNEL_LOOP_ONE_ROW``),
         or one over sparse windows whose stack's transpose sums
         10 M+ elements (``tiles.KERNEL_BOUND_LOOP_MIN_TRANSPOSE``); disjoint windows,
         or three window tensors within ``SLICED_DERIVATIVES_BYTES`` over an input at most
         ``SLICED_DERIVATIVES_MAX_INPUT_PER_OUTPUT`` times the output, unless
         :func:`~jlocalconv.implementations.tiles.loop_transposes_faster`: many offsets
         over an input large for the filters, or
         :func:`~jlocalconv.implementations.tiles.loop_rows_faster`: many offsets and
         megabytes of windows of few enough rows for the loop's kernel gradient by
         rows, or a tile plan of one tile over windows "slices" would differentiate
         as they are (``tiles.ONE_TILE_LOOP_MIN_OFFSETS``); windows stacked axis by axis where
         :func:`~jlocalconv.implementations._windows.sliced_by_axis` says so), else by
         the "tiles" loop (``"slices/tiles"`` where the window tensor takes at most
         ``SLICED_VALUES_MAX_WINDOW_BYTES``, or at most
         ``SLICED_VALUES_FITTING_MAX_WINDOW_BYTES`` where only the transposition decided
         it, and rule 3 gives values to "slices"; bf16 windows counted at 2 bytes where
         those values would narrow: ``NARROW_VALUE_WINDOW_BYTES``);
      3. values by "slices" where derivatives are ("slices"; ``"slices/slices"``
         where the derivatives stack windows axis by axis, take the kernel gradient
         by rows (:func:`~jlocalconv.implementations.tiles.sliced_kernel_tangent_by_rows`)
         or the inputs' gradient kernel first
         (:func:`~jlocalconv.implementations.slices.kernel_major_inputs_gradient`)),
         except by "tiles"
         (``"tiles/slices"``) where the tile loop contracts each position with its
         own dot over more than one tile (``TilePlan.per_position_values``; see
         :mod:`jlocalconv.implementations.tiles` for how it sizes its tiles), the
         batch has at least ``LOOP_VALUES_MIN_BATCH`` rows and
         neither the kernel dominates (``1 < batch`` and
         ``batch * MIN_TILES < filters``: YOLOv1's local layer) nor windows have at
         most ``SLICED_VALUES_MAX_OFFSETS`` offsets or one spatial dimension.

      16-bit float operands are computed in float32 and the result rounded once
      (:func:`widens`), but for "slices" values over a bfloat16 kernel that outweighs
      the windows (:func:`narrows_values`).
    * any other backend (GPU, TPU): "slices", one large batched contraction, which is
      what accelerators favour; a sequential tile loop would serialise small kernels.
      These choices are reasoned, not measured (no accelerator was available).

    Args:
      geom: the problem's geometry.
      batch: the batch size.
      filters: the number of filters.
      dtype: the inputs' dtype.
      backend: ``jax.default_backend()`` (e.g. ``"cpu"``, ``"gpu"``, ``"tpu"``).

    Returns:
      A key of ``IMPLEMENTATIONS``, ``"tiles/slices"``, ``"slices/slices"``,
      ``"slices/tiles"``, ``"shifts/slices"`` or ``"shifts/tiles"``.

    Example:
      >>> from jlocalconv.geometry import make_geometry
      >>> geom = make_geometry((32, 32, 32, 16), 3)  # 50 MiB of windows: the loop
      >>> choose(geom, 32, 16, "float32", "cpu"), choose(geom, 32, 16, "float32", "gpu")
      ('tiles', 'slices')
      >>> choose(geom, 32, 12, "float32", "cpu")  # 16 channels x 12 filters: shifts
      'shifts'
      >>> choose(make_geometry((32, 28, 28, 1), 5), 32, 8, "float32", "cpu")  # 1 channel
      'shifts'
      >>> choose(make_geometry((16, 64, 64, 8), 5), 16, 8, "float32", "cpu")  # 200 features
      'shifts/tiles'
      >>> choose(make_geometry((8, 7, 7, 1024), 3), 8, 256, "float32", "cpu")  # kernel-bound
      'slices/slices'
      >>> choose(make_geometry((32, 12, 12, 8), 6), 32, 8, "float32", "cpu")  # small windows
      'slices'
      >>> choose(make_geometry((2, 12, 12, 8), 6), 2, 8, "float32", "cpu")  # 2 rows: by rows
      'slices/slices'
      >>> choose(make_geometry((4, 20, 20, 8), (5, 7)), 4, 8, "float32", "cpu")  # unstrided
      'slices/slices'
      >>> choose(make_geometry((4, 40, 40, 8), (5, 7)), 4, 8, "float32", "cpu")  # 5.2 MiB
      'tiles'
      >>> same = make_geometry((8, 24, 24, 32), 3, padding="same")  # 48 tiles, a dot each
      >>> choose(same, 8, 64, "float32", "cpu")
      'tiles/slices'
      >>> choose(make_geometry((32, 705, 11), 5), 32, 24, "float32", "cpu")  # 1-D
      'slices'
      >>> deep = make_geometry((2, 9, 21, 20, 3), (8, 7, 7), (3, 3, 1))  # 162 inputs/output
      >>> choose(deep, 2, 6, "float32", "cpu")  # 0.6 MiB of windows: gathered values
      'slices/tiles'
      >>> strided = make_geometry((17, 65, 25, 7), 9, 3)  # 81 offsets, 14 inputs per output
      >>> choose(strided, 17, 5, "float32", "cpu"), choose(strided, 17, 16, "float32", "cpu")
      ('tiles', 'slices')
      >>> choose(strided, 15, 5, "float32", "cpu")  # 3.7 MiB of windows: gathered values
      'slices/tiles'
    """
    if backend != "cpu":
        return "slices"
    shifts = _shifts_fits(geom, filters)
    deep = geom.feature_dim >= SHIFTS_DEEP_FEATURES and filters > SHIFTS_DEEP_MAX_FILTERS
    if shifts and not deep:
        return "shifts"  # values without windows; its derivatives pick their own route
    name = _windowed_choice(geom, batch, filters, dtype)
    if shifts and geom.feature_dim < SHIFTS_DEEP_VALUES_MAX_FEATURES:
        return "shifts/" + name.rpartition("/")[2]  # rule 1b: these derivatives
    return name


def _windowed_choice(geom: Geometry, batch: int, filters: int, dtype: jax.typing.DTypeLike) -> str:
    """:func:`choose` on CPU where "shifts" does not compute values (rules 2-3)."""
    itemsize = max(np.dtype(dtype).itemsize, 4)  # 16-bit floats are computed in float32
    kernel_bound = batch > 1 and kernel_dominates(batch, filters)
    plain = kernel_bound or geom.window_items <= SLICED_VALUES_MAX_OFFSETS or geom.ndim == 1
    loop_values = not plain and _loop_values(geom, batch, filters, itemsize)  # rule 3
    kernel_itemsize = np.dtype(dtype).itemsize  # 16-bit kernels stay 16-bit
    if not derivatives_by_slices(geom, batch, filters, itemsize, kernel_itemsize):
        # The loop differentiates; where only because it transposes the windows faster
        # (their tensor fits), or beside a large input while the windows stay small,
        # values still follow rule 3.
        nbytes = window_bytes(geom, batch, _value_itemsize(geom, batch, filters, dtype))
        fit = nbytes <= SLICED_VALUES_FITTING_MAX_WINDOW_BYTES and sliced_windows_fit(
            geom, batch, filters, itemsize
        )
        gathered = nbytes <= SLICED_VALUES_MAX_WINDOW_BYTES or fit
        return "slices/tiles" if gathered and not loop_values else "tiles"
    if loop_values:
        return "tiles/slices"
    # One route; composed where the tangent differs from "slices" itself.
    differs = sliced_gradients_differ(geom, batch, filters, itemsize)
    by_axis = not plain and sliced_by_axis(geom, batch, itemsize)
    return "slices/slices" if differs or by_axis else "slices"


def _value_itemsize(geom: Geometry, batch: int, filters: int, dtype: jax.typing.DTypeLike) -> int:
    """Bytes per element of the window tensor "slices" values would hold: bfloat16 where
    :func:`resolve` takes them from the 16-bit operands (:func:`narrows_values`, the
    kernel taken in the inputs' ``dtype``; see ``NARROW_VALUE_WINDOW_BYTES``), else
    float32 or wider."""
    narrow = NARROW_VALUE_WINDOW_BYTES and batch > 1
    if narrow and _narrow_kernel_bound(dtype, geom.ndim, batch, filters):
        return 2
    return max(np.dtype(dtype).itemsize, 4)


def _loop_values(geom: Geometry, batch: int, filters: int, itemsize: int) -> bool:
    """Whether the tile loop computes values faster than "slices" where derivatives go
    by "slices" (rule 3 of :func:`choose`): per-position dots over several tiles."""
    if batch < LOOP_VALUES_MIN_BATCH:
        return False
    plan = plan_tiles(geom, batch, filters, itemsize)
    return plan.per_position_values and math.prod(plan.counts(geom)) > 1


def _shifts_fits(geom: Geometry, filters: int) -> bool:
    """The channel, filter and bank bounds of rule 1 of :func:`choose` (all but the
    deep-window bound, which rule 1b relaxes for values)."""
    if geom.channels > SHIFTS_MAX_CHANNELS or geom.feature_dim * filters >= SHIFTS_MAX_BANK:
        return False
    if geom.feature_dim > SHIFTS_MAX_TERMS and filters > 2:
        return False
    if geom.channels <= SHIFTS_FEW_CHANNELS or geom.feature_dim <= SHIFTS_FEW_TERMS:
        return True
    few_filters = filters <= SHIFTS_MANY_CHANNELS_MAX_FILTERS
    return few_filters and geom.channels * filters <= SHIFTS_MANY_CHANNELS_MAX_PRODUCT


def shifts_unrolls_few(geom: Geometry) -> bool:
    """Whether "shifts" unrolls few enough terms to be worth compiling for a trial
    (autotune's candidates, the sweep's timing): at most ``SHIFTS_FEW_CHANNELS``
    channels, or at most ``SHIFTS_MAX_CHANNELS`` under ``SHIFTS_TRIAL_MAX_FEATURES``
    features (one fused term each).

    >>> from jlocalconv.geometry import make_geometry
    >>> cases = ((16, 3), (32, 3), (16, 9))  # (channels, window)
    >>> [shifts_unrolls_few(make_geometry((1, 12, 12, c), w)) for c, w in cases]
    [True, False, False]
    """
    if geom.channels <= SHIFTS_FEW_CHANNELS:
        return True
    return geom.channels <= SHIFTS_MAX_CHANNELS and geom.feature_dim < SHIFTS_TRIAL_MAX_FEATURES


def widens(
    inputs: jax.Array | np.ndarray,
    kernel: jax.Array | np.ndarray,
    preferred_element_type: jax.typing.DTypeLike | None,
    backend: str,
) -> bool:
    """Whether "auto" computes in float32 (see ``CPU_WIDENED_DTYPES``).

    On CPU, for 16-bit float operands whose result is at most 32 bits wide (a float64
    ``preferred_element_type`` asks for float64 accumulation, which widening to
    float32 would not give).

    >>> import jax.numpy as jnp
    >>> x = jnp.ones((1, 4, 2), jnp.bfloat16)
    >>> widens(x, x, None, "cpu"), widens(x, x, None, "gpu"), widens(x, x, "float64", "cpu")
    (True, False, False)
    """
    dtypes = {np.dtype(inputs.dtype), np.dtype(kernel.dtype)}
    out = result_dtype(inputs, preferred_element_type)
    return backend == "cpu" and dtypes <= set(CPU_WIDENED_DTYPES) and out.itemsize <= 4


@functools.cache  # one wrapper per implementation: callers may cache compiled programs by it
def widened(impl: Implementation) -> Implementation:
    """``impl`` run on float32 operands, its result rounded once to the requested dtype.

    The inputs are widened here; the kernel where an implementation reads it (its
    contractions and "shifts"' terms convert their operands to the inputs' dtype), so
    the tile loop widens one filter block at a time and writes each block's gradient
    rounded once, instead of holding a float32 copy of the whole kernel (sweep problem
    s9-10, a 9.6 MiB bf16 kernel: value_and_grad temp 60.0 -> 42.8 MiB). "shifts"'
    undifferentiated values widen the whole kernel once where many terms read it
    (``shifts.WIDEN_ONCE_MIN_TERMS``: a conversion per term was a kernel launch each).
    """

    # The tile loop's rows kernel gradient keeps a window tensor for the backward pass:
    # held in the inputs' own 16-bit dtype, which represents the widened values exactly.
    holds_windows = "window_dtype" in inspect.signature(impl).parameters

    def run(inputs, kernel, geom, *, precision, preferred_element_type):
        out_dtype = result_dtype(inputs, preferred_element_type)
        wide = inputs.astype(jnp.float32)
        options = {"window_dtype": inputs.dtype} if holds_windows else {}
        out = impl(wide, kernel, geom, precision=precision, preferred_element_type=None, **options)
        return out.astype(out_dtype)

    return run


def resolve(
    name: str,
    inputs: jax.Array | np.ndarray,
    kernel: jax.Array | np.ndarray,
    preferred_element_type: jax.typing.DTypeLike | None,
    backend: str,
) -> Implementation:
    """``IMPLEMENTATIONS[name]`` (or :func:`composed` for a ``"values/derivatives"``
    name) as "auto" and "autotune" run it: widened where :func:`widens` says so."""
    impl = lookup(name)
    if not widens(inputs, kernel, preferred_element_type, backend):
        return impl
    return narrow_values(widened(impl)) if narrows_values(name, inputs, kernel) else widened(impl)


def narrows_values(
    name: str, inputs: jax.Array | np.ndarray, kernel: jax.Array | np.ndarray
) -> bool:
    """Whether :func:`resolve` computes ``name``'s undifferentiated values from the 16-bit
    operands themselves (:func:`narrow_values`; see ``NARROW_KERNEL_BOUND_VALUES``):
    "slices" values, bfloat16 operands, 2+ spatial dimensions and more than
    ``NARROW_MIN_FILTERS_PER_ROW`` filters per batch row.

    >>> import jax.numpy as jnp
    >>> x, k = jnp.ones((2, 9, 9, 3), jnp.bfloat16), jnp.ones((49, 27, 64), jnp.bfloat16)
    >>> [narrows_values(name, x, k) for name in ("slices/tiles", "slices", "tiles")]
    [True, True, False]
    >>> narrows_values("slices", x, k[..., :8])  # 4 filters per row: widened
    False
    """
    spatial_ndim = inputs.ndim - 2  # batch and channels
    batch, filters = inputs.shape[0], kernel.shape[-1]
    narrow = _narrow_kernel_bound(kernel.dtype, spatial_ndim, batch, filters)
    return narrow and name.partition("/")[0] == "slices"


def _narrow_kernel_bound(
    kernel_dtype: jax.typing.DTypeLike, spatial_ndim: int, batch: int, filters: int
) -> bool:
    """The operand bounds of :func:`narrows_values` (see ``NARROW_KERNEL_BOUND_VALUES``)."""
    return (
        NARROW_KERNEL_BOUND_VALUES
        and np.dtype(kernel_dtype) == np.dtype(jnp.bfloat16)
        and spatial_ndim >= 2
        and filters > NARROW_MIN_FILTERS_PER_ROW * batch
    )


@functools.cache  # one wrapper per implementation, as widened
def narrow_values(wide: Implementation) -> Implementation:
    """``wide`` (a :func:`widened` implementation) under differentiation; undifferentiated,
    "slices" on the 16-bit operands accumulating in float32, the result rounded once.

    The same exact products summed in float32 as ``wide``'s (in another order), without
    a float32 copy of the kernel: see ``NARROW_KERNEL_BOUND_VALUES``.
    """

    def run(inputs, kernel, geom, *, precision, preferred_element_type):
        out_dtype = result_dtype(inputs, preferred_element_type)
        options = dict(geom=geom, precision=precision)

        def values(x: jax.Array, k: jax.Array) -> jax.Array:
            out = local_conv_slices(x, k, **options, preferred_element_type=jnp.float32)
            return out.astype(out_dtype)

        whole = functools.partial(wide, **options, preferred_element_type=preferred_element_type)
        return differentiated_as(values, whole)(inputs, kernel)

    return run


def lookup(name: str) -> Implementation:
    """The implementation a name from :func:`choose` names: ``IMPLEMENTATIONS[name]``, or
    :func:`composed` for ``"values/derivatives"``."""
    return composed(*name.split("/")) if "/" in name else IMPLEMENTATIONS[name]


@functools.cache  # one function per pair: callers may cache compiled programs by it
def composed(values: str, derivatives: str) -> Implementation:
    """An implementation whose values come from ``IMPLEMENTATIONS[values]`` and which is
    differentiated (values included) by the derivative route ``derivatives`` (one of
    ``DERIVATIVE_ROUTES``: "slices", "patches", the "tiles" loop or "products"; see
    :func:`~jlocalconv.implementations._routes.differentiated`).

    >>> import jax, jax.numpy as jnp
    >>> from jlocalconv.geometry import make_geometry
    >>> geom = make_geometry((2, 12, 12, 8), 6)
    >>> x, k = jnp.ones(geom.input_shape(2)), jnp.ones(geom.kernel_shape(4))
    >>> impl = composed("tiles", "slices")
    >>> bool(jnp.allclose(impl(x, k, geom, precision=None, preferred_element_type=None),
    ...                   local_conv_slices(x, k, geom)))
    True
    """
    value_impl = IMPLEMENTATIONS[values]
    if derivatives not in DERIVATIVE_ROUTES:
        raise KeyError(f"{derivatives!r} is not one of {DERIVATIVE_ROUTES}")

    def run(inputs, kernel, geom, *, precision, preferred_element_type, window_dtype=None):
        options = dict(precision=precision, preferred_element_type=preferred_element_type)
        value_route = functools.partial(value_impl, geom=geom, **options)
        op = _routes.differentiated(
            value_route, derivatives, inputs, kernel, geom, **options, window_dtype=window_dtype
        )
        return op(inputs, kernel)

    return run


def names() -> tuple[str, ...]:
    """ "auto" and every implementation: what tests and benchmarks iterate over."""
    return ("auto", *IMPLEMENTATIONS)


def accepted() -> tuple[str, ...]:
    """Every accepted value of ``implementation=``: :func:`names` and "autotune".

    "autotune" (:mod:`jlocalconv.autotune`) times the others on the call's problem.
    """
    return (*names(), "autotune")
