"""An independent float64 NumPy reference for local convolution, written from the
semantics in the README (not from the library): explicit loops over output positions.
"""

from __future__ import annotations

import itertools

import numpy as np


def resolve_padding(padding, spatial, kernel_size, strides, dilation):
    """Explicit (low, high) pairs, computed from the documented rules."""
    n = len(spatial)
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return [(0, 0)] * n
        if mode == "causal":
            return [(dilation[0] * (kernel_size[0] - 1), 0)]
        assert mode == "same"
        pads = []
        for size, k, s, d in zip(spatial, kernel_size, strides, dilation):
            out = int(np.ceil(size / s))
            extent = d * (k - 1) + 1
            total = max((out - 1) * s + extent - size, 0)
            pads.append((total // 2, total - total // 2))
        return pads
    if isinstance(padding, int):
        return [(padding, padding)] * n
    return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


def local_conv_ref(
    inputs,
    kernel,
    kernel_size,
    strides,
    data_format="channels_last",
    padding="valid",
    dilation=None,
    bias=None,
):
    """Returns the local convolution in float64, in the input's data format."""
    x = np.asarray(inputs, np.float64)
    w = np.asarray(kernel, np.float64)
    n = x.ndim - 2
    kernel_size = tuple(kernel_size)
    strides = tuple(strides)
    dilation = tuple(dilation or (1,) * n)
    if data_format == "channels_first":
        x = np.moveaxis(x, 1, -1)  # work channels-last internally
    spatial = x.shape[1:-1]
    pads = resolve_padding(padding, spatial, kernel_size, strides, dilation)
    x = np.pad(x, [(0, 0), *pads, (0, 0)])
    out_shape = [
        (x.shape[1 + i] - (dilation[i] * (kernel_size[i] - 1) + 1)) // strides[i] + 1
        for i in range(n)
    ]
    filters = w.shape[-1]
    out = np.zeros((x.shape[0], *out_shape, filters))
    for p, pos in enumerate(itertools.product(*[range(o) for o in out_shape])):
        # window[b, k1..kN, c]
        idx = [pos[i] * strides[i] + dilation[i] * np.arange(kernel_size[i]) for i in range(n)]
        window = x[(slice(None), *np.ix_(*idx), slice(None))]
        if data_format == "channels_first":
            window = np.moveaxis(window, -1, 1)  # (b, C, k1..kN): Keras's channels_first order
        flat = window.reshape(x.shape[0], w.shape[1])  # -1 is ambiguous for batch 0
        out[(slice(None), *pos, slice(None))] = flat @ w[p]
    if bias is not None:
        out = out + np.asarray(bias, np.float64)
    if data_format == "channels_first":
        out = np.moveaxis(out, -1, 1)
    return out
