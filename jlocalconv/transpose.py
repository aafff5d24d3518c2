"""The transposed local convolution: the exact adjoint of ``local_conv`` in its input.

``local_conv(x, k)`` is linear in ``x``; its transpose maps an output-shaped array back to
the input's shape, scattering every output position's contribution through that
position's own filters into the window it read:
``sum(local_conv(x, k) * y) == sum(x * local_conv_transpose(y, k))`` for every geometry.
It is what a locally connected "deconvolution" / decoder layer needs, and what
``grad`` of ``local_conv`` with respect to its input computes.

Argument normalisation and validation happen here in plain Python at trace time, as in
:mod:`jlocalconv.ops` (through a :class:`~jlocalconv.spec.LocalConvSpec`); the array work is
the reverse-mode derivative of the core's convolution (the implementation ``"auto"`` picks
unless one is named, whose derivative is chosen to be lean), so it is exact, differentiable
in both arguments to any order, and works under ``jit``, ``vmap`` and ``jvp``.

May import: ``_checks``, ``_errors``, ``_validate``, ``geometry``, ``spec``, ``ops``.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import chex
import jax
import jax.numpy as jnp

from jlocalconv import _checks
from jlocalconv._errors import fail
from jlocalconv._validate import channels_from_kernel, shape_tuple
from jlocalconv.geometry import Geometry, IntOrTuple
from jlocalconv.ops import convolve
from jlocalconv.spec import ConvOptions, LocalConvSpec, Unpack, with_options


@with_options
def local_conv_transpose(
    outputs: jax.Array,
    kernel: jax.Array,
    kernel_size: IntOrTuple,
    strides: IntOrTuple,
    input_shape: IntOrTuple,
    data_format: str | None = None,
    **options: Unpack[ConvOptions],
) -> jax.Array:
    """N-D transposed local convolution, the adjoint of :func:`jlocalconv.local_conv`.

    For inputs ``x`` of spatial shape ``input_shape`` and any ``outputs`` ``y``,
    ``sum(local_conv(x, kernel, ...) * y) == sum(x * local_conv_transpose(y, kernel, ...))``
    with the same ``kernel_size``, ``strides``, ``padding``, ``dilation`` and
    ``data_format``. Input elements no window reads (e.g. the tail a stride skips) get
    zeros; padded positions are dropped.

    Args:
      outputs: ``(batch, *output_shape, filters)`` for ``"channels_last"`` or
        ``(batch, filters, *output_shape)`` for ``"channels_first"``, where
        ``output_shape`` is the forward convolution's output for ``input_shape``.
      kernel: the forward convolution's kernel, ``(output_items, feature_dim, filters)``
        in Keras's layout (see :func:`jlocalconv.local_conv`); ``channels_in`` is read from
        ``feature_dim = prod(kernel_size) * channels_in``. Same dtype as ``outputs``.
      kernel_size: the window, an int or a tuple of N ints.
      strides: the window strides, an int or a tuple of N ints.
      input_shape: the spatial shape to produce (the forward input's, without batch and
        channels), an int or a tuple of N ints. Needed because strides make it ambiguous.
      data_format: ``"channels_last"`` (the default when None) or ``"channels_first"``.
      {options}

    ``padding`` and ``dilation`` are the forward convolution's. ``preferred_element_type``
    is the result dtype, e.g. ``jnp.float32`` for bf16 operands; the transpose is computed
    in the wider of it and the operands' dtype (products of bf16/f16 values are exact in
    float32, so this equals accumulating in it).

    Returns:
      ``(batch, *input_shape, channels_in)`` or ``(batch, channels_in, *input_shape)``, in
      ``outputs``' dtype or ``preferred_element_type``.

    Raises:
      ValueError, TypeError: at trace time, naming the offending argument.

    Example:
      >>> import jax, jax.numpy as jnp, jlocalconv
      >>> x = jax.random.normal(jax.random.key(0), (2, 7, 7, 3))
      >>> k = jax.random.normal(jax.random.key(1), jlocalconv.kernel_shape(x.shape, 4, 3, 2))
      >>> y = jlocalconv.local_conv(x, k, 3, 2)                  # (2, 3, 3, 4)
      >>> back = jlocalconv.local_conv_transpose(y, k, 3, 2, (7, 7))
      >>> back.shape
      (2, 7, 7, 3)
      >>> bool(jnp.allclose(jnp.vdot(y, y), jnp.vdot(x, back), rtol=1e-5))
      True
    """
    return _local_conv_transpose(
        "local_conv_transpose",
        None,
        outputs,
        kernel,
        kernel_size,
        strides,
        input_shape,
        data_format,
        options,
    )


@with_options
def local_conv1d_transpose(
    outputs: jax.Array,
    kernel: jax.Array,
    kernel_size: IntOrTuple,
    strides: IntOrTuple,
    input_shape: IntOrTuple,
    data_format: str | None = None,
    **options: Unpack[ConvOptions],
) -> jax.Array:
    """1-D transposed local convolution, the adjoint of :func:`jlocalconv.local_conv1d`.

    ``input_shape`` is the input length (an int or a 1-tuple). See
    :func:`local_conv_transpose` for the arguments.

    Example:
      >>> import jax.numpy as jnp, jlocalconv
      >>> y = jnp.ones((2, 4, 5))                        # (batch, steps, filters)
      >>> k = jnp.ones((4, 3 * 2, 5))                    # window 3, 2 channels, 5 filters
      >>> jlocalconv.local_conv1d_transpose(y, k, 3, 2, 9).shape
      (2, 9, 2)
    """
    return _local_conv_transpose(
        "local_conv1d_transpose",
        1,
        outputs,
        kernel,
        kernel_size,
        strides,
        input_shape,
        data_format,
        options,
    )


@with_options
def local_conv2d_transpose(
    outputs: jax.Array,
    kernel: jax.Array,
    kernel_size: IntOrTuple,
    strides: IntOrTuple,
    input_shape: IntOrTuple,
    data_format: str | None = None,
    **options: Unpack[ConvOptions],
) -> jax.Array:
    """2-D transposed local convolution, the adjoint of :func:`jlocalconv.local_conv2d`.

    See :func:`local_conv_transpose` for the arguments.

    Example:
      >>> import jax.numpy as jnp, jlocalconv
      >>> y = jnp.ones((2, 4, 3, 3))                     # channels_first: (batch, F, rows, cols)
      >>> k = jnp.ones((9, 2 * 2 * 2, 4))                # 3x3 positions, 2x2 window, C=2
      >>> jlocalconv.local_conv2d_transpose(
      ...     y, k, 2, 2, (6, 6), "channels_first").shape
      (2, 2, 6, 6)
    """
    return _local_conv_transpose(
        "local_conv2d_transpose",
        2,
        outputs,
        kernel,
        kernel_size,
        strides,
        input_shape,
        data_format,
        options,
    )


@with_options
def local_conv3d_transpose(
    outputs: jax.Array,
    kernel: jax.Array,
    kernel_size: IntOrTuple,
    strides: IntOrTuple,
    input_shape: IntOrTuple,
    data_format: str | None = None,
    **options: Unpack[ConvOptions],
) -> jax.Array:
    """3-D transposed local convolution, the adjoint of :func:`jlocalconv.local_conv3d`.

    See :func:`local_conv_transpose` for the arguments.

    Example:
      >>> import jax.numpy as jnp, jlocalconv
      >>> y = jnp.ones((1, 4, 4, 4, 3))
      >>> k = jnp.ones((64, 8 * 2, 3))                   # "same": 4x4x4 positions, 2x2x2, C=2
      >>> jlocalconv.local_conv3d_transpose(y, k, 2, 1, 4, padding="same").shape
      (1, 4, 4, 4, 2)
    """
    return _local_conv_transpose(
        "local_conv3d_transpose",
        3,
        outputs,
        kernel,
        kernel_size,
        strides,
        input_shape,
        data_format,
        options,
    )


def _local_conv_transpose(
    fn: str,
    ndim: int | None,
    outputs: jax.Array,
    kernel: jax.Array,
    kernel_size: IntOrTuple,
    strides: IntOrTuple,
    input_shape: IntOrTuple,
    data_format: str | None,
    options: ConvOptions,
) -> jax.Array:
    """Shared body of the public entry points; ``ndim`` fixes the spatial rank if set."""
    spec, geom = _validate(
        fn, ndim, outputs, kernel, kernel_size, strides, input_shape, data_format, options
    )
    pet = spec.preferred_element_type
    out_dtype = jnp.dtype(outputs.dtype if pet is None else pet)
    compute = jnp.promote_types(outputs.dtype, out_dtype)
    # The forward call computes in `compute`; the result dtype is applied at the end.
    forward = dataclasses.replace(spec, preferred_element_type=None)
    result = _adjoint(outputs.astype(compute), kernel.astype(compute), geom=geom, spec=forward)
    chex.assert_shape(result, geom.input_shape(outputs.shape[0]))
    return result.astype(out_dtype)


def _validate(
    fn, ndim, outputs, kernel, kernel_size, strides, input_shape, data_format, options
) -> tuple[LocalConvSpec, Geometry]:
    """Every trace-time check; returns the spec and the forward convolution's geometry."""
    _checks.check_array(outputs, fn, "outputs")
    _checks.check_floating(outputs, fn, "outputs")
    layout = "(batch, *output_shape, filters) or (batch, filters, *output_shape)"
    if ndim is not None:
        _checks.check_rank(outputs, ndim + 2, fn, "outputs", layout)
    elif outputs.ndim < 3:
        _checks.check_rank(outputs, 3, fn, "outputs", f"or more, {layout}")
    n = outputs.ndim - 2
    spatial = shape_tuple(input_shape, fn, "input_shape", ndim=n)
    spec = LocalConvSpec.create(n, kernel_size, strides, data_format, fn=fn, **options)
    _checks.check_array(kernel, fn, "kernel")
    _checks.check_rank(kernel, 3, fn, "kernel", "(output_items, feature_dim, filters)")
    channels = channels_from_kernel(kernel, math.prod(spec.kernel_size), fn)
    sample = (*spatial, channels) if spec.data_format == "channels_last" else (channels, *spatial)
    geom = spec.geometry((1, *sample), fn)
    _checks.check_kernel(kernel, geom, fn)
    _checks.check_same_dtype(outputs, kernel, fn, other="outputs")
    expected = geom.result_shape(outputs.shape[0], kernel.shape[-1])
    if tuple(outputs.shape) != expected:
        why = (
            f"the forward result for input_shape={geom.spatial_shape}: output shape "
            f"{geom.output_shape}, the kernel's {kernel.shape[-1]} filters, {geom.data_format}"
        )
        fail(fn, "outputs", f"of shape {expected} ({why})", outputs)
    return spec, geom


@partial(jax.jit, static_argnames=("geom", "spec"))
def _adjoint(
    outputs: jax.Array, kernel: jax.Array, *, geom: Geometry, spec: LocalConvSpec
) -> jax.Array:
    """The pull-back of ``outputs`` through ``x -> local_conv(x, kernel)``.

    Local convolution is linear in ``x``, so its vjp at any point (zero here) is exactly
    the transpose, and it is the derivative the core already makes lean (the forward
    value is dead code, removed by ``jit``). ``kernel`` enters as an ordinary operand, so
    the result is differentiable in it as well, to any order. The operands were checked
    by the caller, so the forward call is the unchecked :func:`jlocalconv.ops.convolve`.
    """
    zeros = jnp.zeros(geom.input_shape(outputs.shape[0]), outputs.dtype)
    forward = lambda x: convolve(spec, geom, x, kernel)
    _, pullback = jax.vjp(forward, zeros)
    return pullback(outputs)[0]


__all__ = [
    "local_conv1d_transpose",
    "local_conv2d_transpose",
    "local_conv3d_transpose",
    "local_conv_transpose",
]
