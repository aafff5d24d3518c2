"""Keras 3 ``LocallyConnected1D/2D/3D`` layers on the JAX backend, with tf.keras 2's weights.

Keras 3 dropped tf.keras 2's locally connected layers. These take tf.keras 2's constructor
arguments and create tf.keras 2's weights (names, shapes and order, per ``implementation``),
so Keras 3's own loaders fill them from a tf.keras 2 file::

    model = keras.saving.load_model("model.h5", custom_objects=jlocalconv.keras.custom_objects())

and compute as :func:`jlocalconv.local_conv` does, through a spec built once per layer
(:func:`jlocalconv.ops.apply`; implementations 2 and 3 gather their
stored weights into jlocalconv's kernel inside the computation, so the stored layout, the
gradients and the saved files stay tf.keras 2's). ``padding="same"`` has Keras 2's
alignment (:func:`jlocalconv.keras.converters.keras_padding`), the channels_first bias is added as
tf.keras 2 adds it, and the activation is Keras 3's of the same name. The layers only run
on Keras's JAX backend (``KERAS_BACKEND=jax``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jlocalconv
from jlocalconv._errors import fail, import_optional
from jlocalconv._validate import normalize_tuple
from jlocalconv.geometry import normalize_padding
from jlocalconv.keras import converters
from jlocalconv.ops import apply
from jlocalconv.spec import LocalConvSpec

keras = import_optional("keras", "keras", "jlocalconv.keras")

_PACKAGE = "jlocalconv"
_KERAS_PADDINGS = ("valid", "same")


def _check_backend(fn: str) -> None:
    # The computation is JAX code; on another backend Keras would hand it foreign tensors.
    backend = keras.backend.backend()
    if backend != "jax":
        hint = (
            "jlocalconv's Keras layers compute with JAX: set the environment variable "
            "KERAS_BACKEND=jax before Keras is first imported."
        )
        fail(fn, "KERAS_BACKEND", '"jax"', repr(backend), hint=hint, exc=RuntimeError)


def _normalize_layer_padding(padding: Any, rank: int, fn: str) -> str | tuple[tuple[int, int], ...]:
    """``"valid"``, ``"same"``, ``"causal"`` (lower case) or ``rank`` explicit pairs."""
    if isinstance(padding, str):
        mode = padding.lower()
        if mode in (*_KERAS_PADDINGS, "causal"):
            if mode == "causal" and rank != 1:
                fail(fn, "padding", "'causal' only for LocallyConnected1D", repr(padding))
            return mode
    # Explicit padding does not depend on the input, so any spatial shape checks it here.
    # JSON (a saved config) turns pairs into lists: normalize_padding takes both.
    return normalize_padding(padding, (1,) * rank, (1,) * rank, (1,) * rank, (1,) * rank, fn)


# keras is bound at run time by import_optional (an optional dependency), so a type checker
# cannot resolve the base class statically.
class _LocallyConnected(keras.layers.Layer):  # type: ignore[name-defined]
    """The N-D layer; subclasses fix ``rank``. See :class:`LocallyConnected2D`."""

    rank: int = 0

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: Any = "valid",
        data_format: str | None = None,
        activation: str | Callable | None = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        activity_regularizer: Any = None,
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        implementation: int = 1,
        dilation_rate: int | Sequence[int] = 1,
        **kwargs: Any,
    ) -> None:
        fn = type(self).__name__
        _check_backend(fn)
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        n = self.rank
        self.filters = normalize_tuple(filters, 1, fn, "filters")[0]
        self.kernel_size = normalize_tuple(kernel_size, n, fn, "kernel_size")
        self.strides = normalize_tuple(strides, n, fn, "strides")
        self.dilation_rate = normalize_tuple(dilation_rate, n, fn, "dilation_rate")
        self.padding = _normalize_layer_padding(padding, n, fn)
        self.data_format = _data_format(data_format, fn)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.implementation = _implementation(implementation, self, fn)
        self.input_spec = keras.layers.InputSpec(ndim=n + 2)

    # --- shapes ----------------------------------------------------------------------------

    def _split_shape(self, input_shape: Sequence[int | None]) -> tuple[tuple[int, ...], int]:
        """``(spatial shape, channels)`` of a build-time input shape, checked to be static."""
        fn = type(self).__name__
        shape: tuple[Any, ...] = tuple(input_shape)  # ints once the None check below passed
        if len(shape) != self.rank + 2:
            expected = f"of rank {self.rank + 2} (batch, spatial..., channels)"
            fail(fn, "inputs", expected, f"shape {shape}")
        last = self.data_format == "channels_last"
        spatial, channels = (shape[1:-1], shape[-1]) if last else (shape[2:], shape[1])
        if any(s is None for s in (*spatial, channels)):
            hint = "Each output position has its own weights: give the model a fixed input size."
            fail(fn, "inputs", "of fully defined spatial and channel sizes", shape, hint=hint)
        return tuple(int(s) for s in spatial), int(channels)

    def _pads(self, spatial: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
        """The explicit ``(low, high)`` pairs of ``self.padding`` for ``spatial``."""
        if self.padding == "same":  # Keras 2's alignment, on the dilated window's extent
            extent = [(k - 1) * d + 1 for k, d in zip(self.kernel_size, self.dilation_rate)]
            return converters.keras_padding(spatial, extent, self.strides, "same")
        window = (self.kernel_size, self.strides, self.dilation_rate)
        return normalize_padding(self.padding, spatial, *window, type(self).__name__)

    def _output_spatial(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        return jlocalconv.conv_output_shape(
            spatial, self.kernel_size, self.strides, self._pads(spatial), self.dilation_rate
        )

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        """``(batch, *output_shape, filters)`` or ``(batch, filters, *output_shape)``."""
        out = self._output_spatial(self._split_shape(input_shape)[0])
        if self.data_format == "channels_last":
            return (input_shape[0], *out, self.filters)
        return (input_shape[0], self.filters, *out)

    # --- weights -----------------------------------------------------------------------------

    def build(self, input_shape: Sequence[int | None]) -> None:
        """Creates ``kernel`` (and ``bias``) in tf.keras 2's layout for ``implementation``."""
        spatial, channels = self._split_shape(input_shape)
        self.input_spatial_shape, self.channels_in = spatial, channels
        self.output_spatial_shape = self._output_spatial(spatial)
        if min(self.output_spatial_shape) <= 0:
            fail(type(self).__name__, "inputs", "larger than the window", f"shape {input_shape}")
        # The call's static arguments, built and validated once (Keras's padding resolved
        # to explicit pairs for this input size), as the other frameworks' layers hold them.
        self._spec = LocalConvSpec.create(
            self.rank,
            self.kernel_size,
            self.strides,
            self.data_format,
            fn=type(self).__name__,
            padding=self._pads(spatial),
            dilation=self.dilation_rate,
        )
        self.kernel_shape, self._gather = self._keras_kernel_layout()
        self.kernel = self.add_weight(
            shape=self.kernel_shape,
            initializer=self.kernel_initializer,
            name="kernel",
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                shape=(*self.output_spatial_shape, self.filters),
                initializer=self.bias_initializer,
                name="bias",
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        axis = -1 if self.data_format == "channels_last" else 1
        self.input_spec = keras.layers.InputSpec(ndim=self.rank + 2, axes={axis: channels})

    def _keras_kernel_layout(self) -> tuple[tuple[int, ...], np.ndarray | None]:
        """tf.keras 2's kernel shape and, for implementations 2 and 3, the gather map.

        The map is jlocalconv's kernel with each weight replaced by 1 + its flat position
        in the stored kernel (0 where a "same" window reads padding), made by running the
        public NumPy converters on those positions: ``stored[map]`` is then the kernel,
        exactly, under ``jit`` and ``grad`` (whose gradient scatters back to the stored
        layout, the masked entries of implementation 2 getting zero, as in tf.keras 2).
        """
        ours = jlocalconv.kernel_shape(
            self._input_shape_for(self.channels_in),
            self.filters,
            self.kernel_size,
            self.strides,
            self._pads(self.input_spatial_shape),
            self.dilation_rate,
            self.data_format,
        )
        if self.implementation == 1:
            return ours, None
        assert isinstance(self.padding, str)  # 2 and 3 take Keras's modes only (__init__ checks)
        geometry = (self.input_spatial_shape, self.kernel_size, self.strides, self.padding)
        if self.implementation == 2:
            shape = self._dense_kernel_shape()
            positions = np.arange(1, math.prod(shape) + 1).reshape(shape)
            index = converters.from_keras_dense(positions, *geometry, self.data_format)
        else:
            _, self.kernel_idxs = converters.to_keras_sparse(
                np.zeros(ours, np.int8), *geometry, self.data_format
            )
            shape = (len(self.kernel_idxs),)
            positions = np.arange(1, shape[0] + 1)
            out = self.output_spatial_shape
            index = converters.from_keras_sparse(
                positions, self.kernel_idxs, geometry[0], out, *geometry[1:], self.data_format
            )
        if math.prod(shape) >= np.iinfo(np.int32).max:
            fail(type(self).__name__, "implementation", "1 for a kernel this large", shape)
        return shape, index.astype(np.int32)

    def _dense_kernel_shape(self) -> tuple[int, ...]:
        """tf.keras 2's implementation 2 kernel: every input element to every output."""
        spatial, out = self.input_spatial_shape, self.output_spatial_shape
        if self.data_format == "channels_last":
            return (*spatial, self.channels_in, *out, self.filters)
        return (self.channels_in, *spatial, self.filters, *out)

    def _input_shape_for(self, channels: int) -> tuple[int, ...]:
        """A one-example input shape with this layer's spatial shape, in its data format."""
        spatial = self.input_spatial_shape
        if self.data_format == "channels_last":
            return (1, *spatial, channels)
        return (1, channels, *spatial)

    def _jlocalconv_weights(self) -> tuple[jax.Array, jax.Array | None]:
        """The kernel in jlocalconv's layout and the per-position ``(*out, filters)`` bias."""
        kernel = self.kernel.value
        if self._gather is not None:
            flat = jnp.concatenate([jnp.zeros((1,), kernel.dtype), kernel.reshape(-1)])
            kernel = flat[self._gather]
        if self.bias is None:
            return kernel, None
        bias = self.bias.value
        if self.data_format == "channels_first":
            # tf.keras 2's bias_add reshapes (not transposes) the (*out, F) bias to (F, *out).
            bias = jnp.moveaxis(bias.reshape(self.filters, *self.output_spatial_shape), 0, -1)
        return kernel, bias

    # --- computation ---------------------------------------------------------------------------

    def call(self, inputs: jax.Array) -> jax.Array:
        """``activation(local_conv(inputs, kernel) + bias)`` through jlocalconv."""
        kernel, bias = self._jlocalconv_weights()
        outputs = apply(self._spec, inputs, kernel, bias=bias, fn=type(self).__name__)
        return self.activation(outputs)

    def get_config(self) -> dict[str, Any]:
        """tf.keras 2's configuration entries, plus ``dilation_rate``."""
        ser = keras.saving.serialize_keras_object
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "data_format": self.data_format,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": ser(self.kernel_initializer),
            "bias_initializer": ser(self.bias_initializer),
            "kernel_regularizer": ser(self.kernel_regularizer),
            "bias_regularizer": ser(self.bias_regularizer),
            "activity_regularizer": ser(self.activity_regularizer),
            "kernel_constraint": ser(self.kernel_constraint),
            "bias_constraint": ser(self.bias_constraint),
            "implementation": self.implementation,
            "dilation_rate": self.dilation_rate,
        }


