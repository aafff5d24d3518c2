"""Data- and spatially-parallel local convolution over a device mesh.

A locally connected kernel holds ``output_items * feature_dim * filters`` parameters, so
besides splitting the batch (data parallelism) the natural way to scale is to split the
*output rows* (the first spatial dimension) over devices: each device owns the kernel rows
of its output rows and needs only its own input rows plus a *halo* of neighbouring rows,
received from the neighbouring devices with ``lax.ppermute``. The input is never gathered.

How the rows are laid out (:func:`halo_plan`). With ``n`` devices on ``spatial_axis``,
``R = output_rows / n`` output rows per device, stride ``s``, dilation ``d``, window ``k``
and low padding ``p`` on the row dimension, device ``i`` reads the input rows
``[i * R * s - p, i * R * s - p + L)`` with ``L = (R - 1) * s + d * (k - 1) + 1`` (zeros
outside the input). If the input rows divide by ``n``, the input is taken split evenly by
its rows over ``spatial_axis`` (as a previous sharded layer leaves it, so nothing is
re-blocked) and each device receives the rows it reads from other blocks through
``lax.ppermute``: a few rows from each of a few nearby devices, as many as the window, the
stride, the padding and the mismatch between input and output row blocks ask, never a
number that grows with ``n``. If they do not divide, the input cannot be stored split by
rows, so it is taken replicated over ``spatial_axis`` and each device slices its ``L`` rows:
nothing moves. Each device then runs :func:`jlocalconv.local_conv` with no row padding on
its ``L`` rows and produces exactly its ``R`` output rows.

Divisibility rule: the number of output rows must be a multiple of the size of
``spatial_axis`` and the batch a multiple of the size of ``batch_axis``; otherwise a
``ValueError`` says so (nothing is padded: the kernel's rows must split evenly to stay
sharded).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jlocalconv import _checks
from jlocalconv._errors import fail
from jlocalconv.geometry import Geometry, IntOrTuple, PaddingLike, make_geometry
from jlocalconv.implementations import names
from jlocalconv.ops import local_conv

_FN = "sharded_local_conv"

LocalConvFn = Callable[..., jax.Array]


def kernel_partition_spec(spatial_axis: Hashable | None = None) -> P:
    """The ``PartitionSpec`` that splits a kernel's output positions by output row.

    The kernel is ``(output_items, feature_dim, filters)`` with output positions in
    row-major order, so splitting axis 0 into equal contiguous blocks gives each device the
    kernel rows of a contiguous block of output rows (when the output rows divide evenly).

    Args:
      spatial_axis: the mesh axis name to split over, or None (replicated).

    Returns:
      ``PartitionSpec(spatial_axis, None, None)``.

    Example:
      >>> from jlocalconv.sharding import kernel_partition_spec
      >>> kernel_partition_spec("space")
      P('space', None, None)
    """
    return P(spatial_axis, None, None)


def kernel_sharding(mesh: Mesh, spatial_axis: Hashable | None) -> NamedSharding:
    """A ``NamedSharding`` placing a kernel as :func:`sharded_local_conv` expects it.

    Args:
      mesh: the device mesh.
      spatial_axis: the mesh axis that splits output rows, or None (replicated).

    Returns:
      ``NamedSharding(mesh, kernel_partition_spec(spatial_axis))``; use it with
      ``jax.device_put(kernel, ...)`` so that no device ever holds the whole kernel.

    Raises:
      ValueError: if ``spatial_axis`` is not an axis of ``mesh``.

    Example:
      >>> import jax, numpy as np
      >>> from jlocalconv.sharding import kernel_sharding
      >>> mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("space",))
      >>> kernel_sharding(mesh, "space").spec
      P('space', None, None)
    """
    _check_mesh(mesh, "kernel_sharding")
    _check_axis(mesh, spatial_axis, "kernel_sharding", "spatial_axis")
    return NamedSharding(mesh, kernel_partition_spec(spatial_axis))


def sharded_local_conv(
    mesh: Mesh,
    *,
    batch_axis: Hashable | None = None,
    spatial_axis: Hashable | None = None,
) -> LocalConvFn:
    """``local_conv`` run under ``shard_map``: batch and/or output rows split over a mesh.

    The returned function has :func:`jlocalconv.local_conv`'s signature and results. The
    batch is split over ``batch_axis``; the output rows (the first spatial dimension) and
    the kernel's matching rows are split over ``spatial_axis``, each device receiving only
    the input rows it needs through a halo exchange (``lax.ppermute``, never an all-gather
    of the input). The kernel (and a per-position bias) stays split by output row through
    the forward and the backward pass; a ``(filters,)`` bias is replicated. Mesh axes not
    named are replicated. Call it inside or outside ``jax.jit``; place the kernel with
    :func:`kernel_sharding` so that it is not moved at each call.

    Args:
      mesh: the ``jax.sharding.Mesh``.
      batch_axis: mesh axis name for the batch, or None.
      spatial_axis: mesh axis name for the output rows, or None.

    Returns:
      ``f(inputs, kernel, kernel_size, strides, output_shape=None, data_format=None, *,
      padding="valid", dilation=1, bias=None, precision=None, preferred_element_type=None,
      implementation="auto")``, equal to ``local_conv`` with the same arguments.

    Raises:
      TypeError: if ``mesh`` is not a ``jax.sharding.Mesh``.
      ValueError: if an axis is not in ``mesh`` or both axes are the same; when ``f`` is
        traced, for any argument ``local_conv`` rejects, if the batch does not divide by
        the size of ``batch_axis``, or if the output rows do not divide by the size of
        ``spatial_axis`` (the divisibility rule: nothing is padded).

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, jlocalconv
      >>> from jlocalconv.sharding import sharded_local_conv
      >>> mesh = jax.make_mesh((1, 1), ("data", "space"))
      >>> f = sharded_local_conv(mesh, batch_axis="data", spatial_axis="space")
      >>> x = jnp.ones((2, 6, 6, 3))
      >>> k = jnp.ones(jlocalconv.kernel_shape(x.shape, 4, 3))
      >>> f(x, k, 3, 1).shape
      (2, 4, 4, 4)
    """
    _check_mesh(mesh, _FN)
    _check_axis(mesh, batch_axis, _FN, "batch_axis")
    _check_axis(mesh, spatial_axis, _FN, "spatial_axis")
    if batch_axis is not None and batch_axis == spatial_axis:
        fail(_FN, "spatial_axis", f"a mesh axis other than batch_axis={batch_axis!r}", "the same")

    def apply(
        inputs: jax.Array,
        kernel: jax.Array,
        kernel_size: IntOrTuple,
        strides: IntOrTuple,
        output_shape: Sequence[int] | None = None,
        data_format: str | None = None,
        *,
        padding: PaddingLike = "valid",
        dilation: IntOrTuple = 1,
        bias: jax.Array | None = None,
        precision: lax.PrecisionLike = None,
        preferred_element_type: jax.typing.DTypeLike | None = None,
        implementation: str = "auto",
    ) -> jax.Array:
        # make_geometry's argument order
        geometry = (kernel_size, strides, padding, dilation, data_format)
        geom = _validate(inputs, kernel, output_shape, bias, geometry, preferred_element_type)
        _check_implementation(implementation)
        _check_divisible(mesh, batch_axis, inputs.shape[0], "inputs", "batch size")
        _check_divisible(mesh, spatial_axis, geom.output_shape[0], "kernel", "output rows")
        options = dict(
            precision=precision,
            preferred_element_type=preferred_element_type,
            implementation=implementation,
        )
        return _sharded_call(mesh, batch_axis, spatial_axis, geom, options, inputs, kernel, bias)

    return apply


def _check_mesh(mesh: object, fn: str) -> None:
    if not isinstance(mesh, Mesh):
        fail(fn, "mesh", "a jax.sharding.Mesh", type(mesh).__name__, exc=TypeError)


def _check_axis(mesh: Mesh, axis: Hashable | None, fn: str, arg: str) -> None:
    if axis is not None and axis not in mesh.axis_names:
        fail(fn, arg, f"None or one of the mesh's axis names {mesh.axis_names}", repr(axis))


def _check_divisible(mesh: Mesh, axis: Hashable | None, size: int, arg: str, what: str) -> None:
    parts = 1 if axis is None else mesh.shape[axis]
    if size % parts:
        fail(
            _FN,
            arg,
            f"such that its {what} ({size}) divide evenly over mesh axis {axis!r} of size {parts}",
            f"{size} % {parts} = {size % parts}",
            hint="Choose a mesh axis size that divides it, or change the geometry "
            "(nothing is padded: the kernel's rows must split evenly).",
        )


def _validate(inputs, kernel, output_shape, bias, geometry, preferred_element_type) -> Geometry:
    """``local_conv``'s checks, with this function's name in the messages."""
    _checks.check_array(inputs, _FN, "inputs")
    _checks.check_floating(inputs, _FN, "inputs")
    geom = make_geometry(inputs.shape, *geometry, fn=_FN)
    _checks.check_operands(_FN, geom, inputs, kernel, output_shape, bias)
    _checks.check_preferred_element_type(preferred_element_type, _FN)
    return geom


def _check_implementation(implementation: object) -> None:
    if not isinstance(implementation, str) or implementation not in names():
        fail(_FN, "implementation", f"one of {names()}", repr(implementation))


class Piece(NamedTuple):
    """One window of input rows that every device takes from the same relative device.

    Attributes:
      hop: device ``i`` takes the window from device ``i + hop`` (0: its own block; else
        one ``lax.ppermute``).
      width: rows in the window (the same on every device: ``ppermute`` moves one shape).
      starts: per receiving device ``i``, the window's first row in the block of device
        ``i + hop``.
      at: per receiving device ``i``, where the window's first row lands in its halo'd
        block (negative or past its end: the window holds rows it does not need), or None
        if device ``i`` needs no row of device ``i + hop`` (or that device does not exist).
    """

    hop: int
    width: int
    starts: tuple[int, ...]
    at: tuple[int | None, ...]


@dataclasses.dataclass(frozen=True)
class HaloPlan:
    """How the input rows are laid out over devices and exchanged for one geometry.

    When the input rows divide by the number of devices, they are split evenly over the
    spatial mesh axis (``split``), which is how an input already sharded by rows (e.g. the
    output of a previous sharded layer) arrives, so it is never re-blocked; each device
    assembles the ``rows`` input rows its output rows read from windows of its own and of
    nearby devices' blocks (:class:`Piece`, one ``ppermute`` per non-zero hop). When they do
    not divide, the input cannot be stored split by rows (a jax array splits evenly), so it
    is taken replicated over the axis and each device slices its rows: nothing moves.

    Attributes:
      devices: the size of the spatial mesh axis, ``n``.
      split: whether the input rows are split over the devices (``input_rows % n == 0``).
      block: the input rows each device holds: ``input_rows / n``, or all of them.
      rows: ``(R - 1) * stride + dilation * (k - 1) + 1`` with ``R = output_rows / n``:
        the rows each device's output rows read (its halo'd block).
      pieces: the windows, in hop order.
    """

    devices: int
    split: bool
    block: int
    rows: int
    pieces: tuple[Piece, ...]

    @property
    def halo_rows(self) -> int:
        """Input rows per example in the collective-permutes (one per piece with a non-zero
        hop): what a device that takes part in all of them sends, and receives, per call."""
        return sum(piece.width for piece in self.pieces if piece.hop)


def halo_plan(geom: Geometry, devices: int) -> HaloPlan:
    """The :class:`HaloPlan` for splitting ``geom``'s output rows over ``devices``.

    Device ``i`` reads the input rows ``[i * R * s - p, i * R * s - p + rows)`` (``R``
    output rows per device, stride ``s``, low padding ``p``; rows outside the input are
    zeros). Split blocks hold ``C = input_rows / n`` rows against ``R * s`` per block of
    output rows, so the rows device ``i`` reads start ``i * (C - R * s) + p`` rows before its
    own block: a shift that grows to about ``input_rows - output_rows * s + p`` at the last
    device, which the window and the padding bound. A piece is as wide as the widest need of
    any device from its hop, so the hops and the rows they move depend on the window, the
    stride and the padding, never on the number of devices.

    Args:
      geom: the full (unsharded) geometry, e.g. from ``jlocalconv.geometry.make_geometry``.
      devices: the size of the spatial mesh axis; must divide ``geom.output_shape[0]``.

    Returns:
      The plan; pure Python, no array work.

    Example:
      >>> from jlocalconv.geometry import make_geometry
      >>> from jlocalconv.sharding import halo_plan
      >>> geom = make_geometry((1, 8, 5, 1), kernel_size=3, padding="same")  # 8 output rows
      >>> plan = halo_plan(geom, 4)      # 2 rows per device, 1 from each neighbour
      >>> plan.block, plan.rows, plan.halo_rows
      (2, 4, 2)
      >>> plan.pieces[0]                 # the last row of the previous device, at row 0
      Piece(hop=-1, width=1, starts=(0, 1, 1, 1), at=(None, 0, 0, 0))
      >>> halo_plan(make_geometry((1, 10, 5, 1), kernel_size=3), 4).halo_rows  # 10 % 4
      0
    """
    input_rows, per_device = geom.spatial_shape[0], geom.output_shape[0] // devices
    stride, dil, size = geom.strides[0], geom.dilation[0], geom.kernel_size[0]
    split = input_rows % devices == 0
    block = input_rows // devices if split else input_rows
    rows = (per_device - 1) * stride + dil * (size - 1) + 1
    needs: dict[int, dict[int, tuple[int, int, int]]] = {}  # hop -> device -> (start, stop, at)
    for device in range(devices):
        first = device * per_device * stride - geom.padding[0][0]
        lo, hi = max(first, 0), min(first + rows, input_rows)  # rows past the input: zeros
        for source in range(lo // block, (hi - 1) // block + 1) if hi > lo else ():
            base = source * block  # the source block's first row
            start, stop = max(lo, base) - base, min(hi, base + block) - base
            hop = source - device if split else 0
            needs.setdefault(hop, {})[device] = (start, stop, base + start - first)
    pieces = tuple(_piece(hop, needs[hop], block, devices) for hop in sorted(needs))
    return HaloPlan(devices, split, block, rows, pieces)


def _piece(hop: int, needs: dict[int, tuple[int, int, int]], block: int, devices: int) -> Piece:
    """One window width for all devices; each window shifted to stay inside its block."""
    width = max(stop - start for start, stop, _ in needs.values())
    starts = [0] * devices
    at: list[int | None] = [None] * devices
    for device, (start, _, place) in needs.items():
        window = min(start, block - width)  # still covers [start, stop): stop <= block
        starts[device], at[device] = window, place - (start - window)
    return Piece(hop, width, tuple(starts), tuple(at))


def _sharded_call(mesh, batch_axis, spatial_axis, geom, options, inputs, kernel, bias):
    """Splits the operands, runs one block per device under ``shard_map``, joins the result."""
    row = 1 if geom.channels_last else 2  # the first spatial axis of inputs and results
    rows_spec = P(batch_axis, *[None] * (row - 1), spatial_axis)
    operands = {"kernel": kernel, "x": inputs}
    specs = {"kernel": kernel_partition_spec(spatial_axis), "x": rows_spec}
    if bias is not None:
        operands["bias"] = bias
        specs["bias"] = P() if bias.ndim == 1 else P(spatial_axis)
    if spatial_axis is None:  # data parallel only: every device has all the rows
        body = _data_body(geom, options)
    else:
        plan = halo_plan(geom, mesh.shape[spatial_axis])
        if not plan.split:  # each device slices its rows of the replicated input
            specs["x"] = P(batch_axis)
        body = _spatial_body(geom, options, plan, spatial_axis, row)
    if _explicit(mesh):  # shard_map wants operands typed with its in_specs
        operands = {name: _reshard(mesh, v, specs[name]) for name, v in operands.items()}
    mapped = jax.shard_map(body, mesh=mesh, in_specs=(specs,), out_specs=rows_spec)
    return mapped(operands)


def _explicit(mesh: Mesh) -> bool:
    return any(t == AxisType.Explicit for t in mesh.axis_types)


def _reshard(mesh, value, spec):
    return jax.reshard(value, NamedSharding(mesh, spec))


def _block_conv(x, kernel, bias, geom, options, row_padding):
    """``local_conv`` on one device's block, with ``row_padding`` on the first spatial dim."""
    padding = (row_padding, *geom.padding[1:])
    return local_conv(
        x,
        kernel,
        geom.kernel_size,
        geom.strides,
        data_format=geom.data_format,
        padding=padding,
        dilation=geom.dilation,
        bias=bias,
        **options,
    )


