"""The public local-convolution operation: ``local_conv`` and its 1-D/2-D/3-D forms.

Argument normalisation and validation happen here, once, in plain Python at trace
time; the array work is delegated to an implementation from
:mod:`jlocalconv.implementations`.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
from jax import lax

from jlocalconv import _checks
from jlocalconv._errors import fail
from jlocalconv.geometry import Geometry, IntOrTuple, PaddingLike, make_geometry
from jlocalconv.implementations import IMPLEMENTATIONS, choose, names, widened, widens


def local_conv(
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
      padding: ``"valid"`` (default), ``"same"`` (``ceil(n / stride)`` outputs, the odd
        pad on the high side), ``"causal"`` (1-D only), an int, N ints (symmetric) or
        N ``(low, high)`` pairs. Strings are case-insensitive; padding is zeros.
      dilation: kernel (atrous) dilation, an int or a tuple of N ints.
      bias: None, ``(filters,)`` or ``(*output_shape, filters)``; added in the result
        dtype.
      precision: forwarded to the contraction (``lax.dot_general``).
      preferred_element_type: accumulation/result dtype of the contraction, e.g.
        ``jnp.float32`` for bf16 operands.
      implementation: ``"auto"`` or a name from ``jlocalconv.implementations``.
        ``"auto"`` picks by static shapes, dtype and backend; on CPU it computes
        bf16/f16 operands in float32 and rounds the result once.

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
        padding=padding,
        dilation=dilation,
        bias=bias,
        precision=precision,
        preferred_element_type=preferred_element_type,
        implementation=implementation,
    )


def local_conv1d(
    inputs: jax.Array,
    kernel: jax.Array,
    kernel_size: IntOrTuple,
    strides: IntOrTuple,
    data_format: str | None = None,
    *,
    padding: PaddingLike = "valid",
    dilation: IntOrTuple = 1,
    bias: jax.Array | None = None,
    precision: lax.PrecisionLike = None,
    preferred_element_type: jax.typing.DTypeLike | None = None,
    implementation: str = "auto",
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
        padding=padding,
        dilation=dilation,
        bias=bias,
        precision=precision,
        preferred_element_type=preferred_element_type,
        implementation=implementation,
    )


def local_conv2d(
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
        padding=padding,
        dilation=dilation,
        bias=bias,
        precision=precision,
        preferred_element_type=preferred_element_type,
        implementation=implementation,
    )


def local_conv3d(
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
        padding=padding,
        dilation=dilation,
        bias=bias,
        precision=precision,
        preferred_element_type=preferred_element_type,
        implementation=implementation,
    )


def _local_conv(
    fn: str,
    ndim: int | None,
    inputs: jax.Array,
    kernel: jax.Array,
    kernel_size: IntOrTuple,
    strides: IntOrTuple,
    output_shape: Sequence[int] | None,
    data_format: str | None,
    *,
    padding: PaddingLike,
    dilation: IntOrTuple,
    bias: jax.Array | None,
    precision: lax.PrecisionLike,
    preferred_element_type: jax.typing.DTypeLike | None,
    implementation: str,
) -> jax.Array:
    """Shared body of the public entry points; ``ndim`` fixes the spatial rank if set."""
    _checks.check_array(inputs, fn, "inputs")
    _checks.check_floating(inputs, fn, "inputs")
    if ndim is not None:
        layout = "(batch, *spatial, channels) or (batch, channels, *spatial)"
        _checks.check_rank(inputs, ndim + 2, fn, "inputs", layout)
    geom = make_geometry(inputs.shape, kernel_size, strides, padding, dilation, data_format, fn=fn)
    _checks.check_operands(fn, geom, inputs, kernel, output_shape, bias)
    _checks.check_preferred_element_type(preferred_element_type, fn)
    impl = _resolve_implementation(fn, implementation, geom, inputs, kernel, preferred_element_type)
    out = impl(
        inputs, kernel, geom, precision=precision, preferred_element_type=preferred_element_type
    )
    batch, filters = inputs.shape[0], kernel.shape[-1]
    chex.assert_shape(out, geom.result_shape(batch, filters))
    return out if bias is None else _add_bias(out, bias, geom)


def _resolve_implementation(fn, implementation, geom, inputs, kernel, preferred_element_type):
    """The implementation to run; "auto" may also widen 16-bit operands (CPU)."""
    if not isinstance(implementation, str) or implementation not in names():
        fail(fn, "implementation", f"one of {names()}", repr(implementation))
    if implementation != "auto":
        return IMPLEMENTATIONS[implementation]
    backend = jax.default_backend()
    impl = IMPLEMENTATIONS[choose(geom, inputs.shape[0], kernel.shape[-1], inputs.dtype, backend)]
    return widened(impl) if widens(inputs, kernel, preferred_element_type, backend) else impl


def _add_bias(out: jax.Array, bias: jax.Array, geom: Geometry) -> jax.Array:
    bias = jnp.asarray(bias, out.dtype)
    if not geom.channels_last:
        # (F,) -> (F, 1, ..., 1); (*out, F) -> (F, *out): a true per-position bias,
        # not Keras's channels_first reshape (see jlocalconv.keras_io for that).
        bias = jnp.moveaxis(bias, -1, 0) if bias.ndim > 1 else bias.reshape(-1, *[1] * geom.ndim)
    return out + bias
