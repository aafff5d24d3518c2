"""Locally connected layers for Flax NNX: ``LocallyConnected1D/2D/3D``.

Thin modules over :func:`jlocalconv.local_conv`. Parameters are ``nnx.Param``\\ s named
``kernel`` (``(output_items, feature_dim, filters)``, tf.keras's layout) and ``bias``
(``(*output_shape, filters)``, one bias per output position and filter). Inputs are
batched, ``(*batch, *input_shape, in_features)`` for ``"channels_last"`` (the default) or
``(*batch, in_features, *input_shape)`` for ``"channels_first"``.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from jlocalconv.nnx import LocallyConnected2D
  >>> layer = LocallyConnected2D(3, 16, (3, 3), input_shape=(28, 28), rngs=nnx.Rngs(0))
  >>> layer.kernel.shape, layer.bias.shape
  ((676, 27, 16), (26, 26, 16))
  >>> layer(jnp.ones((8, 28, 28, 3))).shape
  (8, 26, 26, 16)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import jax
import jax.numpy as jnp

from jlocalconv import _layer_common as common
from jlocalconv._errors import import_optional
from jlocalconv.geometry import IntOrTuple
from jlocalconv.initializers import Initializer, default_kernel_init, zeros
from jlocalconv.keras.activations import Activation
from jlocalconv.spec import ConvOptions, Unpack, with_options

if TYPE_CHECKING:  # the optional dependency, typed
    from flax import nnx
else:
    nnx = import_optional("flax.nnx", "flax", "jlocalconv.nnx")


_DOC = f"""A locally connected layer: every output position has its own filter bank.

    Args:
      in_features: the number of input channels.
      filters: the number of output channels.
      input_shape: the input's spatial shape (without batch and channels); it fixes the
        number of output positions and so the parameter shapes.
{common.GEOMETRY_DOC}
      data_format: ``"channels_last"`` (default when None) or ``"channels_first"``.
{common.OPTIONS_DOC}
      dtype: the computation dtype; None promotes the inputs and the parameters.
      param_dtype: the parameters' dtype.
      rngs: the ``nnx.Rngs`` to draw the ``params`` keys from.

    Raises:
      ValueError, TypeError: for a bad argument, at construction; for inputs of the
        wrong shape, when called.
    """


class _LocallyConnected(nnx.Module):
    __doc__ = _DOC

    ndim: ClassVar[int]

    @with_options
    def __init__(
        self,
        in_features: int,
        filters: int,
        kernel_size: IntOrTuple,
        *,
        input_shape: Sequence[int],
        strides: IntOrTuple = 1,
        data_format: str | None = None,
        activation: str | Activation | None = None,
        use_bias: bool = True,
        kernel_init: str | Initializer = default_kernel_init,
        bias_init: str | Initializer = zeros,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
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
            data_format=data_format,
            activation=activation,
            use_bias=use_bias,
            dtype=dtype,
            **options,
        )
        kernel, bias = common.init_params(
            self.spec, kernel_init, bias_init, rngs.params(), param_dtype
        )
        self.kernel = nnx.Param(kernel)
        self.bias = nnx.data(None) if bias is None else nnx.Param(bias)

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Applies the layer to ``(*batch, *input_shape, C)`` (or channels_first) inputs."""
        bias = None if self.bias is None else self.bias[...]
        return common.apply(self.spec, inputs, self.kernel[...], bias, batched=True)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The spatial output shape."""
        return self.spec.geometry.output_shape

    @classmethod
    def from_keras(
        cls,
        layer: Any,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        **options: Unpack[ConvOptions],
    ) -> _LocallyConnected:
        """The layer holding a tf.keras layer's weights, giving Keras's outputs.

        Args:
          layer: one ``KerasLocallyConnected`` from :func:`jlocalconv.keras_io.load_weights`.
          dtype, param_dtype: as in the constructor.
          **options: ``precision``, ``implementation``, ... as in the constructor (not the
            geometry, which is Keras's).

        Returns:
          The layer, with Keras's configuration (data format and activation included).
        """
        kwargs = common.keras_arguments(layer, cls.ndim, f"{cls.__name__}.from_keras")
        return cls(
            **kwargs,
            **options,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=nnx.Rngs(0),  # unused: the initialisers return Keras's arrays
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