def _data_body(geom, options):
    def body(ops):
        return _block_conv(ops["x"], ops["kernel"], ops.get("bias"), geom, options, geom.padding[0])

    return body


def _spatial_body(geom, options, plan, axis_name, row):
    def body(ops):
        x = _with_halo(ops["x"], plan, axis_name, row)
        # The rows' padding is already in the halo'd block (zeros where no input row is).
        return _block_conv(x, ops["kernel"], ops.get("bias"), geom, options, (0, 0))

    return body


def _with_halo(block, plan, axis_name, row):
    """This device's ``plan.rows`` input rows, written window by window into zeros.

    Windows overlap only where they hold the same input rows, so the order of the writes
    does not matter; a window a device does not need goes to the margin that is cut off.
    """
    index = lax.axis_index(axis_name)
    margin = max((piece.width for piece in plan.pieces), default=0)
    shape = list(block.shape)
    shape[row] = plan.rows + 2 * margin
    halo = jnp.zeros(shape, block.dtype)
    for piece in plan.pieces:
        at = [-margin if place is None else place for place in piece.at]
        window = _window(block, piece, index, axis_name, row)
        halo = lax.dynamic_update_slice_in_dim(halo, window, _entry(at, index) + margin, row)
    return lax.slice_in_dim(halo, margin, margin + plan.rows, axis=row)


def _window(block, piece, index, axis_name, row):
    """``piece``'s window of this device's receiver, sent by device ``index + hop``."""
    n, hop = len(piece.at), piece.hop
    receivers = [i for i in range(n) if piece.at[i] is not None]
    # The sender (this device) cuts the window its receiver ``index - hop`` asked for.
    starts = [0] * n
    for i in receivers:
        starts[i + hop] = piece.starts[i]
    window = lax.dynamic_slice_in_dim(block, _entry(starts, index), piece.width, axis=row)
    if not hop:
        return window
    return lax.ppermute(window, axis_name, [(i + hop, i) for i in receivers])


def _entry(table: list[int], index: jax.Array) -> int | jax.Array:
    """``table[index]``; a Python int when every device has the same entry (a static slice)."""
    if len(set(table)) == 1:
        return table[0]
    return jnp.asarray(table, jnp.int32)[index]
