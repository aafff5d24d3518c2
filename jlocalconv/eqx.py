"""Locally connected layers for Equinox: ``LocallyConnected1D/2D/3D``.

Equinox conventions: a layer takes *one* example, channels first, ``(in_features,
*input_shape)``; use ``jax.vmap(layer)`` for a batch. The fields ``kernel``
(``(output_items, feature_dim, filters)``, tf.keras's layout for the layer's
``data_format``) and ``bias`` (``(*output_shape, filters)``) are the trainable arrays; the
configuration is a static field.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jlocalconv.eqx import LocallyConnected2D
  >>> layer = LocallyConnected2D(3, 16, 3, input_shape=(28, 28), key=jax.random.key(0))
  >>> layer(jnp.ones((3, 28, 28))).shape
  (16, 26, 26)
  >>> jax.vmap(layer)(jnp.ones((8, 3, 28, 28))).shape
  (8, 16, 26, 26)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import jax

from jlocalconv import _layer_common as common
from jlocalconv._errors import import_optional
from jlocalconv._validate import normalize_data_format
from jlocalconv.geometry import IntOrTuple
from jlocalconv.initializers import Initializer, default_kernel_init, zeros
from jlocalconv.keras.activations import Activation
from jlocalconv.layout import convert_data_format
from jlocalconv.spec import ConvOptions, Unpack, with_options

if TYPE_CHECKING:  # the optional dependency, typed
    import equinox as eqx
else:
    eqx = import_optional("equinox", "equinox", "jlocalconv.eqx")


_DOC = f"""A locally connected layer: every output position has its own filter bank.

    Args:
      in_features: the number of input channels.
      filters: the number of output channels.
      input_shape: the input's spatial shape (without channels); it fixes the number of
        output positions and so the parameter shapes.
{common.GEOMETRY_DOC}
      data_format: ``"channels_first"`` (the default, Equinox's convention; also when
        None) or ``"channels_last"``; the kernel's feature order follows it.
{common.OPTIONS_DOC}
      dtype: the parameters' dtype (Equinox's meaning); None for JAX's default float.
      key: the PRNG key for the initialisation.

    Raises:
      ValueError, TypeError: for a bad argument, at construction; for inputs of the
        wrong shape (a batch included: vmap instead), when called.
    """


class _LocallyConnected(eqx.Module):
    __doc__ = _DOC

    ndim: ClassVar[int]

    kernel: jax.Array
    bias: jax.Array | None
    spec: common.LayerSpec = eqx.field(static=True)

    @with_options
    def __init__(
        self,
        in_features: int,
        filters: int,
        kernel_size: IntOrTuple,
        *,
        input_shape: Sequence[int],
        strides: IntOrTuple = 1,
        data_format: str | None = "channels_first",
        activation: str | Activation | None = None,
        use_bias: bool = True,
        kernel_init: str | Initializer = default_kernel_init,
        bias_init: str | Initializer = zeros,
        dtype: Any = None,
        key: jax.Array,
        **options: Unpack[ConvOptions],
    ):
        self.spec = common.make_spec(
            type(self).__name__,
            self.ndim,
            in_features=in_features,
            filters=filters,
            kernel_size=kernel_size,
            input_shape=input_shape,
            strides=strides,
            data_format=data_format or "channels_first",
            activation=activation,
            use_bias=use_bias,
            dtype=None,  # promote inputs and parameters, as Equinox's layers do
            **options,
        )
        dtype = jax.dtypes.canonicalize_dtype(float) if dtype is None else dtype
        self.kernel, self.bias = common.init_params(self.spec, kernel_init, bias_init, key, dtype)

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """Applies the layer to one example ``(in_features, *input_shape)`` (channels_first).

        ``key`` is ignored (Equinox's layer signature).
        """
        del key
        return common.apply(self.spec, x, self.kernel, self.bias, batched=False)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The spatial output shape."""
        return self.spec.geometry.output_shape

    @classmethod
    def from_keras(
        cls,
        layer: Any,
        *,
        data_format: str = "channels_first",
        dtype: Any = None,
        **options: Unpack[ConvOptions],
    ) -> _LocallyConnected:
        """The layer holding a tf.keras layer's weights, giving Keras's outputs.

        Args:
          layer: one ``KerasLocallyConnected`` from :func:`jlocalconv.keras_io.load_weights`.
          data_format: the layout the new layer takes (channels_first by default, whatever
            Keras used); the kernel's feature axis is reordered when they differ.
          dtype: as in the constructor.
          **options: ``precision``, ``implementation``, ... as in the constructor (not the
            geometry, which is Keras's).

        Returns:
          The layer: ``jax.vmap(layer)`` of Keras's inputs (moved to ``data_format``) gives
          Keras's outputs (in ``data_format``).
        """
        name = f"{cls.__name__}.from_keras"
        kwargs = common.keras_arguments(layer, cls.ndim, name)
        target = normalize_data_format(data_format, name)
        kernel = convert_data_format(
            layer.kernel,
            kwargs["kernel_size"],
            kwargs["in_features"],
            normalize_data_format(kwargs["data_format"], name),
            target,
        )
        kwargs.update(data_format=target, kernel_init=common.constant_init(kernel, name, "layer"))
        return cls(
            **kwargs,
            **options,
            dtype=dtype,
            key=jax.random.key(0),  # unused: the initialisers return Keras's arrays
        )


class LocallyConnected1D(_LocallyConnected):
    __doc__ = _DOC
    ndim = 1


class LocallyConnected2D(_LocallyConnected):
    __doc__ = _DOC
    ndim = 2


class LocallyConnected3D(_LocallyConnected):
    __doc__ = _DOC
    ndim = 3


__all__ = ["LocallyConnected1D", "LocallyConnected2D", "LocallyConnected3D"]
