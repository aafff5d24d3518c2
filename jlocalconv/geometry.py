"""Static geometry of a local convolution: argument normalisation and shape logic.

Everything here is plain Python on static shapes; it runs once per trace and never
touches array data. :class:`Geometry` is the single normalised description that
every implementation consumes, so argument parsing lives in exactly one place.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from jlocalconv._errors import fail
from jlocalconv._validate import (
    DataFormat,
    IntOrTuple,
    as_int,
    normalize_data_format,
    normalize_tuple,
    positive_int,
    shape_tuple,
    static_hint,
)

PaddingLike = str | int | Sequence[int] | Sequence[tuple[int, int]]

_PADDING_MODES = ("valid", "same", "causal")


def _same_pads(size: int, window: int, stride: int) -> tuple[int, int]:
    # XLA/TF "SAME": out = ceil(size / stride); the odd extra pad goes on the high side.
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def normalize_padding(
    padding: PaddingLike,
    spatial_shape: Sequence[int],
    kernel_size: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
    fn: str = "jlocalconv",
) -> tuple[tuple[int, int], ...]:
    """Resolves any accepted ``padding`` to explicit ``(low, high)`` pairs, one per dim."""
    n = len(spatial_shape)
    windows = [d * (k - 1) + 1 for k, d in zip(kernel_size, dilation)]
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return ((0, 0),) * n
        if mode == "same":
            return tuple(_same_pads(s, w, t) for s, w, t in zip(spatial_shape, windows, strides))
        if mode == "causal":
            if n != 1:
                fail(fn, "padding", "'causal' only with 1 spatial dimension", f"{n} dimensions")
            return ((windows[0] - 1, 0),)
        fail(
            fn,
            "padding",
            f"one of {_PADDING_MODES}, an int, or {n} (low, high) pairs",
            repr(padding),
        )
    expected = f"a non-negative int, {n} ints, or {n} (low, high) pairs of non-negative ints"
    single = as_int(padding)
    if single is not None:
        pairs = ((single, single),) * n
    elif isinstance(padding, Sequence) and len(padding) == n:
        pairs = tuple(_pad_pair(p, fn, expected, padding) for p in padding)
    else:
        exc = TypeError if single is None else ValueError
        fail(fn, "padding", expected, padding, exc=exc, hint=static_hint(padding))
    if any(v < 0 for pair in pairs for v in pair):
        fail(fn, "padding", expected, padding)
    return pairs


def _pad_pair(item: object, fn: str, expected: str, padding: object) -> tuple[int, int]:
    single = as_int(item)
    if single is not None:
        return single, single
    if isinstance(item, Sequence) and len(item) == 2:
        lo, hi = as_int(item[0]), as_int(item[1])
        if lo is not None and hi is not None:
            return lo, hi
    fail(fn, "padding", expected, padding, exc=TypeError, hint=static_hint(padding))


@dataclasses.dataclass(frozen=True)
class Geometry:
    """The normalised, static description of one local convolution.

    Attributes:
      spatial_shape: the input's spatial shape ``(n1, ..., nN)``.
      channels: ``channels_in``.
      kernel_size: the window ``(k1, ..., kN)``.
      strides: the window strides.
      dilation: the kernel (atrous) dilation.
      padding: explicit ``(low, high)`` zero padding per spatial dim.
      data_format: ``"channels_last"`` or ``"channels_first"``.
    """

    spatial_shape: tuple[int, ...]
    channels: int
    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    data_format: DataFormat

    @property
    def ndim(self) -> int:
        return len(self.spatial_shape)

    @property
    def channels_last(self) -> bool:
        return self.data_format == "channels_last"

    @property
    def padded_shape(self) -> tuple[int, ...]:
        return tuple(s + lo + hi for s, (lo, hi) in zip(self.spatial_shape, self.padding))

    @property
    def effective_kernel_size(self) -> tuple[int, ...]:
        """The extent a dilated window covers: ``d * (k - 1) + 1``."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation))

    @property
    def output_shape(self) -> tuple[int, ...]:
        return tuple(
            (p - w) // s + 1
            for p, w, s in zip(self.padded_shape, self.effective_kernel_size, self.strides)
        )

    @property
    def output_items(self) -> int:
        return math.prod(self.output_shape)

    @property
    def window_items(self) -> int:
        return math.prod(self.kernel_size)

    @property
    def feature_dim(self) -> int:
        return self.window_items * self.channels

    def input_shape(self, batch: int) -> tuple[int, ...]:
        """The full input shape for ``batch`` in this geometry's data format."""
        if self.channels_last:
            return (batch, *self.spatial_shape, self.channels)
        return (batch, self.channels, *self.spatial_shape)

    def result_shape(self, batch: int, filters: int) -> tuple[int, ...]:
        """The full output shape for ``batch`` and ``filters`` in this data format."""
        if self.channels_last:
            return (batch, *self.output_shape, filters)
        return (batch, filters, *self.output_shape)

    def kernel_shape(self, filters: int) -> tuple[int, int, int]:
        """``(output_items, feature_dim, filters)``."""
        return (self.output_items, self.feature_dim, filters)


