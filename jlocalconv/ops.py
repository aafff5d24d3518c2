"""The public local-convolution operation: ``local_conv`` and its 1-D/2-D/3-D forms.

Each entry point checks ``inputs``, builds the call's :class:`~jlocalconv.spec.LocalConvSpec`
(the static arguments, normalised and validated once) and calls :func:`apply`; the array work
is delegated to an implementation from :mod:`jlocalconv.implementations`. :func:`apply` and
:func:`convolve` are the calls through a spec that the transposes, the sharded call and
the layers share.

May import: ``_checks``, ``_errors``, ``autotune``, ``geometry``, ``spec``, ``implementations``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jlocalconv import _checks, autotune
from jlocalconv.geometry import Geometry, IntOrTuple
from jlocalconv.implementations import IMPLEMENTATIONS, Implementation, choose, resolve
from jlocalconv.spec import ConvOptions, LocalConvSpec, Unpack, with_options

# What the operands may be: JAX arrays (tracers included) or NumPy arrays.
Array = jax.Array | np.ndarray


@with_options
def local_conv(
    inputs: Array,
    kernel: Array,
    kernel_size: IntOrTuple,
    strides: IntOrTuple,
    output_shape: Sequence[int] | None = None,
    data_format: str | None = None,
    *,
    bias: Array | None = None,
    **options: Unpack[ConvOptions],
) -> jax.Array:
    """N-D locally connected convolution with Keras's semantics and kernel layout.

    Like a convolution, but every output position has its own filter bank. The
    positional signature and results are those of ``tf.keras.backend.local_conv``,
    so a Keras kernel drops in unchanged.

    Args:
      inputs: ``(batch, *spatial, channels_in)`` for ``"channels_last"`` or
        ``(batch, channels_in, *spatial)`` for ``"channels_first"``.
      kernel: ``(output_items, feature_dim, filters)`` with
        ``output_items = prod(output_shape)`` (output positions in row-major order) and
        ``feature_dim = prod(kernel_size) * channels_in``, each window flattened as
        ``(k1, ..., kN, C)`` for channels_last and ``(C, k1, ..., kN)`` for
        channels_first. Must have the dtype of ``inputs``.
      kernel_size: the window, an int or a tuple of N ints.
      strides: the window strides, an int or a tuple of N ints.
      output_shape: optional spatial output shape; when given it must equal the one
        implied by the input and the geometry.
      data_format: ``"channels_last"`` (the default when None) or ``"channels_first"``.
      bias: None, ``(filters,)`` or ``(*output_shape, filters)``; added in the result
        dtype.
      {options}

    Returns:
      ``(batch, *output_shape, filters)`` or ``(batch, filters, *output_shape)``.

    Raises:
      ValueError, TypeError: at trace time, naming the offending argument.

    Example:
      >>> import jax, jax.numpy as jnp, jlocalconv
      >>> x = jnp.ones((2, 5, 5, 3))
      >>> k = jnp.ones(jlocalconv.kernel_shape(x.shape, 4, (3, 3)))
      >>> jlocalconv.local_conv(x, k, (3, 3), (1, 1)).shape
      (2, 3, 3, 4)
    """
    return _local_conv(
        "local_conv",
        None,
        inputs,
        kernel,
        kernel_size,
        strides,
        output_shape,
        data_format,
        bias,
        options,
    )


@with_options
def local_conv1d(
    inputs: Array,
    kernel: Array,
    kernel_size: IntOrTuple,
    strides: IntOrTuple,
    data_format: str | None = None,
    *,
    bias: Array | None = None,
    **options: Unpack[ConvOptions],
) -> jax.Array:
    """1-D local convolution, ``tf.keras.backend.local_conv1d``'s signature.

    As in Keras the output length is taken from ``kernel.shape[0]`` (and checked
    against the geometry). See :func:`local_conv` for the arguments.

    Example:
      >>> import jax.numpy as jnp, jlocalconv
      >>> x = jnp.ones((2, 10, 3))                       # (batch, steps, channels)
      >>> k = jnp.ones((8, 3 * 3, 5))                    # 8 outputs, window 3, 5 filters
      >>> jlocalconv.local_conv1d(x, k, 3, 1).shape
      (2, 8, 5)
    """
    output_shape = (kernel.shape[0],) if hasattr(kernel, "shape") and kernel.ndim else None
    return _local_conv(
        "local_conv1d",
        1,
        inputs,
        kernel,
        kernel_size,
        strides,
        output_shape,
        data_format,
        bias,
        options,
    )


@with_options
def local_conv2d(
    inputs: Array,
    kernel: Array,
    kernel_size: IntOrTuple,
    strides: IntOrTuple,
    output_shape: Sequence[int] | None = None,
    data_format: str | None = None,
    *,
    bias: Array | None = None,
    **options: Unpack[ConvOptions],
) -> jax.Array:
    """2-D local convolution, ``tf.keras.backend.local_conv2d``'s signature.

    See :func:`local_conv` for the arguments.

    Example:
      >>> import jax.numpy as jnp, jlocalconv
      >>> x = jnp.ones((2, 3, 6, 6))                     # channels_first
      >>> k = jnp.ones(jlocalconv.kernel_shape(x.shape, 4, 3, 2, data_format="channels_first"))
      >>> jlocalconv.local_conv2d(x, k, 3, 2, (2, 2), "channels_first").shape
      (2, 4, 2, 2)
    """
    return _local_conv(
        "local_conv2d",
        2,
        inputs,
        kernel,
        kernel_size,
        strides,
        output_shape,
        data_format,
        bias,
        options,
    )


@with_options
def local_conv3d(
    inputs: Array,
    kernel: Array,
    kernel_size: IntOrTuple,
    strides: IntOrTuple,
    output_shape: Sequence[int] | None = None,
    data_format: str | None = None,
    *,
    bias: Array | None = None,
    **options: Unpack[ConvOptions],
) -> jax.Array:
    """3-D local convolution. See :func:`local_conv` for the arguments.

    Example:
      >>> import jax.numpy as jnp, jlocalconv
      >>> x = jnp.ones((1, 4, 4, 4, 2))
      >>> k = jnp.ones(jlocalconv.kernel_shape(x.shape, 3, 2, padding="same"))
      >>> jlocalconv.local_conv3d(x, k, 2, 1, padding="same").shape
      (1, 4, 4, 4, 3)
    """
    return _local_conv(
        "local_conv3d",
        3,
        inputs,
        kernel,
        kernel_size,
        strides,
        output_shape,
        data_format,
        bias,
        options,
    )


def _local_conv(
    fn: str,
    ndim: int | None,
    inputs: Array,
    kernel: Array,
    kernel_size: IntOrTuple,
    strides: IntOrTuple,
    output_shape: Sequence[int] | None,
    data_format: str | None,
    bias: Array | None,
    options: ConvOptions,
) -> jax.Array:
    """Shared body of the public entry points; ``ndim`` fixes the spatial rank if set."""
    _checks.check_inputs(inputs, fn, ndim)
    spec = LocalConvSpec.create(
        inputs.ndim - 2, kernel_size, strides, data_format, fn=fn, **options
    )
    return _checked_call(spec, inputs, kernel, bias, output_shape, fn)


def apply(
    spec: LocalConvSpec,
    inputs: Array,
    kernel: Array,
    *,
    bias: Array | None = None,
    output_shape: Sequence[int] | None = None,
    fn: str = "local_conv",
) -> jax.Array:
    """``local_conv`` for a prebuilt ``spec``: the operands are checked, errors name ``fn``.

    Args:
      spec: the static arguments, e.g. from :meth:`LocalConvSpec.create`.
      inputs, kernel, bias, output_shape: as in :func:`local_conv`; ``inputs`` has
        ``spec.spatial_ndim`` spatial dims.
      fn: the public function to name in error messages.

    Returns:
      As :func:`local_conv`.

    Raises:
      ValueError, TypeError: at trace time, naming the offending operand.

    Example:
      >>> import jax.numpy as jnp, jlocalconv
      >>> from jlocalconv.ops import apply
      >>> from jlocalconv.spec import LocalConvSpec
      >>> spec = LocalConvSpec.create(1, 3, padding="same")
      >>> apply(spec, jnp.ones((2, 7, 3)), jnp.ones((7, 9, 4))).shape
      (2, 7, 4)
    """
    _checks.check_inputs(inputs, fn, spec.spatial_ndim)
    return _checked_call(spec, inputs, kernel, bias, output_shape, fn)


def _checked_call(spec, inputs, kernel, bias, output_shape, fn):
    geom = spec.geometry(inputs.shape, fn)
    _checks.check_operands(fn, geom, inputs, kernel, output_shape, bias)
    return convolve(spec, geom, inputs, kernel, bias)


def convolve(
    spec: LocalConvSpec,
    geom: Geometry,
    inputs: Array,
    kernel: Array,
    bias: Array | None = None,
) -> jax.Array:
    """The convolution for operands already checked against ``geom`` (no checks here).

    Args:
      spec: the static arguments; ``geom`` is ``spec.geometry(inputs.shape)``.
      geom: the call's geometry.
      inputs, kernel, bias: valid operands for ``geom``.

    Returns:
      As :func:`local_conv`.
    """
    impl = _implementation(spec, geom, inputs, kernel)
    if not _traced_into_jaxpr():
        impl = _compiled(impl)
    out = impl(
        inputs,
        kernel,
        geom,
        precision=spec.precision,
        preferred_element_type=spec.preferred_element_type,
    )
    batch, filters = inputs.shape[0], kernel.shape[-1]
    chex.assert_shape(out, geom.result_shape(batch, filters))
    return out if bias is None else _add_bias(out, bias, geom)


def _implementation(
    spec: LocalConvSpec, geom: Geometry, inputs: Array, kernel: Array
) -> Implementation:
    """The implementation to run; "auto" and "autotune" may also widen 16-bit operands."""
    if spec.implementation not in ("auto", "autotune"):
        return IMPLEMENTATIONS[spec.implementation]
    backend = jax.default_backend()
    if spec.implementation == "auto":
        name = choose(geom, inputs.shape[0], kernel.shape[-1], inputs.dtype, backend)
    else:
        name = autotune.pick(geom, inputs, kernel, spec.precision, spec.preferred_element_type)
    return resolve(name, inputs, kernel, spec.preferred_element_type, backend)


@functools.cache
def _compiled(impl: Implementation) -> Implementation:
    """``impl`` under ``jax.jit``, its geometry and options static.

    Called eagerly (or under eager ``grad`` or ``vmap``), the implementation is then one
    compiled program per static problem (cached by JAX) instead of dozens of op-by-op
    dispatches, each compiled on first use (eager ``vmap`` of the suite's base shape: 2.5
    ms with it, 719 ms without).
    """
    return jax.jit(impl, static_argnums=2, static_argnames=("precision", "preferred_element_type"))


def _traced_into_jaxpr() -> bool:
    """Whether this call is traced into a jaxpr (``jit``, ``scan``, ``checkpoint``...),
    beneath any differentiation or batching.

    There :func:`_compiled`'s jit would only be inlined, and it costs: a jit traces its
    body to a jaxpr first, and there every ``custom_jvp`` traces its undifferentiated
    values too, which differentiation then discards; the program XLA receives is split
    around them, too. Without the inner jit, the outer differentiation traces only the
    derivative route: the suite's large5x5 ("shifts" values of 200 unrolled terms,
    derivatives by the tile loop) lowers its value_and_grad in 0.045 s instead of 0.072
    and compiles it in 0.23 s instead of 0.26 (best of 4, one process). Reads JAX's trace
    stack (internal: if that moves, the answer is False and calls keep the inner jit).
    """
    internals = _trace_internals()
    if internals is None:  # pragma: no cover - a JAX without these internals
        return False
    context, jaxpr_trace = internals
    trace = getattr(context, "trace", None)
    while trace is not None:
        if isinstance(trace, jaxpr_trace):
            return True
        trace = getattr(trace, "parent_trace", None)
    return False


@functools.cache  # imported once, not at every call
def _trace_internals() -> tuple[object, type] | None:
    """JAX's tracing context and its jaxpr trace type, or None where they moved."""
    try:
        from jax._src.core import trace_ctx
        from jax._src.interpreters.partial_eval import DynamicJaxprTrace
    except ImportError:  # pragma: no cover
        return None
    return trace_ctx, DynamicJaxprTrace


def _add_bias(out: jax.Array, bias: Array, geom: Geometry) -> jax.Array:
    bias = jnp.asarray(bias, out.dtype)
    if not geom.channels_last:
        # (F,) -> (F, 1, ..., 1); (*out, F) -> (F, *out): a true per-position bias,
        # not Keras's channels_first reshape (see jlocalconv.keras_io for that).
        bias = jnp.moveaxis(bias, -1, 0) if bias.ndim > 1 else bias.reshape(-1, *[1] * geom.ndim)
    return out + bias


__all__ = ["apply", "convolve", "local_conv", "local_conv1d", "local_conv2d", "local_conv3d"]
