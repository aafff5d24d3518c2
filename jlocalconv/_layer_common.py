"""What the Flax NNX, Flax Linen and Equinox layers share: arguments and the forward call.

Each framework module only declares parameters its own way; argument normalisation
(:func:`make_spec`), the forward pass (:func:`apply`) and the translation of a loaded
tf.keras layer (:func:`keras_arguments`) live here, once, on top of
:mod:`jlocalconv.geometry` and :func:`jlocalconv.local_conv`.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jlocalconv import _checks
from jlocalconv._activations import Activation, get_activation
from jlocalconv._errors import fail
from jlocalconv.geometry import (
    Geometry,
    IntOrTuple,
    PaddingLike,
    make_geometry,
    normalize_data_format,
)
from jlocalconv.implementations import names as implementation_names
from jlocalconv.initializers import Initializer
from jlocalconv.ops import local_conv

# Argument descriptions every framework's layer shares, spliced into their docstrings
# (indented for an ``Args:``/``Attributes:`` section of a class docstring).
GEOMETRY_DOC = """\
      kernel_size: the window, an int or one int per spatial dim.
      strides: the window strides, an int or one int per spatial dim.
      padding: ``"valid"`` (default), ``"same"``, ``"causal"`` (1-D), an int, N ints, or
        N ``(low, high)`` pairs, as in :func:`jlocalconv.local_conv`.
      dilation: the kernel dilation, an int or one int per spatial dim."""

OPTIONS_DOC = """\
      activation: None, a callable, or a Keras activation name such as ``"relu"``.
      use_bias: whether to add a ``(*output_shape, filters)`` bias.
      kernel_init: an initialiser or a name from :func:`jlocalconv.initializers.names`;
        the default treats output positions as a batch axis (see
        :mod:`jlocalconv.initializers`).
      bias_init: an initialiser or name for the bias (zeros by default).
      precision: forwarded to :func:`jlocalconv.local_conv`.
      implementation: ``"auto"`` or a name from :mod:`jlocalconv.implementations`."""


def import_optional(module: str, extra: str, user: str) -> ModuleType:
    """Imports ``module`` or raises an ImportError that says which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{user} needs {extra}: pip install 'jlocalconv[{extra}]'") from err


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """The normalised, static configuration of one locally connected layer.

    Attributes:
      name: the layer's class name, used in error messages.
      geometry: the convolution's :class:`~jlocalconv.geometry.Geometry` (input spatial
        shape, channels, window, strides, dilation, explicit padding, data format).
      filters: the number of output channels.
      activation: the function applied to the biased output.
      use_bias: whether the layer has a ``(*output_shape, filters)`` bias.
      dtype: the computation dtype, or None to promote the inputs and parameters.
      precision: forwarded to :func:`jlocalconv.local_conv`.
      implementation: forwarded to :func:`jlocalconv.local_conv`.
    """

    name: str
    geometry: Geometry
    filters: int
    activation: Activation
    use_bias: bool
    dtype: Any
    precision: lax.PrecisionLike
    implementation: str

    @property
    def kernel_shape(self) -> tuple[int, int, int]:
        return self.geometry.kernel_shape(self.filters)

    @property
    def bias_shape(self) -> tuple[int, ...]:
        return (*self.geometry.output_shape, self.filters)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One example's shape: ``(*spatial, channels)`` or ``(channels, *spatial)``."""
        return self.geometry.input_shape(1)[1:]


def make_spec(
    name: str,
    ndim: int,
    *,
    in_features: int,
    filters: int,
    kernel_size: IntOrTuple,
    input_shape: Sequence[int],
    strides: IntOrTuple,
    padding: PaddingLike,
    data_format: str | None,
    dilation: IntOrTuple,
    activation: Any,
    use_bias: bool,
    dtype: Any,
    precision: lax.PrecisionLike,
    implementation: str,
) -> LayerSpec:
    """Validates every constructor argument of a layer, raising errors that name ``name``."""
    _check_count(in_features, name, "in_features")
    _check_count(filters, name, "filters")
    spatial = _spatial_shape(input_shape, ndim, name)
    fmt = normalize_data_format(data_format, name)
    sample = (*spatial, in_features) if fmt == "channels_last" else (in_features, *spatial)
    geom = make_geometry((1, *sample), kernel_size, strides, padding, dilation, fmt, fn=name)
    if not isinstance(implementation, str) or implementation not in implementation_names():
        fail(name, "implementation", f"one of {implementation_names()}", repr(implementation))
    if not isinstance(use_bias, (bool, np.bool_)):
        fail(name, "use_bias", "a bool", use_bias, exc=TypeError)
    act = get_activation(activation, name)
    return LayerSpec(
        name, geom, int(filters), act, bool(use_bias), dtype, precision, implementation
    )


