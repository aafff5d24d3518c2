"""Trace-time validation of the array operands of a local convolution.

Shapes and dtypes are static under ``jit``, so every check here is plain Python
that runs once per trace and raises a ``ValueError``/``TypeError`` naming the
argument, the expectation and the received value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jlocalconv._errors import fail
from jlocalconv._validate import as_int, static_hint
from jlocalconv.geometry import Geometry


def check_array(value: Any, fn: str, arg: str) -> None:
    """Accepts JAX arrays, tracers and NumPy arrays; rejects lists, scalars and the rest.

    Like ``jax.numpy``'s stricter functions we do not silently convert Python lists:
    a list of lists is far more often a bug (wrong argument order) than intended.
    """
    if not (hasattr(value, "shape") and hasattr(value, "dtype")) or isinstance(value, np.generic):
        fail(
            fn,
            arg,
            "a jax.Array or numpy.ndarray",
            f"{type(value).__name__}",
            exc=TypeError,
            hint=f"Wrap it with jnp.asarray({arg}) if that is what you meant.",
        )


def check_floating(value: Any, fn: str, arg: str) -> None:
    """Local convolution is defined here for real floating dtypes only (documented)."""
    if not _is_real_floating(np.dtype(value.dtype)):
        fail(
            fn,
            arg,
            "a real floating array (float16, bfloat16, float32 or float64)",
            value,
            exc=TypeError,
            hint=f"Cast it first, e.g. {arg}.astype(jnp.float32).",
        )


def _is_real_floating(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16"


def check_preferred_element_type(dtype: Any, fn: str) -> None:
    """None or a real floating dtype: an integer, bool or complex one would silently
    truncate or reinterpret the floating result."""
    if dtype is None:
        return
    try:
        got = np.dtype(dtype)
    except TypeError:
        got = None
    if got is None or not _is_real_floating(got):
        received = repr(dtype) if got is None else got.name
        expected = "None or a real floating dtype (e.g. jnp.float32)"
        fail(fn, "preferred_element_type", expected, received, exc=TypeError)


def check_rank(value: Any, rank: int, fn: str, arg: str, what: str) -> None:
    if value.ndim != rank:
        fail(fn, arg, f"of rank {rank} {what}", value)


def check_inputs(inputs: Any, fn: str, ndim: int | None) -> None:
    """``inputs`` is a floating array with ``ndim`` spatial dims (any number if None)."""
    check_array(inputs, fn, "inputs")
    check_floating(inputs, fn, "inputs")
    shape = tuple(inputs.shape)
    if ndim is not None:
        layout = "(batch, *spatial, channels) or (batch, channels, *spatial)"
        check_rank(inputs, ndim + 2, fn, "inputs", layout)
    elif len(shape) < 3:
        fail(fn, "inputs", "of rank >= 3 (batch, spatial..., channels)", f"shape {shape}")


def check_kernel(kernel: Any, geom: Geometry, fn: str) -> None:
    """The kernel must be ``(output_items, feature_dim, filters)`` for ``geom``."""
    check_array(kernel, fn, "kernel")
    check_floating(kernel, fn, "kernel")
    check_rank(kernel, 3, fn, "kernel", "(output_items, feature_dim, filters)")
    items, features, filters = kernel.shape
    order = "(k..., C)" if geom.channels_last else "(C, k...)"
    if features != geom.feature_dim:
        fail(
            fn,
            "kernel",
            f"of feature_dim (axis 1) = prod(kernel_size={geom.kernel_size}) * "
            f"channels_in={geom.channels} = {geom.feature_dim}, flattened as {order}",
            f"kernel.shape={tuple(kernel.shape)}",
        )
    if items != geom.output_items:
        fail(
            fn,
            "kernel",
            f"of output_items (axis 0) = prod(output_shape={geom.output_shape}) = "
            f"{geom.output_items} for input spatial shape {geom.spatial_shape}, "
            f"kernel_size={geom.kernel_size}, strides={geom.strides}, "
            f"padding={geom.padding}, dilation={geom.dilation}",
            f"kernel.shape={tuple(kernel.shape)}",
        )
    if filters < 1:
        fail(fn, "kernel", "at least one filter (axis 2)", kernel)


def check_same_dtype(inputs: Any, kernel: Any, fn: str, other: str = "inputs") -> None:
    """``kernel`` must have the dtype of ``inputs`` (named ``other`` in the message)."""
    if inputs.dtype != kernel.dtype:
        fail(
            fn,
            "kernel",
            f"of the same dtype as `{other}` ({inputs.dtype})",
            kernel,
            exc=TypeError,
            hint="Mixed precision is explicit here: cast one operand and use "
            "preferred_element_type for the accumulation dtype.",
        )


def check_output_shape(output_shape: Sequence[int] | None, geom: Geometry, fn: str) -> None:
    if output_shape is None:
        return
    # Exact ints only: int() would truncate 4.5 and split the string "channels_first".
    try:
        given = (None,) if isinstance(output_shape, str) else tuple(map(as_int, output_shape))
    except TypeError:  # not iterable
        given = (None,)
    if None in given:
        expected = f"None or a tuple of {geom.ndim} ints"
        got = repr(output_shape) if isinstance(output_shape, str) else output_shape
        fail(fn, "output_shape", expected, got, exc=TypeError, hint=static_hint(output_shape))
    if given != geom.output_shape:
        fail(
            fn,
            "output_shape",
            f"the shape implied by the input and the geometry, {geom.output_shape}",
            f"{given}",
        )


def check_bias(bias: Any, geom: Geometry, filters: int, fn: str) -> None:
    if bias is None:
        return
    check_array(bias, fn, "bias")
    check_floating(bias, fn, "bias")
    shape = tuple(bias.shape)
    allowed = ((filters,), (*geom.output_shape, filters))
    if shape not in allowed:
        fail(fn, "bias", f"None or of shape {allowed[0]} or {allowed[1]}", bias)


def check_operands(
    fn: str,
    geom: Geometry,
    inputs: Any,
    kernel: Any,
    output_shape: Sequence[int] | None,
    bias: Any,
) -> None:
    """Every check on the kernel, output_shape and bias against ``geom``."""
    check_kernel(kernel, geom, fn)
    check_same_dtype(inputs, kernel, fn)
    check_output_shape(output_shape, geom, fn)
    check_bias(bias, geom, kernel.shape[-1], fn)