def make_geometry(
    input_shape: Sequence[int],
    kernel_size: IntOrTuple,
    strides: IntOrTuple = 1,
    padding: PaddingLike = "valid",
    dilation: IntOrTuple = 1,
    data_format: str | None = None,
    *,
    fn: str = "jlocalconv",
) -> Geometry:
    """Validates every geometric argument against a full input shape.

    Args:
      input_shape: ``(batch, *spatial, channels)`` or ``(batch, channels, *spatial)``.
      kernel_size, strides, padding, dilation, data_format: as in ``local_conv``.
      fn: the public function name to put in error messages.

    Returns:
      The :class:`Geometry`.

    Raises:
      ValueError / TypeError: naming the offending argument.
    """
    fmt = normalize_data_format(data_format, fn)
    if len(input_shape) < 3:
        fail(fn, "inputs", "of rank >= 3 (batch, spatial..., channels)", f"shape {input_shape}")
    n = len(input_shape) - 2
    if fmt == "channels_last":
        spatial, channels = tuple(input_shape[1:-1]), input_shape[-1]
    else:
        spatial, channels = tuple(input_shape[2:]), input_shape[1]
    if channels < 1:  # XLA would fail later with an unnamed feature_group_count error
        fail(fn, "inputs", f"at least one channel ({fmt})", f"shape {tuple(input_shape)}")
    return _geometry_from_spatial(
        spatial, channels, kernel_size, strides, padding, dilation, fmt, fn, n
    )


def _geometry_from_spatial(
    spatial: tuple[int, ...],
    channels: int,
    kernel_size: IntOrTuple,
    strides: IntOrTuple,
    padding: PaddingLike,
    dilation: IntOrTuple,
    fmt: DataFormat,
    fn: str,
    n: int,
) -> Geometry:
    ks = normalize_tuple(kernel_size, n, fn, "kernel_size")
    st = normalize_tuple(strides, n, fn, "strides")
    dl = normalize_tuple(dilation, n, fn, "dilation")
    pads = normalize_padding(padding, spatial, ks, st, dl, fn)
    geom = Geometry(tuple(int(s) for s in spatial), int(channels), ks, st, dl, pads, fmt)
    _check_window_fits(geom, fn)
    return geom


def _check_window_fits(geom: Geometry, fn: str) -> None:
    if any(p < w for p, w in zip(geom.padded_shape, geom.effective_kernel_size)):
        if any(s == 0 for s in geom.spatial_shape):
            fail(fn, "inputs", "a non-empty spatial shape", f"spatial shape {geom.spatial_shape}")
        fail(
            fn,
            "kernel_size",
            f"a (dilated) window no larger than the padded input {geom.padded_shape}",
            f"kernel_size={geom.kernel_size} with dilation={geom.dilation} "
            f"(window extent {geom.effective_kernel_size})",
        )


def conv_output_shape(
    input_spatial_shape: Sequence[int],
    kernel_size: IntOrTuple,
    strides: IntOrTuple = 1,
    padding: PaddingLike = "valid",
    dilation: IntOrTuple = 1,
) -> tuple[int, ...]:
    """The spatial output shape of a local (or ordinary) convolution.

    Args:
      input_spatial_shape: the input's spatial shape only, e.g. ``(rows, cols)``.
      kernel_size: the window, an int or one int per spatial dim.
      strides: window strides, an int or one int per spatial dim.
      padding: ``"valid"``, ``"same"``, ``"causal"`` (1-D), an int, N ints or N pairs.
      dilation: kernel dilation, an int or one int per spatial dim.

    Returns:
      The output's spatial shape, a tuple of ints.

    Raises:
      ValueError: if the window does not fit or an argument is malformed.

    Example:
      >>> import jlocalconv
      >>> jlocalconv.conv_output_shape((28, 28), 5, strides=2)
      (12, 12)
      >>> jlocalconv.conv_output_shape((28, 28), 5, strides=2, padding="same")
      (14, 14)
    """
    fn = "conv_output_shape"
    spatial = shape_tuple(input_spatial_shape, fn, "input_spatial_shape", minimum=0)
    geom = _geometry_from_spatial(
        spatial, 1, kernel_size, strides, padding, dilation, "channels_last", fn, len(spatial)
    )
    return geom.output_shape


def kernel_shape(
    input_shape: Sequence[int],
    filters: int,
    kernel_size: IntOrTuple,
    strides: IntOrTuple = 1,
    padding: PaddingLike = "valid",
    dilation: IntOrTuple = 1,
    data_format: str | None = None,
) -> tuple[int, int, int]:
    """The kernel shape ``(output_items, feature_dim, filters)`` for an input shape.

    Args:
      input_shape: the whole input shape, batch included (``inputs.shape``).
      filters: the number of output channels.
      kernel_size, strides, padding, dilation, data_format: as in ``local_conv``.

    Returns:
      ``(prod(output_shape), prod(kernel_size) * channels_in, filters)``.

    Example:
      >>> import jlocalconv
      >>> jlocalconv.kernel_shape((8, 28, 28, 3), 16, (3, 3))
      (676, 27, 16)
      >>> jlocalconv.kernel_shape((8, 3, 28, 28), 16, 3, data_format="channels_first")
      (676, 27, 16)
    """
    fn = "kernel_shape"
    shape = shape_tuple(input_shape, fn, "input_shape", minimum=0)
    count = positive_int(filters, fn, "filters")
    geom = make_geometry(shape, kernel_size, strides, padding, dilation, data_format, fn=fn)
    return geom.kernel_shape(count)


__all__ = [
    "DataFormat",
    "Geometry",
    "conv_output_shape",
    "kernel_shape",
    "make_geometry",
    "normalize_data_format",
    "normalize_padding",
    "normalize_tuple",
]