def _data_format(data_format: str | None, fn: str) -> str:
    # None means Keras's global setting, as in tf.keras 2 (conv_utils.normalize_data_format).
    value = keras.config.image_data_format() if data_format is None else data_format
    if not isinstance(value, str) or value.lower() not in ("channels_last", "channels_first"):
        fail(fn, "data_format", "None, 'channels_last' or 'channels_first'", repr(data_format))
    return value.lower()


def _implementation(implementation: Any, layer: _LocallyConnected, fn: str) -> int:
    """1, 2 or 3; 2 and 3 only with tf.keras 2's geometry (no dilation, valid/same)."""
    if implementation not in (1, 2, 3) or isinstance(implementation, bool):
        fail(fn, "implementation", "1, 2 or 3 (tf.keras 2's weight layouts)", repr(implementation))
    keras_only = layer.padding in _KERAS_PADDINGS and layer.dilation_rate == (1,) * layer.rank
    if implementation != 1 and not keras_only:
        got = f"padding={layer.padding!r}, dilation_rate={layer.dilation_rate}"
        hint = "Explicit or causal padding and dilation need implementation=1."
        expected = f"used with padding 'valid' or 'same' and no dilation at {implementation}"
        fail(fn, "implementation", expected, got, hint=hint)
    return int(implementation)


