"""Locally connected layers for Flax Linen: ``LocallyConnected1D/2D/3D``.

Thin modules over :func:`jlocalconv.local_conv`; the input's spatial shape and channel
count are inferred at ``init``. Parameters live under ``"params"``: ``kernel``
(``(output_items, feature_dim, filters)``, tf.keras's layout) and ``bias``
(``(*output_shape, filters)``). Unlike ``flax.linen.ConvLocal`` the kernel is in Keras's
layout, the default init does not shrink with the output size, and ``data_format``,
``"causal"`` padding and Keras activation names are accepted.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jlocalconv.linen import LocallyConnected1D
  >>> layer = LocallyConnected1D(filters=4, kernel_size=3, activation="relu")
  >>> params = layer.init(jax.random.key(0), jnp.ones((2, 10, 3)))
  >>> jax.tree.map(jnp.shape, params)
  {'params': {'bias': (8, 4), 'kernel': (8, 9, 4)}}
  >>> layer.apply(params, jnp.ones((2, 10, 3))).shape
  (2, 8, 4)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import jax
import jax.numpy as jnp
from jax import lax

from jlocalconv import _checks
from jlocalconv import _layer_common as common
from jlocalconv._errors import fail, import_optional
from jlocalconv.geometry import IntOrTuple, PaddingLike
from jlocalconv.initializers import Initializer, default_kernel_init, zeros
from jlocalconv.keras.activations import Activation
from jlocalconv.spec import ConvOptions, Unpack

if TYPE_CHECKING:  # the optional dependency, typed
    import flax.linen as nn
else:
    nn = import_optional("flax.linen", "flax", "jlocalconv.linen")


_DOC = f"""A locally connected layer: every output position has its own filter bank.

    Attributes:
      filters: the number of output channels.
{common.GEOMETRY_DOC}
      data_format: ``"channels_last"`` (default when None) or ``"channels_first"``.
{common.OPTIONS_DOC}
      dtype: the computation dtype; None promotes the inputs and the parameters.
      param_dtype: the parameters' dtype.

    Inputs are ``(*batch, *spatial, C)`` (channels_last) or ``(*batch, C, *spatial)``; the
    trailing ``ndim + 1`` dims are one example. Bad arguments raise ValueError/TypeError
    naming the argument when the module is first called (at ``init``).
    """


class _LocallyConnected(nn.Module):
    __doc__ = _DOC

    ndim: ClassVar[int]

    filters: int
    kernel_size: IntOrTuple
    strides: IntOrTuple = 1
    padding: PaddingLike = "valid"
    data_format: str | None = None
    dilation: IntOrTuple = 1
    activation: str | Activation | None = None
    use_bias: bool = True
    kernel_init: str | Initializer = default_kernel_init
    bias_init: str | Initializer = zeros
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: lax.PrecisionLike = None
    implementation: str = "auto"
    # Linen declares its attributes: one per option of jlocalconv.spec.ConvOptions (a test
    # checks that none is missing), new ones at the end so positional use keeps working.
    preferred_element_type: jax.typing.DTypeLike | None = None

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Applies the layer; the first call (``init``) creates the parameters."""
        spec = self._spec(inputs)
        kernel_init, bias_init = common.resolve_initializers(spec, self.kernel_init, self.bias_init)
        kernel = self.param("kernel", kernel_init, spec.kernel_shape, self.param_dtype)
        bias = None
        if spec.use_bias:
            bias = self.param("bias", bias_init, spec.bias_shape, self.param_dtype)
        return common.apply(spec, inputs, kernel, bias, batched=True)

    def _spec(self, inputs: jax.Array) -> common.LayerSpec:
        name = type(self).__name__
        _checks.check_array(inputs, name, "inputs")
        spatial, channels = common.split_sample_shape(
            inputs.shape, self.ndim, self.data_format, name
        )
        if channels < 1:  # in_features is inferred here, so name the inputs
            fail(name, "inputs", "of at least one channel", f"shape {tuple(inputs.shape)}")
        return common.make_spec(
            name,
            self.ndim,
            in_features=channels,
            filters=self.filters,
            kernel_size=self.kernel_size,
            input_shape=spatial,
            strides=self.strides,
            data_format=self.data_format,
            activation=self.activation,
            use_bias=self.use_bias,
            dtype=self.dtype,
            **{name: getattr(self, name) for name in ConvOptions.__annotations__},
        )

    @classmethod
    def from_keras(
        cls,
        layer: Any,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        **options: Unpack[ConvOptions],
    ) -> tuple[_LocallyConnected, dict[str, Any]]:
        """The module and variables reproducing a tf.keras layer.

        Args:
          layer: one ``KerasLocallyConnected`` from :func:`jlocalconv.keras_io.load_weights`.
          dtype, param_dtype: as the attributes.
          **options: ``precision``, ``implementation``, ... as the attributes (not the
            geometry, which is Keras's).

        Returns:
          ``(module, variables)``: ``module.apply(variables, x)`` gives Keras's output.
        """
        kwargs = common.keras_arguments(layer, cls.ndim, f"{cls.__name__}.from_keras")
        del kwargs["in_features"], kwargs["input_shape"]  # Linen infers them from inputs
        module = cls(
            **kwargs,
            **options,
            dtype=dtype,
            param_dtype=param_dtype,
        )
        params = {"kernel": jnp.asarray(layer.kernel, param_dtype)}
        if layer.bias is not None:
            params["bias"] = jnp.asarray(layer.bias, param_dtype)
        return module, {"params": params}


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
