"""Data- and spatially-parallel local convolution over a device mesh.

A locally connected kernel holds ``output_items * feature_dim * filters`` parameters, so
besides splitting the batch (data parallelism) the natural way to scale is to split the
*output rows* (the first spatial dimension) over devices: each device owns the kernel rows
of its output rows and needs only its own input rows plus a *halo* of neighbouring rows,
received from the neighbouring devices with ``lax.ppermute``. The input is never gathered.

How the rows are split. With ``n`` devices on ``spatial_axis``, ``R = output_rows / n``
output rows per device, stride ``s``, dilation ``d``, window ``k`` and low padding ``p``
on the row dimension, device ``i`` owns the ``B = R * s`` input rows
``[i * B, (i + 1) * B)`` and needs rows ``[i * B - p, i * B - p + L)`` with
``L = (R - 1) * s + d * (k - 1) + 1``: ``p`` rows from the devices before it (zeros on
device 0: the low padding) and ``L - B - p`` rows from the devices after it (one hop unless
the halo is larger than a block, then several). Input rows past ``n * B`` that the last
device needs (e.g. the ``k - 1`` extra rows of a ``"valid"`` convolution) travel as a small
tail slab replicated over ``spatial_axis``. Each device then runs :func:`jlocalconv.local_conv`
with no row padding on its halo'd block and produces exactly its ``R`` output rows.

Divisibility rule: the number of output rows must be a multiple of the size of
``spatial_axis`` and the batch a multiple of the size of ``batch_axis``; otherwise a
``ValueError`` says so (nothing is padded: the kernel's rows must split evenly to stay
sharded).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Hashable, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jlocalconv import _checks
from jlocalconv._errors import fail
from jlocalconv.geometry import Geometry, IntOrTuple
from jlocalconv.ops import local_conv
from jlocalconv.spec import ConvOptions, LocalConvSpec, Unpack, with_options

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

    @with_options
    def apply(
        inputs: jax.Array,
        kernel: jax.Array,
        kernel_size: IntOrTuple,
        strides: IntOrTuple,
        output_shape: Sequence[int] | None = None,
        data_format: str | None = None,
        *,
        bias: jax.Array | None = None,
        **options: Unpack[ConvOptions],
    ) -> jax.Array:
        """:func:`jlocalconv.local_conv` split over the mesh (see ``sharded_local_conv``)."""
        _checks.check_inputs(inputs, _FN, None)
        spec = LocalConvSpec.create(
            inputs.ndim - 2, kernel_size, strides, data_format, fn=_FN, **options
        )
        geom = spec.geometry(inputs.shape, _FN)
        _checks.check_operands(_FN, geom, inputs, kernel, output_shape, bias)
        _check_divisible(mesh, batch_axis, inputs.shape[0], "inputs", "batch size")
        _check_divisible(mesh, spatial_axis, geom.output_shape[0], "kernel", "output rows")
        # The body sets each block's padding and dilation from `geom`; the rest pass through.
        call = spec.call_options()
        return _sharded_call(mesh, batch_axis, spatial_axis, geom, call, inputs, kernel, bias)

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


@dataclasses.dataclass(frozen=True)
class HaloPlan:
    """How the input rows are split and exchanged for one geometry and device count.

    Attributes:
      devices: the size of the spatial mesh axis, ``n``.
      block: ``B = strides[0] * output_rows / n``, the input rows each device owns.
      pieces: ``(hop, start, stop)`` in row order: device ``i`` concatenates rows
        ``[start, stop)`` of the block of device ``i + hop`` (hop 0: its own block).
      tail: rows of the slab of input rows past ``n * B`` that the last devices need
        (0 when those rows are all padding).
    """

    devices: int
    block: int
    pieces: tuple[tuple[int, int, int], ...]
    tail: int

    @property
    def halo_rows(self) -> int:
        """Rows each device receives from other devices (and the tail), per example."""
        return sum(stop - start for hop, start, stop in self.pieces if hop)


def halo_plan(geom: Geometry, devices: int) -> HaloPlan:
    """The :class:`HaloPlan` for splitting ``geom``'s output rows over ``devices``.

    Args:
      geom: the full (unsharded) geometry, e.g. from ``jlocalconv.geometry.make_geometry``.
      devices: the size of the spatial mesh axis; must divide ``geom.output_shape[0]``.

    Returns:
      The plan; pure Python, no array work.

    Example:
      >>> from jlocalconv.geometry import make_geometry
      >>> from jlocalconv.sharding import halo_plan
      >>> geom = make_geometry((1, 18, 5, 1), kernel_size=3)      # valid: 16 output rows
      >>> halo_plan(geom, 8)                                       # 2 own rows, 2 from the next
      HaloPlan(devices=8, block=2, pieces=((0, 0, 2), (1, 0, 2)), tail=2)
    """
    rows = geom.output_shape[0]
    stride, dil, size = geom.strides[0], geom.dilation[0], geom.kernel_size[0]
    block = rows // devices * stride
    needed = (rows // devices - 1) * stride + dil * (size - 1) + 1
    lo = -geom.padding[0][0]  # the block-local first needed row; negative: before the block
    hi = lo + needed
    pieces = []
    for hop in range(lo // block, (hi - 1) // block + 1):
        start, stop = max(lo - hop * block, 0), min(hi - hop * block, block)
        pieces.append((hop, start, stop))
    last_hop = pieces[-1][0]
    real_rows_past_blocks = geom.spatial_shape[0] > devices * block
    tail = last_hop * block if last_hop > 0 and real_rows_past_blocks else 0
    return HaloPlan(devices, block, tuple(pieces), tail)


def _sharded_call(mesh, batch_axis, spatial_axis, geom, options, inputs, kernel, bias):
    """Splits the operands, runs one block per device under ``shard_map``, joins the result."""
    row = 1 if geom.channels_last else 2  # the first spatial axis of inputs and results
    rows_spec = P(batch_axis, *[None] * (row - 1), spatial_axis)
    operands = {"kernel": kernel}
    specs = {"kernel": kernel_partition_spec(spatial_axis)}
    if bias is not None:
        operands["bias"] = bias
        specs["bias"] = P() if bias.ndim == 1 else P(spatial_axis)
    if spatial_axis is None:  # data parallel only: every device has all the rows
        operands["x"], specs["x"] = inputs, rows_spec
        body = _data_body(geom, options)
    else:
        plan = halo_plan(geom, mesh.shape[spatial_axis])
        specs["x"], specs["tail"] = rows_spec, P(batch_axis)
        operands["x"], operands["tail"] = _prepare_rows(mesh, inputs, plan, row, specs)
        if operands["tail"] is None:
            del operands["tail"], specs["tail"]
        body = _spatial_body(geom, options, plan, spatial_axis, row)
    if _explicit(mesh):  # shard_map wants operands typed with its in_specs
        operands = {name: _reshard(mesh, v, specs[name]) for name, v in operands.items()}
    mapped = jax.shard_map(body, mesh=mesh, in_specs=(specs,), out_specs=rows_spec)
    return mapped(operands)


def _explicit(mesh: Mesh) -> bool:
    return any(t == AxisType.Explicit for t in mesh.axis_types)


def _reshard(mesh, value, spec):
    return jax.reshard(value, NamedSharding(mesh, spec))


def _prepare_rows(mesh, inputs, plan, row, specs):
    """:func:`_split_rows`; on an explicit mesh, partitioned by XLA (slicing a sharded dim
    is not defined for explicit shardings) into the layouts ``shard_map`` takes."""
    split = functools.partial(_split_rows, plan=plan, row=row)
    if not _explicit(mesh):
        return split(inputs)
    out = (
        NamedSharding(mesh, specs["x"]),
        NamedSharding(mesh, specs["tail"]) if plan.tail else None,
    )
    return jax.sharding.auto_axes(split, out_sharding=out)(inputs)


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
        x = _with_halo(ops["x"], ops.get("tail"), plan, axis_name, row)
        # The rows' padding is already in the halo'd block (zeros from devices that do not exist).
        return _block_conv(x, ops["kernel"], ops.get("bias"), geom, options, (0, 0))

    return body


def _split_rows(inputs, plan, row):
    """``inputs`` cut (or zero-extended) to ``n * B`` rows, and the tail slab past them."""
    main_rows, rows = plan.devices * plan.block, inputs.shape[row]
    if rows >= main_rows:
        main = lax.slice_in_dim(inputs, 0, main_rows, axis=row)
    else:
        main = _pad_rows(inputs, main_rows - rows, row)
    if not plan.tail:
        return main, None
    tail = lax.slice_in_dim(inputs, main_rows, min(rows, main_rows + plan.tail), axis=row)
    return main, _pad_rows(tail, plan.tail - tail.shape[row], row)


def _pad_rows(x, extra, row):
    widths = [(0, 0)] * x.ndim
    widths[row] = (0, extra)
    return jnp.pad(x, widths)


def _with_halo(block, tail, plan, axis_name, row):
    """This device's block with the rows it needs from its neighbours, in row order."""
    n, index = plan.devices, lax.axis_index(axis_name)
    parts = []
    for hop, start, stop in plan.pieces:
        piece = lax.slice_in_dim(block, start, stop, axis=row)
        if hop:
            piece = _from_device(piece, hop, n, axis_name)
        if hop > 0 and tail is not None:
            # Devices past the last one "own" the tail's blocks.
            at = jnp.maximum(index + hop - n, 0) * plan.block + start
            spare = lax.dynamic_slice_in_dim(tail, at, stop - start, axis=row)
            piece = jnp.where(index + hop < n, piece, spare)
        parts.append(piece)
    return lax.concatenate(parts, row) if len(parts) > 1 else parts[0]


def _from_device(piece, hop, n, axis_name):
    """Device ``i`` gets ``piece`` of device ``i + hop``; zeros where that device does not exist."""
    perm = [(src, src - hop) for src in range(n) if 0 <= src - hop < n]
    return lax.ppermute(piece, axis_name, perm) if perm else jnp.zeros_like(piece)
