"""A float64 NumPy reference of local convolution and its vector-Jacobian product.

Written from the README's semantics, independently of ``jlocalconv`` (and of
``tests/reference.py``, which loops over positions, and which ``bench`` must not import):
every output position's window is gathered from the zero-padded input with one index
array, so the forward pass is one batched matmul over positions and its adjoint a
scatter-add through the same indices.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

Padding = str | tuple[tuple[int, int], ...]


@dataclasses.dataclass(frozen=True)
class Spec:
    """The static arguments of one local convolution, as ``jlocalconv.local_conv`` takes them.

    Attributes:
      kernel_size: window size per spatial dimension.
      strides: step per spatial dimension.
      padding: ``"valid"``, ``"same"``, ``"causal"`` (1-D) or ``(low, high)`` pairs.
      dilation: kernel dilation per spatial dimension.
      data_format: ``"channels_last"`` or ``"channels_first"``.
    """

    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    padding: Padding = "valid"
    dilation: tuple[int, ...] | None = None
    data_format: str = "channels_last"

    @property
    def rates(self) -> tuple[int, ...]:
        return self.dilation or (1,) * len(self.kernel_size)

    def pads(self, spatial: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
        """``(low, high)`` zero padding per dimension for an input of ``spatial`` size."""
        if not isinstance(self.padding, str):
            return tuple(self.padding)
        spans = [r * (k - 1) + 1 for k, r in zip(self.kernel_size, self.rates)]
        if self.padding == "valid":
            return ((0, 0),) * len(spans)
        if self.padding == "causal":
            return ((spans[0] - 1, 0),)
        totals = [  # "same": ceil(n / s) outputs, the odd pixel on the high side
            max(0, (-(-n // s) - 1) * s + span - n)
            for n, s, span in zip(spatial, self.strides, spans)
        ]
        return tuple((t // 2, t - t // 2) for t in totals)


def output_shape(spec: Spec, spatial: tuple[int, ...]) -> tuple[int, ...]:
    """The spatial shape of the result for an input of ``spatial`` size."""
    _, out = _window_index(spec, spatial)
    return out


def local_conv_f64(inputs: np.ndarray, kernel: np.ndarray, spec: Spec) -> np.ndarray:
    """The local convolution in float64, in ``spec.data_format``.

    Args:
      inputs: ``(batch, *spatial, C)`` (channels_last) or ``(batch, C, *spatial)``.
      kernel: Keras layout ``(output_items, feature_dim, filters)``.
      spec: the static arguments.

    Returns:
      ``(batch, *output_shape, filters)`` or ``(batch, filters, *output_shape)``.

    Example:
      >>> spec = Spec(kernel_size=(2,), strides=(1,))
      >>> local_conv_f64(np.ones((1, 3, 1)), np.ones((2, 2, 1)), spec)[0, :, 0]
      array([2., 2.])
    """
    x = _channels_last(np.asarray(inputs, np.float64), spec)
    features, out = _features(x, spec)
    y = np.matmul(features.transpose(1, 0, 2), np.asarray(kernel, np.float64))  # (P, B, F)
    return _to_format(y.transpose(1, 0, 2).reshape(x.shape[0], *out, -1), spec)


def local_conv_f64_vjp(
    inputs: np.ndarray, kernel: np.ndarray, cotangent: np.ndarray, spec: Spec
) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of ``sum(local_conv(inputs, kernel) * cotangent)``, in float64.

    Returns:
      ``(d inputs, d kernel)``, shaped like ``inputs`` and ``kernel``.
    """
    x = _channels_last(np.asarray(inputs, np.float64), spec)
    w = np.asarray(kernel, np.float64)
    g = _channels_last(np.asarray(cotangent, np.float64), spec)
    g = g.reshape(g.shape[0], -1, g.shape[-1]).transpose(1, 0, 2)  # (P, B, F)
    features, _ = _features(x, spec)
    grad_kernel = np.matmul(features.transpose(1, 2, 0), g)  # (P, D, B) @ (P, B, F)
    grad_features = np.matmul(g, w.transpose(0, 2, 1))  # (P, B, D)
    return _to_format(_scatter_windows(grad_features, x.shape, spec), spec), grad_kernel


def _channels_last(a: np.ndarray, spec: Spec) -> np.ndarray:
    return np.moveaxis(a, 1, -1) if spec.data_format == "channels_first" else a


def _to_format(a: np.ndarray, spec: Spec) -> np.ndarray:
    return np.moveaxis(a, -1, 1) if spec.data_format == "channels_first" else a


def _window_index(spec: Spec, spatial: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...]]:
    """Flat indices ``(positions, window_items)`` into the padded spatial grid."""
    padded = [n + lo + hi for n, (lo, hi) in zip(spatial, spec.pads(spatial))]
    spans = [r * (k - 1) + 1 for k, r in zip(spec.kernel_size, spec.rates)]
    out = tuple((n - span) // s + 1 for n, span, s in zip(padded, spans, spec.strides))
    starts = np.stack(np.meshgrid(*map(np.arange, out), indexing="ij"), -1).reshape(-1, len(out))
    steps = np.stack(np.meshgrid(*map(np.arange, spec.kernel_size), indexing="ij"), -1)
    offsets = steps.reshape(-1, len(out)) * np.asarray(spec.rates)
    coords = starts[:, None, :] * np.asarray(spec.strides) + offsets[None, :, :]
    return np.ravel_multi_index(tuple(np.moveaxis(coords, -1, 0)), padded), out


def _features(x: np.ndarray, spec: Spec) -> tuple[np.ndarray, tuple[int, ...]]:
    """Windows of channels-last ``x`` as ``(batch, positions, feature_dim)`` in Keras order."""
    spatial = x.shape[1:-1]
    padded = np.pad(x, [(0, 0), *spec.pads(spatial), (0, 0)])
    index, out = _window_index(spec, spatial)
    windows = padded.reshape(x.shape[0], -1, x.shape[-1])[:, index]  # (B, P, K, C)
    if spec.data_format == "channels_first":  # Keras orders features (C, k...) there
        windows = windows.transpose(0, 1, 3, 2)
    return windows.reshape(x.shape[0], index.shape[0], -1), out


def _scatter_windows(grad_features: np.ndarray, x_shape: tuple[int, ...], spec: Spec):
    """The adjoint of :func:`_features`: adds each window's gradient back where it came from."""
    batch, spatial, channels = x_shape[0], x_shape[1:-1], x_shape[-1]
    index, _ = _window_index(spec, spatial)
    k_items = index.shape[1]
    per_window = (
        (channels, k_items) if spec.data_format == "channels_first" else (k_items, channels)
    )
    g = grad_features.reshape(index.shape[0], batch, *per_window)
    if spec.data_format == "channels_first":
        g = g.transpose(0, 1, 3, 2)
    pads = spec.pads(spatial)
    padded = [n + lo + hi for n, (lo, hi) in zip(spatial, pads)]
    total = np.zeros((math.prod(padded), batch, channels))
    np.add.at(total, index, g.transpose(0, 2, 1, 3))  # (P, K, B, C) onto (N, B, C)
    full = total.transpose(1, 0, 2).reshape(batch, *padded, channels)
    return full[(slice(None), *(slice(lo, lo + n) for n, (lo, _) in zip(spatial, pads)))]