def _check_count(value: object, name: str, arg: str) -> None:
    if not _is_int(value):
        fail(name, arg, "a positive int", value, exc=TypeError)
    if value < 1:  # type: ignore[operator]
        fail(name, arg, "a positive int", value)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _spatial_shape(input_shape: Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    expected = f"the input's spatial shape, {ndim} positive int(s) (channels go in `in_features`)"
    if isinstance(input_shape, (int, np.integer)) and ndim == 1:
        input_shape = (input_shape,)
    if not isinstance(input_shape, Sequence) or isinstance(input_shape, str):
        fail(name, "input_shape", expected, input_shape, exc=TypeError)
    if len(input_shape) != ndim or not all(_is_int(s) and s > 0 for s in input_shape):
        fail(name, "input_shape", expected, repr(tuple(input_shape)))
    return tuple(int(s) for s in input_shape)


def split_sample_shape(
    shape: Sequence[int], ndim: int, data_format: str | None, name: str
) -> tuple[tuple[int, ...], int]:
    """``(spatial, channels)`` from the trailing ``ndim + 1`` dims of an input shape (Linen)."""
    fmt = normalize_data_format(data_format, name)
    if len(shape) < ndim + 1:
        layout = "(*batch, *spatial, C)" if fmt == "channels_last" else "(*batch, C, *spatial)"
        fail(name, "inputs", f"of rank >= {ndim + 1}, {layout}", f"shape {tuple(shape)}")
    sample = tuple(shape[len(shape) - ndim - 1 :])
    return (sample[:-1], sample[-1]) if fmt == "channels_last" else (sample[1:], sample[0])


def apply(
    spec: LayerSpec,
    inputs: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    *,
    batched: bool,
) -> jax.Array:
    """The layer's forward pass: ``activation(local_conv(inputs, kernel) + bias)``.

    Args:
      spec: the layer's configuration.
      inputs: one example of shape ``spec.sample_shape`` when ``batched`` is False;
        otherwise ``(*batch, *spec.sample_shape)`` with any number of leading batch dims.
      kernel: ``spec.kernel_shape``.
      bias: ``spec.bias_shape`` or None.
      batched: whether leading batch dims are allowed (Flax) or not (Equinox).

    Returns:
      ``(*batch, *output_shape, filters)`` or ``(*batch, filters, *output_shape)``.
    """
    _check_inputs(spec, inputs, batched)
    inputs, kernel, bias = _promote(spec.dtype, inputs, kernel, bias)
    sample = spec.sample_shape
    lead = inputs.shape[: inputs.ndim - len(sample)]
    geom = spec.geometry
    out = local_conv(
        inputs.reshape(math.prod(lead), *sample),
        kernel,
        geom.kernel_size,
        geom.strides,
        data_format=geom.data_format,
        padding=geom.padding,
        dilation=geom.dilation,
        bias=bias,
        precision=spec.precision,
        implementation=spec.implementation,
    )
    return spec.activation(out.reshape(*lead, *out.shape[1:]))


def _check_inputs(spec: LayerSpec, inputs: object, batched: bool) -> None:
    _checks.check_array(inputs, spec.name, "inputs")
    sample = spec.sample_shape
    shape = tuple(inputs.shape)  # type: ignore[attr-defined]
    fits = shape[len(shape) - len(sample) :] == sample and len(shape) >= len(sample)
    if not batched and len(shape) != len(sample):
        hint = "Equinox layers take one example; use jax.vmap(layer) for a batch."
        fail(spec.name, "inputs", f"of shape {sample}", f"shape {shape}", hint=hint)
    if not fits:
        # Equinox takes one example: its expected shape has no batch dims to mention.
        lead = "*batch, " if batched else ""
        fail(
            spec.name, "inputs", f"of shape ({lead}{', '.join(map(str, sample))})", f"shape {shape}"
        )


def _promote(dtype: Any, *arrays: jax.Array | None) -> tuple[jax.Array | None, ...]:
    # Flax's convention: cast everything to `dtype`, or to the promoted dtype when it is None.
    present = [a for a in arrays if a is not None]
    if dtype is None:
        dtype = jnp.result_type(*present)
        if not jnp.issubdtype(dtype, jnp.inexact):
            dtype = jnp.promote_types(dtype, jnp.float32)
    return tuple(None if a is None else jnp.asarray(a, dtype) for a in arrays)


def resolve_initializers(
    spec: LayerSpec, kernel_init: str | Initializer, bias_init: str | Initializer
) -> tuple[Initializer, Initializer]:
    """``(kernel_init, bias_init)`` as functions; names resolve through ``initializers.get``."""
    from jlocalconv import initializers

    return (
        initializers.get(kernel_init, spec.name, "kernel_init"),
        initializers.get(bias_init, spec.name, "bias_init"),
    )


def init_params(
    spec: LayerSpec,
    kernel_init: str | Initializer,
    bias_init: str | Initializer,
    key: jax.Array,
    param_dtype: Any,
) -> tuple[jax.Array, jax.Array | None]:
    """The initial ``(kernel, bias)``; bias is None without ``use_bias`` (NNX, Equinox)."""
    kinit, binit = resolve_initializers(spec, kernel_init, bias_init)
    kernel_key, bias_key = jax.random.split(key)
    kernel = kinit(kernel_key, spec.kernel_shape, param_dtype)
    if not spec.use_bias:
        return kernel, None
    return kernel, binit(bias_key, spec.bias_shape, param_dtype)


def keras_arguments(layer: Any, ndim: int, name: str) -> dict[str, Any]:
    """Constructor arguments for a layer equal to a loaded Keras layer.

    Args:
      layer: a ``jlocalconv.keras_io.KerasLocallyConnected`` (what ``load_weights``
        returns for one layer).
      ndim: the spatial rank of the layer class being built.
      name: e.g. ``"LocallyConnected2D.from_keras"``, for error messages.

    Returns:
      Keyword arguments ``in_features, filters, kernel_size, input_shape, strides,
      padding, data_format, activation, use_bias, kernel_init, bias_init``, the
      initialisers returning Keras's kernel and bias.
    """
    config = getattr(layer, "config", None)
    spatial = tuple(getattr(layer, "input_shape", ()))
    if not isinstance(config, dict) or len(spatial) != ndim:
        got = f"{type(layer).__name__} with input_shape {spatial}"
        fail(name, "layer", f"a {ndim}-D KerasLocallyConnected from jlocalconv.keras_io", got)
    has_bias = layer.bias is not None
    if bool(config["use_bias"]) != has_bias:
        fail(name, "layer", "a bias exactly when config['use_bias']", f"bias={layer.bias!r}")
    return dict(
        in_features=int(layer.channels_in),
        filters=int(config["filters"]),
        kernel_size=tuple(config["kernel_size"]),
        input_shape=spatial,
        strides=tuple(config["strides"]),
        padding=config["padding"],
        data_format=config["data_format"],
        activation=config["activation"],
        use_bias=has_bias,
        kernel_init=constant_init(layer.kernel, name, "layer.kernel"),
        bias_init=constant_init(layer.bias, name, "layer.bias"),
    )


def constant_init(value: Any, name: str, arg: str) -> Initializer:
    """An initialiser returning ``value`` (cast to the requested dtype) for its exact shape."""

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        del key
        if value is None or tuple(np.shape(value)) != tuple(shape):
            got = "None" if value is None else f"shape {np.shape(value)}"
            fail(name, arg, f"of shape {tuple(shape)}", got)
        return jnp.asarray(value, dtype)

    return init
