"""tf.keras LocallyConnected kernels of implementations 2 and 3 <-> jlocalconv's kernel.

tf.keras 2's ``LocallyConnected1D/2D`` store their weights in one of three layouts:

* implementation 1: ``(output_items, feature_dim, filters)``, already jlocalconv's layout;
* implementation 2: a dense, mostly-zero kernel ``(*input_spatial, C, *output_spatial,
  filters)`` (channels_last) or ``(C, *input_spatial, filters, *output_spatial)``
  (channels_first), masked by connectivity and applied as one matmul;
* implementation 3: a 1-D vector of the non-zero weights at sorted ``kernel_idxs`` of a
  ``(prod(output_spatial) * filters, prod(input_spatial) * C)`` sparse matrix, whose rows and
  columns flatten ``(*spatial, channels)`` (channels_last) or ``(channels, *spatial)``
  (channels_first) in row-major order.

Implementations 2 and 3 also allow ``padding="same"``, with Keras's own rule
(``conv_utils.conv_connected_inputs``): window ``o`` starts at ``o * stride - kernel_size // 2``,
which is *not* XLA's ``"same"`` for even windows or for strides that do not divide the input.
:func:`keras_padding` gives the explicit ``(low, high)`` pairs that reproduce it.

``input_shape`` is always the input's *spatial* shape, as in Keras's helpers
(``conv_kernel_mask``, ``conv_kernel_idxs``); channels and filters are read from the kernel.
Everything here is host-side NumPy (for files and checkpoints), not traced code. The
public functions are re-exported by :mod:`jlocalconv.layout`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from jlocalconv._errors import fail
from jlocalconv._validate import channels_from_kernel, shape_tuple
from jlocalconv.geometry import (
    Geometry,
    IntOrTuple,
    make_geometry,
    normalize_data_format,
    normalize_tuple,
)

_KERAS_PADDINGS = ("valid", "same")


def keras_padding(
    input_shape: Sequence[int],
    kernel_size: Sequence[int],
    strides: Sequence[int],
    padding: str,
) -> tuple[tuple[int, int], ...]:
    """Keras's ``"valid"``/``"same"`` for locally connected layers as explicit pairs.

    ``"same"`` gives ``ceil(n / stride)`` outputs with ``kernel_size // 2`` zeros on the low
    side; the high side gets what the last window needs (never negative: a window that ends
    before the input does simply leaves the tail unused). This is tf.keras 2's
    ``conv_utils.conv_connected_inputs``, not XLA's ``"same"`` (which puts the odd pad on
    the high side) for even windows or strides that do not divide the input.

    Args:
      input_shape: the input's spatial shape, one int per dim.
      kernel_size: the window (for a dilated window, its extent ``(k - 1) * d + 1``).
      strides: the window strides, one int per dim.
      padding: ``"valid"`` or ``"same"`` (lower case).

    Returns:
      One ``(low, high)`` pair per spatial dim, for ``local_conv``'s ``padding``.

    Example:
      >>> from jlocalconv.layout import keras_padding
      >>> keras_padding((7, 6), (2, 3), (2, 1), "same")     # XLA's "same": ((0, 1), (1, 1))
      ((1, 0), (1, 1))
    """
    if padding == "valid":
        return ((0, 0),) * len(input_shape)
    pairs = []
    for n, k, s in zip(input_shape, kernel_size, strides):
        out = -(-n // s)
        pairs.append((k // 2, max((out - 1) * s + k - n - k // 2, 0)))
    return tuple(pairs)


def keras_geometry(
    input_shape: Sequence[int],
    channels: int,
    kernel_size: IntOrTuple,
    strides: IntOrTuple,
    padding: str,
    data_format: str | None,
    fn: str,
) -> Geometry:
    """The jlocalconv :class:`Geometry` of a Keras locally connected layer.

    Raises:
      ValueError / TypeError: naming ``input_shape``, ``kernel_size``, ``strides``,
        ``padding`` or ``data_format``.
    """
    spatial = spatial_shape(input_shape, fn)
    ndim = len(spatial)
    ks = normalize_tuple(kernel_size, ndim, fn, "kernel_size")
    st = normalize_tuple(strides, ndim, fn, "strides")
    if not isinstance(padding, str) or padding.lower() not in _KERAS_PADDINGS:
        fail(fn, "padding", f"one of Keras's {_KERAS_PADDINGS}", repr(padding))
    fmt = normalize_data_format(data_format, fn)
    pads = keras_padding(spatial, ks, st, padding.lower())
    full = (1, *spatial, channels) if fmt == "channels_last" else (1, channels, *spatial)
    return make_geometry(full, ks, st, pads, 1, fmt, fn=fn)


def spatial_shape(input_shape: object, fn: str) -> tuple[int, ...]:
    """``input_shape`` as a tuple of positive ints (the spatial shape only)."""
    return shape_tuple(input_shape, fn, "input_shape", what="the input's spatial shape")


def keras_kernel_shape(geom: Geometry, filters: int, implementation: int) -> tuple[int, ...]:
    """The shape of Keras's ``kernel`` weight for ``geom``, ``filters`` and ``implementation``."""
    if implementation == 1:
        return geom.kernel_shape(filters)
    if implementation == 2:
        if geom.channels_last:
            return (*geom.spatial_shape, geom.channels, *geom.output_shape, filters)
        return (geom.channels, *geom.spatial_shape, filters, *geom.output_shape)
    _, valid = _taps(geom)
    return (int(valid.sum()) * geom.channels * filters,)