_CLASS_DOC = """Keras 3 {name}: tf.keras 2's layer, computed by jlocalconv on JAX.

    Each output position has its own ``filters`` filters over its {window} window (a
    convolution without weight sharing). The constructor is tf.keras 2's, and the weights
    are created with tf.keras 2's names, shapes and order, so ``keras.saving.load_model``
    (with ``custom_objects=jlocalconv.keras.custom_objects()``) and ``model.load_weights``
    fill them from a tf.keras 2 file.{extra}

    Args:
      filters: the number of output channels.
      kernel_size: the window, an int or {rank} ints.
      strides: the window strides, an int or {rank} ints.
      padding: tf.keras 2's ``"valid"`` or ``"same"`` (Keras 2's alignment: ``k // 2`` zeros
        first, see :func:`jlocalconv.keras.converters.keras_padding`; with every implementation,
        where tf.keras 2 allowed it only with 2 and 3); jlocalconv's additions with
        ``implementation=1``: {causal}an int, {rank} ints, or {rank} ``(low, high)`` pairs.
      data_format: ``"channels_last"`` or ``"channels_first"``; None means
        ``keras.config.image_data_format()``.
      activation: a Keras 3 activation (name or callable); None is the identity.
      use_bias: whether to add the per-position bias ``(*output_shape, filters)``.
      kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer,
        activity_regularizer, kernel_constraint, bias_constraint: as in Keras.
      implementation: tf.keras 2's weight layout: 1 ``(output_items, feature_dim,
        filters)``, jlocalconv's own and the fastest; 2 the dense masked kernel; 3 the
        sparse non-zero values (2 and 3 exist to load old files; their weights are gathered
        into layout 1 inside the computation).
      dilation_rate: jlocalconv's addition, the kernel dilation (``implementation=1``).
      **kwargs: Keras's layer arguments (``name``, ``dtype``, ``trainable``, ...).

    Raises:
      RuntimeError: on a Keras backend other than JAX (set ``KERAS_BACKEND=jax``).
      ValueError / TypeError: for a bad argument, naming it (at construction, or at build
        for one that depends on the input shape).

    Example:
      >>> import os; os.environ.setdefault("KERAS_BACKEND", "jax")
      'jax'
      >>> import keras, numpy as np
      >>> from jlocalconv.keras import {name}
      >>> layer = {name}(4, {example_window}, implementation=2)
      >>> layer(np.zeros({example_input}, np.float32)).shape
      {example_output}
      >>> [(w.name, w.shape) for w in layer.weights]
      {example_weights}
    """


