"""What the Flax NNX, Flax Linen and Equinox layers share: arguments and the forward call.

Each framework module only declares parameters its own way; argument normalisation
(:func:`make_spec`, which builds the layer's :class:`~jlocalconv.spec.LocalConvSpec`), the
forward pass (:func:`apply`) and the translation of a loaded tf.keras layer
(:func:`keras_arguments`) live here, once, on top of :mod:`jlocalconv.spec` and
:func:`jlocalconv.ops.apply`.

May import: ``_checks``, ``_errors``, ``_validate``, ``geometry``, ``initializers``,
``keras.activations``, ``ops``, ``spec``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jlocalconv import _checks
from jlocalconv._errors import fail
from jlocalconv._validate import normalize_data_format, positive_int, shape_tuple
from jlocalconv.geometry import Geometry, IntOrTuple
from jlocalconv.initializers import Initializer
from jlocalconv.keras.activations import Activation, get_activation
from jlocalconv.ops import apply as apply_spec
from jlocalconv.spec import OPTIONS_DOC as CONV_OPTIONS_DOC
from jlocalconv.spec import LocalConvSpec

# Argument descriptions every framework's layer shares, spliced into their docstrings
# (indented for an ``Args:``/``Attributes:`` section of a class docstring).
GEOMETRY_DOC = """\
      kernel_size: the window, an int or one int per spatial dim.
      strides: the window strides, an int or one int per spatial dim."""

OPTIONS_DOC = f"""\
      activation: None, a callable, or a Keras activation name such as ``"relu"``.
      use_bias: whether to add a ``(*output_shape, filters)`` bias.
      kernel_init: an initialiser or a name from :func:`jlocalconv.initializers.names`;
        the default treats output positions as a batch axis (see
        :mod:`jlocalconv.initializers`).
      bias_init: an initialiser or name for the bias (zeros by default).
{CONV_OPTIONS_DOC}"""


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """The normalised, static configuration of one locally connected layer.

    Attributes:
      name: the layer's class name, used in error messages.
      conv: the convolution's static arguments (window, strides, padding, dilation,
        data format and the options of :class:`~jlocalconv.spec.ConvOptions`).
      geometry: the convolution's :class:`~jlocalconv.geometry.Geometry` for one
        example (input spatial shape, channels, explicit padding).
      filters: the number of output channels.
      activation: the function applied to the biased output.
      use_bias: whether the layer has a ``(*output_shape, filters)`` bias.
      dtype: the computation dtype, or None to promote the inputs and the parameters.
    """

    name: str
    conv: LocalConvSpec
    geometry: Geometry
    filters: int
    activation: Activation
    use_bias: bool
    dtype: Any

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
    data_format: str | None,
    activation: Any,
    use_bias: bool,
    dtype: Any,
    **options: Any,
) -> LayerSpec:
    """Validates every constructor argument of a layer, raising errors that name ``name``.

    ``options`` are the :class:`~jlocalconv.spec.ConvOptions` the layer was given.
    """
    channels = positive_int(in_features, name, "in_features")
    count = positive_int(filters, name, "filters")
    spatial = shape_tuple(
        input_shape,
        name,
        "input_shape",
        ndim=ndim,
        what="the input's spatial shape",
        hint="Channels go in `in_features`.",
    )
    conv = LocalConvSpec.create(ndim, kernel_size, strides, data_format, fn=name, **options)
    channels_last = conv.data_format == "channels_last"
    sample = (*spatial, channels) if channels_last else (channels, *spatial)
    geom = conv.geometry((1, *sample), name)
    if not isinstance(use_bias, (bool, np.bool_)):
        fail(name, "use_bias", "a bool", use_bias, exc=TypeError)
    act = get_activation(activation, name)
    return LayerSpec(name, conv, geom, count, act, bool(use_bias), dtype)


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
    x, k, b = _promote(spec.dtype, inputs, kernel, bias)
    assert x is not None and k is not None  # _promote keeps None only where given
    sample = spec.sample_shape
    lead = x.shape[: x.ndim - len(sample)]
    out = apply_spec(spec.conv, x.reshape(math.prod(lead), *sample), k, bias=b, fn=spec.name)
    return spec.activation(out.reshape(*lead, *out.shape[1:]))


def _check_inputs(spec: LayerSpec, inputs: Any, batched: bool) -> None:
    _checks.check_array(inputs, spec.name, "inputs")
    sample = spec.sample_shape
    shape = tuple(inputs.shape)
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
      layer: a ``jlocalconv.keras.reader.KerasLocallyConnected`` (what ``load_weights``
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

    def init(
        key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32, out_sharding: Any = None
    ) -> jax.Array:
        del key, out_sharding
        if value is None or tuple(np.shape(value)) != tuple(shape):
            got = "None" if value is None else f"shape {np.shape(value)}"
            fail(name, arg, f"of shape {tuple(shape)}", got)
        return jnp.asarray(value, dtype)

    return init