def _taps(geom: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """``(index, valid)``, both ``(output_items, window_items)``, row-major on both axes.

    ``index`` is the flat (row-major) input position that window tap ``w`` of output
    position ``p`` reads, ``valid`` whether it lies inside the input (not in the padding).
    """
    n = geom.ndim
    index, valid = np.zeros((), np.int64), np.ones((), bool)
    for d, (size, k, s, (lo, _)) in enumerate(
        zip(geom.spatial_shape, geom.kernel_size, geom.strides, geom.padding)
    ):
        out = geom.output_shape[d]
        pos = np.arange(out)[:, None] * s - lo + np.arange(k)[None, :]
        axes = [1] * (2 * n)
        axes[d], axes[n + d] = out, k
        pos = pos.reshape(axes)  # output axis d, window axis n + d
        index = index * size + np.clip(pos, 0, size - 1)
        valid = valid & (pos >= 0) & (pos < size)
    shape = (*geom.output_shape, *geom.kernel_size)
    rows = (geom.output_items, geom.window_items)
    return np.broadcast_to(index, shape).reshape(rows), np.broadcast_to(valid, shape).reshape(rows)


def _split_features(kernel: np.ndarray, geom: Geometry) -> np.ndarray:
    """``(output_items, feature_dim, F)`` -> ``(output_items, window_items, C, F)``."""
    items, _, filters = kernel.shape
    if geom.channels_last:  # features flattened as (k..., C)
        return kernel.reshape(items, geom.window_items, geom.channels, filters)
    return kernel.reshape(items, geom.channels, geom.window_items, filters).transpose(0, 2, 1, 3)


def _join_features(split: np.ndarray, geom: Geometry) -> np.ndarray:
    """The inverse of :func:`_split_features`."""
    if not geom.channels_last:
        split = split.transpose(0, 2, 1, 3)
    return split.reshape(geom.kernel_shape(split.shape[-1]))


def _our_kernel(
    kernel: Any,
    input_shape: Sequence[int],
    kernel_size: IntOrTuple,
    strides: IntOrTuple,
    padding: str,
    data_format: str | None,
    fn: str,
) -> tuple[np.ndarray, Geometry]:
    """A jlocalconv kernel as NumPy and its Keras geometry, ``C`` read from the kernel."""
    kernel = np.asarray(kernel)
    spatial = spatial_shape(input_shape, fn)
    channels = _channels_from(kernel, kernel_size, len(spatial), fn)
    geom = keras_geometry(spatial, channels, kernel_size, strides, padding, data_format, fn)
    _check_shape(kernel, geom.kernel_shape(kernel.shape[-1]), fn, "kernel", "the geometry's")
    return kernel, geom


def _channels_from(kernel: Any, kernel_size: IntOrTuple, ndim: int, fn: str) -> int:
    """``C`` from a jlocalconv kernel's ``feature_dim = prod(kernel_size) * C``."""
    if not (hasattr(kernel, "shape") and len(kernel.shape) == 3):
        got = f"shape {np.shape(kernel)}"
        fail(fn, "kernel", "a (output_items, feature_dim, filters) array", got)
    window = math.prod(normalize_tuple(kernel_size, ndim, fn, "kernel_size"))
    # The Keras converters keep their own wording of this error (users and tests know it).
    keras_wording = "a feature_dim divisible by prod(kernel_size)"
    return channels_from_kernel(kernel, window, fn, expected=keras_wording)


def _check_shape(array: np.ndarray, shape: tuple[int, ...], fn: str, arg: str, why: str) -> None:
    if tuple(array.shape) != tuple(shape):
        fail(fn, arg, f"of shape {tuple(shape)} ({why})", f"shape {tuple(array.shape)}")


def _dense_to_common(dense: np.ndarray, geom: Geometry) -> np.ndarray:
    """Keras's dense kernel -> ``(input_items, C, output_items, F)``."""
    n_in, c, n_out = math.prod(geom.spatial_shape), geom.channels, geom.output_items
    if geom.channels_last:
        return dense.reshape(n_in, c, n_out, -1)
    return dense.reshape(c, n_in, -1, n_out).transpose(1, 0, 3, 2)


def _common_to_dense(common: np.ndarray, geom: Geometry) -> np.ndarray:
    """The inverse of :func:`_dense_to_common`."""
    filters = common.shape[-1]
    if geom.channels_last:
        return common.reshape(*geom.spatial_shape, geom.channels, *geom.output_shape, filters)
    common = common.transpose(1, 0, 3, 2)
    return common.reshape(geom.channels, *geom.spatial_shape, filters, *geom.output_shape)


def from_keras_dense(
    kernel: Any,
    input_shape: Sequence[int],
    kernel_size: IntOrTuple,
    strides: IntOrTuple = 1,
    padding: str = "valid",
    data_format: str | None = None,
) -> np.ndarray:
    """A tf.keras ``implementation=2`` kernel as a jlocalconv kernel.

    Keras keeps a dense weight between every input and output element and masks out the
    unconnected pairs at call time; this keeps exactly the connected ones. Taps that fall
    in ``"same"``'s zero padding get a zero weight.

    Args:
      kernel: Keras's dense kernel, ``(*input_shape, C, *output_shape, filters)`` for
        ``"channels_last"`` or ``(C, *input_shape, filters, *output_shape)`` for
        ``"channels_first"``.
      input_shape: the input's spatial shape (as Keras's ``conv_kernel_mask`` takes it).
      kernel_size: the window, an int or one int per spatial dim.
      strides: the window strides, an int or one int per spatial dim.
      padding: Keras's ``"valid"`` or ``"same"`` (see :func:`keras_padding`).
      data_format: ``"channels_last"`` (default) or ``"channels_first"``.

    Returns:
      A NumPy ``(output_items, feature_dim, filters)`` kernel with ``kernel``'s dtype,
      features in ``data_format``'s order, for ``local_conv`` with the same geometry
      (for ``"same"``, the padding of :func:`keras_padding`).

    Raises:
      ValueError / TypeError: for a kernel whose shape does not fit the geometry, or a
        bad geometric argument, naming it.

    Example:
      >>> import numpy as np
      >>> from jlocalconv.layout import from_keras_dense
      >>> dense = np.ones((5, 2, 3, 4), np.float32)   # 5 steps, C=2 -> 3 outputs, 4 filters
      >>> k = from_keras_dense(dense, (5,), 3)
      >>> k.shape, float(k.sum())
      ((3, 6, 4), 72.0)
    """
    fn = "from_keras_dense"
    kernel = np.asarray(kernel)
    spatial = spatial_shape(input_shape, fn)
    fmt = normalize_data_format(data_format, fn)
    if kernel.ndim != 2 * len(spatial) + 2:
        fail(
            fn, "kernel", f"a {2 * len(spatial) + 2}-D dense Keras kernel", f"shape {kernel.shape}"
        )
    channels = kernel.shape[len(spatial)] if fmt == "channels_last" else kernel.shape[0]
    geom = keras_geometry(spatial, channels, kernel_size, strides, padding, fmt, fn)
    filters = kernel.shape[-1] if geom.channels_last else kernel.shape[len(spatial) + 1]
    _check_shape(kernel, keras_kernel_shape(geom, filters, 2), fn, "kernel", "Keras's dense layout")
    return dense_to_kernel(kernel, geom)


def dense_to_kernel(dense: np.ndarray, geom: Geometry) -> np.ndarray:
    """:func:`from_keras_dense` for a validated ``geom`` and a dense kernel of the right shape."""
    index, valid = _taps(geom)
    common = _dense_to_common(dense, geom)
    positions = np.arange(geom.output_items)[:, None, None]
    split = common[index[:, :, None], np.arange(geom.channels)[None, None, :], positions]
    split = np.where(valid[:, :, None, None], split, np.zeros((), dense.dtype))
    return _join_features(split, geom)


def to_keras_dense(
    kernel: Any,
    input_shape: Sequence[int],
    kernel_size: IntOrTuple,
    strides: IntOrTuple = 1,
    padding: str = "valid",
    data_format: str | None = None,
) -> np.ndarray:
    """A jlocalconv kernel as tf.keras's ``implementation=2`` dense kernel.

    The inverse of :func:`from_keras_dense` on the connected weights: unconnected pairs
    are zeros, and weights of taps in ``"same"``'s zero padding (which multiply zeros) are
    dropped.

    Args:
      kernel: ``(output_items, feature_dim, filters)`` in ``data_format``'s feature order.
      input_shape, kernel_size, strides, padding, data_format: as in
        :func:`from_keras_dense`.

    Returns:
      A NumPy array of shape ``(*input_shape, C, *output_shape, filters)``
      (``"channels_last"``) or ``(C, *input_shape, filters, *output_shape)``
      (``"channels_first"``), ``kernel``'s dtype, for ``LocallyConnected*D.set_weights``.

    Raises:
      ValueError / TypeError: for a kernel whose shape does not fit the geometry, or a
        bad geometric argument, naming it.

    Example:
      >>> import numpy as np
      >>> from jlocalconv.layout import from_keras_dense, to_keras_dense
      >>> k = np.arange(3 * 6 * 4, dtype=np.float32).reshape(3, 6, 4)
      >>> dense = to_keras_dense(k, (5,), 3)
      >>> dense.shape, bool((from_keras_dense(dense, (5,), 3) == k).all())
      ((5, 2, 3, 4), True)
    """
    kernel, geom = _our_kernel(
        kernel, input_shape, kernel_size, strides, padding, data_format, "to_keras_dense"
    )
    index, valid = _taps(geom)
    split = _split_features(kernel, geom)
    shape = (math.prod(geom.spatial_shape), geom.channels, geom.output_items, kernel.shape[-1])
    common = np.zeros(shape, kernel.dtype)
    positions = np.broadcast_to(np.arange(geom.output_items)[:, None], index.shape)
    common[index[valid], :, positions[valid], :] = split[valid]
    return _common_to_dense(common, geom)


def _sparse_entries(geom: Geometry, filters: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(valid, kernel_idxs, order)`` of Keras's implementation 3 for ``geom``.

    The connected weights, taken as ``split[valid]`` (``split`` the kernel as
    ``(output_items, window_items, C, F)``) and flattened, sit at ``kernel_idxs`` (rows
    ``(out, in)`` in the same order); ``order`` sorts them as Keras does.
    """
    index, valid = _taps(geom)
    positions = np.broadcast_to(np.arange(geom.output_items)[:, None], index.shape)[valid]
    inputs = index[valid][:, None, None]
    channels = np.arange(geom.channels)[None, :, None]
    outputs, fs = positions[:, None, None], np.arange(filters)[None, None, :]
    if geom.channels_last:  # rows flatten (*out, F), columns (*in, C)
        out_idx, in_idx = outputs * filters + fs, inputs * geom.channels + channels
    else:  # rows flatten (F, *out), columns (C, *in)
        out_idx = fs * geom.output_items + outputs
        in_idx = channels * math.prod(geom.spatial_shape) + inputs
    shape = (len(positions), geom.channels, filters)
    idxs = np.stack(
        [np.broadcast_to(out_idx, shape).ravel(), np.broadcast_to(in_idx, shape).ravel()]
    )
    order = np.lexsort(idxs[::-1])  # by output row, then input column, as sorted() in Keras
    return valid, idxs.T[order], order


def from_keras_sparse(
    values: Any,
    kernel_idxs: Any,
    input_shape: Sequence[int],
    output_shape: Sequence[int],
    kernel_size: IntOrTuple,
    strides: IntOrTuple = 1,
    padding: str = "valid",
    data_format: str | None = None,
) -> np.ndarray:
    """A tf.keras ``implementation=3`` kernel as a jlocalconv kernel.

    Keras multiplies the inputs, flattened per example, by a sparse
    ``(prod(output_shape) * filters, prod(input_shape) * C)`` matrix holding ``values`` at
    ``kernel_idxs``. ``C`` and ``filters`` are read from ``values`` and ``kernel_idxs``, and
    ``kernel_idxs`` must equal the indices Keras builds for this geometry (so a kernel from
    a different geometry is an error, not a silently scrambled kernel).

    Args:
      values: Keras's 1-D ``kernel`` weight, one value per entry of ``kernel_idxs``.
      kernel_idxs: the layer's ``kernel_idxs``: ``(out_idx, in_idx)`` pairs in sorted
        order, as a list of pairs or an ``(nnz, 2)`` integer array.
      input_shape: the input's spatial shape.
      output_shape: the output's spatial shape (Keras's ``output_row, output_col``).
      kernel_size, strides, padding, data_format: as in :func:`from_keras_dense`.

    Returns:
      A NumPy ``(output_items, feature_dim, filters)`` kernel with ``values``' dtype;
      taps in ``"same"``'s zero padding get a zero weight.

    Raises:
      ValueError / TypeError: if ``values``, ``kernel_idxs`` or ``output_shape`` do not fit
        the geometry, or for a bad geometric argument, naming it.

    Example:
      >>> import numpy as np
      >>> from jlocalconv.layout import from_keras_sparse, to_keras_sparse
      >>> k = np.arange(3 * 6 * 4, dtype=np.float32).reshape(3, 6, 4)
      >>> values, idxs = to_keras_sparse(k, (5,), 3)
      >>> values.shape, idxs[:3].tolist()
      ((72,), [[0, 0], [0, 1], [0, 2]])
      >>> bool((from_keras_sparse(values, idxs, (5,), (3,), 3) == k).all())
      True
    """
    fn = "from_keras_sparse"
    values = np.asarray(values)
    idxs = np.asarray(kernel_idxs)
    if values.ndim != 1:
        fail(fn, "values", "Keras's 1-D implementation=3 kernel", f"shape {values.shape}")
    if idxs.shape != (len(values), 2) or not np.issubdtype(idxs.dtype, np.integer):
        expected = f"{len(values)} integer (out_idx, in_idx) pairs, one per value"
        fail(fn, "kernel_idxs", expected, f"shape {idxs.shape} and dtype {idxs.dtype}")
    geom = keras_geometry(input_shape, 1, kernel_size, strides, padding, data_format, fn)
    out = spatial_shape(output_shape, fn)
    if out != geom.output_shape:
        fail(fn, "output_shape", f"the geometry's spatial output shape {geom.output_shape}", out)
    filters, channels = _sparse_sizes(values, idxs, geom, fn)
    geom = dataclasses.replace(geom, channels=channels)
    if not np.array_equal(idxs, _sparse_entries(geom, filters)[1]):
        hint = "Pass the layer's own kernel_idxs, in Keras's sorted order."
        fail(fn, "kernel_idxs", "Keras's indices for this geometry", "other indices", hint=hint)
    return sparse_to_kernel(values, geom, filters)


def sparse_to_kernel(values: np.ndarray, geom: Geometry, filters: int) -> np.ndarray:
    """:func:`from_keras_sparse` for a validated ``geom`` and ``values`` of the right length."""
    valid, _, order = _sparse_entries(geom, filters)
    channels = geom.channels
    connected = np.empty(len(values), values.dtype)
    connected[order] = values
    split = np.zeros((*valid.shape, channels, filters), values.dtype)
    split[valid] = connected.reshape(-1, channels, filters)
    return _join_features(split, geom)


def _sparse_sizes(values: np.ndarray, idxs: np.ndarray, geom: Geometry, fn: str) -> tuple[int, int]:
    """``(filters, C)``: every output row appears (windows always touch the input)."""
    rows = int(idxs[:, 0].max()) + 1 if len(idxs) else 0
    taps = int(_taps(geom)[1].sum())
    filters = rows // geom.output_items
    if filters < 1 or rows % geom.output_items or len(values) % (taps * filters):
        expected = f"{taps} connected taps x C x filters entries over {geom.output_items} outputs"
        fail(fn, "values", expected, f"{len(values)} values in {rows} output rows")
    return filters, len(values) // (taps * filters)


def to_keras_sparse(
    kernel: Any,
    input_shape: Sequence[int],
    kernel_size: IntOrTuple,
    strides: IntOrTuple = 1,
    padding: str = "valid",
    data_format: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A jlocalconv kernel as tf.keras's ``implementation=3`` ``(values, kernel_idxs)``.

    Args:
      kernel: ``(output_items, feature_dim, filters)`` in ``data_format``'s feature order.
      input_shape, kernel_size, strides, padding, data_format: as in
        :func:`from_keras_dense`.

    Returns:
      ``(values, kernel_idxs)``: the 1-D weight Keras stores (``kernel``'s dtype; weights
      of taps in ``"same"``'s zero padding are dropped) and the ``(nnz, 2)`` int64
      ``(out_idx, in_idx)`` pairs it sits at, sorted as Keras's ``layer.kernel_idxs``.

    Raises:
      ValueError / TypeError: for a kernel whose shape does not fit the geometry, or a
        bad geometric argument, naming it.

    Example:
      >>> import numpy as np
      >>> from jlocalconv.layout import to_keras_sparse
      >>> values, idxs = to_keras_sparse(np.ones((4, 8, 1)), (4, 4), 2, 2)  # C=2, 1 filter
      >>> values.shape, idxs.shape, idxs[0].tolist(), idxs[-1].tolist()
      ((32,), (32, 2), [0, 0], [3, 31])
    """
    kernel, geom = _our_kernel(
        kernel, input_shape, kernel_size, strides, padding, data_format, "to_keras_sparse"
    )
    valid, idxs, order = _sparse_entries(geom, kernel.shape[-1])
    return _split_features(kernel, geom)[valid].ravel()[order], idxs