# Per rank: the docstring's extra sentence, its padding modes and its example
# (window, input shape, output shape, implementation 2's weights).
_DOC_PARTS = {
    1: ("", '``"causal"``, ', "3", "(2, 10, 3)", "(2, 8, 4)", "(10, 3, 8, 4)", "(8, 4)"),
    2: ("", "", "(3, 3)", "(2, 6, 5, 3)", "(2, 4, 3, 4)", "(6, 5, 3, 4, 3, 4)", "(4, 3, 4)"),
    3: (
        " tf.keras 2 had no 3-D layer: this one is jlocalconv's, with the 2-D layer's"
        "\n    weight layouts extended to three spatial dims.",
        "",
        "2",
        "(2, 3, 4, 4, 1)",
        "(2, 2, 3, 3, 4)",
        "(3, 4, 4, 1, 2, 3, 3, 4)",
        "(2, 3, 3, 4)",
    ),
}


def _layer_class(rank: int) -> type[_LocallyConnected]:
    """The registered ``LocallyConnected{rank}D`` class with its docstring."""
    name = f"LocallyConnected{rank}D"
    cls = type(name, (_LocallyConnected,), {"rank": rank, "__module__": __name__})
    extra, causal, window, x, y, kernel, bias = _DOC_PARTS[rank]
    cls.__doc__ = _CLASS_DOC.format(
        name=name,
        rank=rank,
        window=f"{rank}-D",
        extra=extra,
        causal=causal,
        example_window=window,
        example_input=x,
        example_output=y,
        example_weights=f"[('kernel', {kernel}), ('bias', {bias})]",
    )
    return keras.saving.register_keras_serializable(package=_PACKAGE, name=name)(cls)


LocallyConnected1D = _layer_class(1)
LocallyConnected2D = _layer_class(2)
LocallyConnected3D = _layer_class(3)


def custom_objects() -> dict[str, type[_LocallyConnected]]:
    """The classes under tf.keras 2's names, for Keras 3's loaders of tf.keras 2 files.

    Returns:
      ``{"LocallyConnected1D": ..., "LocallyConnected2D": ..., "LocallyConnected3D": ...}``,
      for ``keras.saving.load_model(path, custom_objects=...)`` (a ``.keras`` file saved
      by Keras 3 needs none: the classes are registered as ``jlocalconv>...``).

    Example:
      >>> from jlocalconv.keras import custom_objects
      >>> sorted(custom_objects())
      ['LocallyConnected1D', 'LocallyConnected2D', 'LocallyConnected3D']
    """
    return {
        cls.__name__: cls for cls in (LocallyConnected1D, LocallyConnected2D, LocallyConnected3D)
    }


__all__ = ["LocallyConnected1D", "LocallyConnected2D", "LocallyConnected3D", "custom_objects"]
