"""Exact converters between jlocalconv's kernel and the other layouts of the same weights.

jlocalconv's kernel is tf.keras's ``(output_items, feature_dim, filters)``: output positions
in row-major order, each window flattened as ``(k1, ..., kN, C)`` (channels_last) or
``(C, k1, ..., kN)`` (channels_first). This module converts it, exactly (pure reshapes,
transposes and scatters), to and from:

* the other data format's feature order (:func:`convert_data_format`);
* ``jax.lax.conv_general_dilated_local`` / ``flax.linen.ConvLocal``
  (:func:`to_lax`, :func:`from_lax`);
* the dense matrix of the whole linear map (:func:`to_dense_matrix`);
* tf.keras ``LocallyConnected*D`` implementations 2 and 3 (``from_keras_dense``,
  ``to_keras_dense``, ``from_keras_sparse``, ``to_keras_sparse``, and ``keras_padding``,
  Keras's own ``"same"``): thin, lazy re-exports of
  :mod:`jlocalconv.keras.converters`, where they live (importing this module imports no
  Keras code).

The converters here accept NumPy and JAX arrays and return the same kind (NumPy in, NumPy
out, so float64 checkpoints stay float64 without ``jax_enable_x64``); with JAX arrays they
work under ``jit`` and ``grad``. Shape arguments are static Python ints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from jlocalconv import _checks
from jlocalconv._errors import fail
from jlocalconv._validate import (
    as_int,
    channels_from_kernel,
    normalize_data_format,
    normalize_tuple,
    positive_int,
    shape_tuple,
)
from jlocalconv.geometry import Geometry, IntOrTuple, PaddingLike, make_geometry

Array = TypeVar("Array", np.ndarray, jax.Array)

# tf.keras implementations 2 and 3 live in jlocalconv.keras.converters and stay part of
# this module's documented API, imported on first use (type checkers see them statically).
if TYPE_CHECKING:
    from jlocalconv.keras.converters import (
        from_keras_dense,
        from_keras_sparse,
        keras_padding,
        to_keras_dense,
        to_keras_sparse,
    )

_KERAS_CONVERTERS = (
    "from_keras_dense",
    "from_keras_sparse",
    "keras_padding",
    "to_keras_dense",
    "to_keras_sparse",
)


def __getattr__(name: str) -> Any:
    if name in _KERAS_CONVERTERS:
        from jlocalconv.keras import converters

        return getattr(converters, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def convert_data_format(
    kernel: Array,
    kernel_size: IntOrTuple,
    channels_in: int,
    from_format: str | None,
    to_format: str | None,
) -> Array:
    """Reorders a kernel's feature axis from one data format's window order to the other's.

    A channels_last kernel flattens each window as ``(k1, ..., kN, C)``, a channels_first one
    as ``(C, k1, ..., kN)``; both have the same shape, so a kernel in the wrong order is not
    detectable and silently computes something else. The converted kernel, applied to the
    input in ``to_format``, gives the same results (in that format) as ``kernel`` on the
    input in ``from_format``.

    Args:
      kernel: ``(output_items, feature_dim, filters)`` in ``from_format``'s feature order.
      kernel_size: the window, a tuple of N ints, or an int for the same size in every
        spatial dim (N is then read from ``feature_dim``; only ``prod(kernel_size)``
        matters here).
      channels_in: the input's channel count ``C``.
      from_format: ``kernel``'s data format, ``"channels_last"`` (or None) or
        ``"channels_first"``.
      to_format: the data format to convert to.

    Returns:
      The kernel with the same shape, features in ``to_format``'s order; ``kernel`` itself
      when the formats are equal.

    Raises:
      ValueError / TypeError: naming the argument, if ``kernel`` is not a rank-3 array whose
        ``feature_dim`` is ``prod(kernel_size) * channels_in``, or an argument is malformed.

    Example:
      >>> import numpy as np
      >>> from jlocalconv.layout import convert_data_format
      >>> k = np.arange(6).reshape(1, 6, 1)       # one position, window (3,), C=2: (k, C)
      >>> convert_data_format(k, (3,), 2, "channels_last", "channels_first")[0, :, 0]
      array([0, 2, 4, 1, 3, 5])
    """
    fn = "convert_data_format"
    source = normalize_data_format(from_format, fn)
    target = normalize_data_format(to_format, fn)
    _check_rank(kernel, 3, fn, "(output_items, feature_dim, filters)")
    channels = positive_int(channels_in, fn, "channels_in")
    window = _window_items(kernel_size, kernel.shape[1], channels, fn)
    _check_features(kernel, window, channels, fn)
    if source == target:
        return kernel
    return _swap_window_and_channels(kernel, window, channels, source == "channels_last")


def to_lax(
    kernel: Array,
    output_shape: Sequence[int],
    kernel_size: IntOrTuple,
    channels_in: int,
    data_format: str | None = None,
) -> Array:
    """jlocalconv's kernel as the ``rhs`` of ``jax.lax.conv_general_dilated_local``.

    The result pairs with ``dimension_numbers=(lhs_spec, "HWIO", out_spec)`` and its N-D
    analogues (rhs spec: the spatial dims in order, then ``I``, then ``O``; ``"WIO"`` in 1-D,
    ``"DHWIO"`` in 3-D), with any ``lhs_spec``/``out_spec`` (``"NHWC"`` for channels_last
    inputs, ``"NCHW"`` for channels_first). It is also the ``kernel`` parameter of
    ``flax.linen.ConvLocal``, which uses those dimension numbers with channels_last inputs.
    lax orders each window's features ``(C, k1, ..., kN)`` (``"C"`` followed by the rhs
    spec's spatial dims), whatever the input's format. Use ``filter_shape=kernel_size``,
    ``rhs_dilation=dilation`` and the padding as explicit ``(low, high)`` pairs (XLA's
    ``"SAME"`` and ``"VALID"`` equal jlocalconv's ``"same"`` and ``"valid"``).

    Args:
      kernel: ``(output_items, feature_dim, filters)`` in ``data_format``'s feature order.
      output_shape: the spatial output shape, e.g. ``conv_output_shape(...)``.
      kernel_size: the window, an int or one int per spatial dim.
      channels_in: the input's channel count ``C``.
      data_format: the data format ``kernel`` was made for: ``"channels_last"`` (default
        when None) or ``"channels_first"``.

    Returns:
      ``(*output_shape, C * prod(kernel_size), filters)``, features ordered
      ``(C, k1, ..., kN)``.

    Raises:
      ValueError / TypeError: naming the argument, if ``kernel``'s shape does not match
        ``output_shape``, ``kernel_size`` and ``channels_in``, or an argument is malformed.

    Example:
      >>> import jax, jax.numpy as jnp, jlocalconv
      >>> from jlocalconv.layout import to_lax
      >>> x = jax.random.normal(jax.random.key(0), (2, 6, 5, 3))
      >>> k = jax.random.normal(jax.random.key(1), jlocalconv.kernel_shape(x.shape, 4, 3))
      >>> ours = jlocalconv.local_conv2d(x, k, 3, 1)
      >>> theirs = jax.lax.conv_general_dilated_local(
      ...     x, to_lax(k, (4, 3), 3, 3), (1, 1), "VALID", (3, 3),
      ...     dimension_numbers=("NHWC", "HWIO", "NHWC"))
      >>> bool(jnp.allclose(ours, theirs, atol=1e-5))
      True
    """
    fn = "to_lax"
    out, window, channels, fmt = _lax_args(output_shape, kernel_size, channels_in, data_format, fn)
    _check_rank(kernel, 3, fn, "(output_items, feature_dim, filters)")
    _check_axis(kernel, 0, math.prod(out), fn, f"prod(output_shape={out})")
    _check_features(kernel, window, channels, fn)
    if fmt == "channels_last":
        kernel = _swap_window_and_channels(kernel, window, channels, to_channels_first=True)
    return kernel.reshape(*out, window * channels, kernel.shape[-1])


def from_lax(
    kernel: Array,
    output_shape: Sequence[int],
    kernel_size: IntOrTuple,
    channels_in: int,
    data_format: str | None = None,
) -> Array:
    """A ``jax.lax.conv_general_dilated_local`` / ``flax.linen.ConvLocal`` kernel as ours.

    The inverse of :func:`to_lax` (see it for the dimension numbers the lax kernel pairs
    with): ``from_lax(to_lax(k, *args), *args) == k`` exactly.

    Args:
      kernel: lax's ``rhs``, ``(*output_shape, C * prod(kernel_size), filters)`` with
        features ordered ``(C, k1, ..., kN)`` (rhs spec ``"HWIO"`` and its N-D analogues).
      output_shape: the spatial output shape.
      kernel_size: the window, an int or one int per spatial dim.
      channels_in: the input's channel count ``C``.
      data_format: the data format to produce a kernel for: ``"channels_last"`` (default
        when None) or ``"channels_first"``.

    Returns:
      ``(output_items, feature_dim, filters)`` in ``data_format``'s feature order.

    Raises:
      ValueError / TypeError: naming the argument, if ``kernel``'s shape does not match
        ``output_shape``, ``kernel_size`` and ``channels_in``, or an argument is malformed.

    Example:
      >>> import numpy as np
      >>> from jlocalconv.layout import from_lax
      >>> lax_kernel = np.zeros((4, 3, 27, 8), np.float32)   # ConvLocal on 6x5x3, 3x3 window
      >>> from_lax(lax_kernel, (4, 3), 3, 3).shape
      (12, 27, 8)
    """
    fn = "from_lax"
    out: tuple[int, ...]
    out, window, channels, fmt = _lax_args(output_shape, kernel_size, channels_in, data_format, fn)
    features = window * channels
    _check_rank(kernel, len(out) + 2, fn, "(*output_shape, C * prod(kernel_size), filters)")
    if tuple(kernel.shape[:-1]) != (*out, features):
        want = ", ".join(map(str, (*out, features, "filters")))
        expected = f"of shape (*output_shape, C * prod(kernel_size), filters) = ({want})"
        fail(fn, "kernel", expected, f"kernel.shape={tuple(kernel.shape)}")
    kernel = kernel.reshape(math.prod(out), features, kernel.shape[-1])
    if fmt == "channels_first":
        return kernel
    return _swap_window_and_channels(kernel, window, channels, to_channels_first=False)


def to_dense_matrix(
    kernel: Array,
    input_shape: Sequence[int],
    kernel_size: IntOrTuple,
    strides: IntOrTuple,
    padding: PaddingLike = "valid",
    dilation: IntOrTuple = 1,
    data_format: str | None = None,
) -> Array:
    """The whole local convolution as one dense ``(inputs, outputs)`` matrix.

    ``local_conv(x, kernel, ...).reshape(batch, -1) == x.reshape(batch, -1) @ M`` for
    inputs ``x`` in ``data_format``: rows flatten one example's input as ``(*input_shape,
    C)`` (channels_last) or ``(C, *input_shape)`` (channels_first), columns its output as
    ``(*output_shape, filters)`` or ``(filters, *output_shape)``, all row-major. These are
    tf.keras's flattening orders: ``M.T`` is the matrix whose non-zeros a
    ``LocallyConnected*D(implementation=3)`` layer stores (with Keras's own padding). Every
    entry is a kernel weight or an exact zero (no arithmetic), so it is meant for
    debugging and tests: it has ``prod(input_shape) * C * output_items * filters`` entries.

    Args:
      kernel: ``(output_items, feature_dim, filters)`` in ``data_format``'s feature order.
      input_shape: the input's *spatial* shape (no batch, no channels); ``C`` is read from
        ``feature_dim = prod(kernel_size) * C``.
      kernel_size, strides, padding, dilation, data_format: as in ``local_conv``.

    Returns:
      ``(prod(input_shape) * C, output_items * filters)``, ``kernel``'s dtype and array kind.

    Raises:
      ValueError / TypeError: naming the argument, if ``kernel`` does not fit the geometry
        or an argument is malformed.

    Example:
      >>> import numpy as np, jlocalconv
      >>> from jlocalconv.layout import to_dense_matrix
      >>> x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
      >>> k = np.ones(jlocalconv.kernel_shape(x.shape, 4, 2, strides=2), np.float32)
      >>> m = to_dense_matrix(k, (5,), 2, 2)
      >>> m.shape
      (15, 8)
      >>> y = jlocalconv.local_conv1d(x, k, 2, 2)
      >>> bool(np.allclose(x.reshape(2, -1) @ m, y.reshape(2, -1), atol=1e-6))
      True
    """
    fn = "to_dense_matrix"
    geom = _kernel_geometry(
        fn, kernel, input_shape, kernel_size, strides, padding, dilation, data_format
    )
    _checks.check_kernel(kernel, geom, fn)
    sources = _tap_sources(geom)  # (output_items, feature_dim), -1 in the padding
    positions, features = np.nonzero(sources >= 0)
    rows = sources[positions, features]
    items, filters = geom.output_items, kernel.shape[-1]
    shape = (math.prod(geom.spatial_shape) * geom.channels, items, filters)
    if isinstance(kernel, np.ndarray):
        matrix = np.zeros(shape, kernel.dtype)
        matrix[rows, positions] = kernel[positions, features]
    else:  # each (row, position) pair occurs once: windows never repeat an input element
        matrix = jnp.zeros(shape, kernel.dtype).at[rows, positions].set(kernel[positions, features])
    if not geom.channels_last:  # columns (filters, *output_shape)
        matrix = matrix.transpose(0, 2, 1)
    return matrix.reshape(shape[0], items * filters)


def _kernel_geometry(
    fn: str,
    kernel: object,
    input_shape: Sequence[int],
    kernel_size: IntOrTuple,
    strides: IntOrTuple,
    padding: PaddingLike,
    dilation: IntOrTuple,
    data_format: str | None,
) -> Geometry:
    """The :class:`Geometry` of ``kernel`` applied to inputs of *spatial* shape ``input_shape``.

    ``C`` is read from the kernel's ``feature_dim = prod(kernel_size) * C``; the kernel is
    checked to be a rank-3 array with such a ``feature_dim`` (``_checks.check_kernel`` does
    the rest).
    """
    _check_rank(kernel, 3, fn, "(output_items, feature_dim, filters)")
    spatial = shape_tuple(input_shape, fn, "input_shape", what="the input's spatial shape")
    window = math.prod(normalize_tuple(kernel_size, len(spatial), fn, "kernel_size"))
    channels = channels_from_kernel(kernel, window, fn)
    fmt = normalize_data_format(data_format, fn)
    full = (1, *spatial, channels) if fmt == "channels_last" else (1, channels, *spatial)
    return make_geometry(full, kernel_size, strides, padding, dilation, fmt, fn=fn)


def _tap_sources(geom: Geometry) -> np.ndarray:
    """``(output_items, feature_dim)``: the flat input element each kernel weight reads.

    Flat indices are row-major over one example's input in ``geom``'s data format; ``-1``
    marks taps in the zero padding. Static NumPy: the windows of ``1 + arange`` (padding
    reads 0), taken straight from the definition.
    """
    n, size = geom.ndim, math.prod(geom.spatial_shape) * geom.channels
    numbers = np.arange(1, size + 1).reshape(geom.input_shape(1)[1:])
    if not geom.channels_last:
        numbers = np.moveaxis(numbers, 0, -1)  # (*spatial, C)
    numbers = np.pad(numbers, [*geom.padding, (0, 0)])
    view = sliding_window_view(numbers, geom.effective_kernel_size, axis=tuple(range(n)))
    taps = view[(*(slice(None, None, s) for s in geom.strides), slice(None))]  # positions
    dilated: tuple[Any, ...] = (..., *(slice(None, None, d) for d in geom.dilation))
    taps = taps[dilated]  # (*out, C, *k)
    if geom.channels_last:  # windows flattened (k..., C)
        taps = np.moveaxis(taps, n, -1)
    return taps.reshape(geom.output_items, geom.feature_dim) - 1


def _swap_window_and_channels(
    kernel: Array, window: int, channels: int, to_channels_first: bool
) -> Array:
    """Features ``(k..., C)`` -> ``(C, k...)`` (or back): only ``prod(k)`` matters."""
    items, _, filters = kernel.shape
    split = (window, channels) if to_channels_first else (channels, window)
    k = kernel.reshape(items, *split, filters).transpose(0, 2, 1, 3)
    return k.reshape(items, window * channels, filters)


def _lax_args(
    output_shape: object,
    kernel_size: IntOrTuple,
    channels_in: object,
    data_format: str | None,
    fn: str,
) -> tuple[tuple[int, ...], int, int, str]:
    """``(output_shape, prod(kernel_size), C, data_format)`` for :func:`to_lax`/``from_lax``."""
    out = shape_tuple(output_shape, fn, "output_shape", minimum=0)
    window = math.prod(normalize_tuple(kernel_size, len(out), fn, "kernel_size"))
    channels = positive_int(channels_in, fn, "channels_in")
    return out, window, channels, normalize_data_format(data_format, fn)


def _window_items(kernel_size: IntOrTuple, features: int, channels: int, fn: str) -> int:
    """``prod(kernel_size)``; an int ``k`` means ``k ** N`` with N read from ``features``."""
    k = as_int(kernel_size)
    if k is None or k < 2:
        n = len(kernel_size) if isinstance(kernel_size, Sequence) else 1
        return math.prod(normalize_tuple(kernel_size, n, fn, "kernel_size"))
    window = k
    while window * channels < features:
        window *= k
    if window * channels != features:
        expected = f"of feature_dim (axis 1) = {k}**N * channels_in={channels} for some N"
        fail(fn, "kernel", expected, f"feature_dim {features}")
    return window


def _check_rank(kernel: object, rank: int, fn: str, layout: str) -> None:
    _checks.check_array(kernel, fn, "kernel")
    _checks.check_rank(kernel, rank, fn, "kernel", layout)


def _check_axis(kernel: Array, axis: int, size: int, fn: str, why: str) -> None:
    if kernel.shape[axis] != size:
        name = ("output_items", "feature_dim")[axis]
        expected = f"of {name} (axis {axis}) = {why} = {size}"
        fail(fn, "kernel", expected, f"kernel.shape={tuple(kernel.shape)}")


def _check_features(kernel: Array, window: int, channels: int, fn: str) -> None:
    why = f"prod(kernel_size) * channels_in = {window} * {channels}"
    _check_axis(kernel, 1, window * channels, fn, why)


__all__ = [
    "convert_data_format",
    "from_keras_dense",
    "from_keras_sparse",
    "from_lax",
    "keras_padding",
    "to_dense_matrix",
    "to_keras_dense",
    "to_keras_sparse",
    "to_lax",
]
