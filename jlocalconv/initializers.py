"""Kernel initialisers for locally connected kernels ``(output_items, feature_dim, filters)``.

Each output unit of a locally connected layer sees ``feature_dim = prod(kernel_size) *
channels_in`` inputs and feeds ``filters`` outputs, exactly like a convolution: the
output-position axis only says *which* independent filter bank a weight belongs to. The
initialisers here therefore treat axis 0 as a batch axis, so

    fan_in = feature_dim,    fan_out = filters

and the scale of the initial kernel does not depend on the size of the output.
:data:`default_kernel_init` is :func:`glorot_uniform` with these fans, i.e. uniform with
variance ``2 / (feature_dim + filters)``.

tf.keras's ``glorot_uniform`` (the LocallyConnected1D/2D default) and Flax's
``ConvLocal`` default (``lecun_normal``) count the positions into the fan:
``fan_in = output_items * feature_dim`` and ``fan_out = output_items * filters``, which
shrinks the initial weights (and activations) by a factor ``output_items`` in variance as
the output grows. :func:`keras_glorot_uniform` and :func:`flax_conv_local_default`
reproduce those distributions for users who want them. Every initialiser is a plain
``jax.nn.initializers`` function ``init(key, shape, dtype) -> array`` and works for any
framework; :func:`get` also resolves them by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from jax.nn import initializers as jinit

from jlocalconv._errors import fail

Initializer = jinit.Initializer
_Mode = Literal["fan_in", "fan_out", "fan_avg"]
_Distribution = Literal["truncated_normal", "normal", "uniform"]

# Kernel axes in jlocalconv's (Keras's) layout.
_POSITIONS, _FEATURES, _FILTERS = 0, 1, 2


def _per_position(scale: float, mode: _Mode, distribution: _Distribution) -> Initializer:
    return jinit.variance_scaling(
        scale, mode, distribution, in_axis=_FEATURES, out_axis=_FILTERS, batch_axis=_POSITIONS
    )


def _positions_in_fan(scale: float, mode: _Mode, distribution: _Distribution) -> Initializer:
    # No batch axis: jax counts axis 0 as a "receptive field", multiplying both fans by it,
    # which is what Keras's _compute_fans does for a rank-3 kernel.
    return jinit.variance_scaling(scale, mode, distribution, in_axis=_FEATURES, out_axis=_FILTERS)


def glorot_uniform() -> Initializer:
    """Uniform, variance ``2 / (feature_dim + filters)`` (per-position fans; the default).

    Example:
      >>> import jax, jlocalconv.initializers as ini
      >>> k = ini.glorot_uniform()(jax.random.key(0), (100, 27, 16))
      >>> bool(abs(k).max() <= (6 / (27 + 16)) ** 0.5)
      True
    """
    return _per_position(1.0, "fan_avg", "uniform")


def glorot_normal() -> Initializer:
    """Truncated normal, variance ``2 / (feature_dim + filters)`` (per-position fans)."""
    return _per_position(1.0, "fan_avg", "truncated_normal")


def lecun_uniform() -> Initializer:
    """Uniform, variance ``1 / feature_dim`` (per-position fans)."""
    return _per_position(1.0, "fan_in", "uniform")


def lecun_normal() -> Initializer:
    """Truncated normal, variance ``1 / feature_dim`` (per-position fans)."""
    return _per_position(1.0, "fan_in", "truncated_normal")


def he_uniform() -> Initializer:
    """Uniform, variance ``2 / feature_dim`` (per-position fans; for ReLU nets)."""
    return _per_position(2.0, "fan_in", "uniform")


def he_normal() -> Initializer:
    """Truncated normal, variance ``2 / feature_dim`` (per-position fans; for ReLU nets)."""
    return _per_position(2.0, "fan_in", "truncated_normal")


def keras_glorot_uniform() -> Initializer:
    """tf.keras's LocallyConnected default: variance ``2 / (items * (feature_dim + filters))``.

    ``items = output_items``: Keras's ``glorot_uniform`` on a ``(output_items, feature_dim,
    filters)`` kernel counts the positions into both fans. Same distribution as Keras, not
    the same random numbers.
    """
    return _positions_in_fan(1.0, "fan_avg", "uniform")


def flax_conv_local_default() -> Initializer:
    """Flax ``ConvLocal``'s default (lecun_normal): variance ``1 / (items * feature_dim)``.

    ``items = output_items``. Truncated normal, as Flax's ``lecun_normal`` on ConvLocal's
    ``(*output_shape, feature_dim, filters)`` kernel, whose leading axes count into the fan.
    """
    return _positions_in_fan(1.0, "fan_in", "truncated_normal")


default_kernel_init: Initializer = glorot_uniform()
zeros: Initializer = jinit.zeros
ones: Initializer = jinit.ones

_BY_NAME: dict[str, Callable[[], Initializer]] = {
    "default": glorot_uniform,
    "glorot_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "lecun_uniform": lecun_uniform,
    "lecun_normal": lecun_normal,
    "he_uniform": he_uniform,
    "he_normal": he_normal,
    "keras_glorot_uniform": keras_glorot_uniform,
    "flax_conv_local_default": flax_conv_local_default,
    "zeros": lambda: zeros,
    "ones": lambda: ones,
}


def get(
    identifier: str | Initializer, fn: str = "jlocalconv", arg: str = "kernel_init"
) -> Initializer:
    """Resolves an initialiser given by name (see the module docstring) or as a callable.

    The plain names (``"glorot_uniform"``, ``"he_normal"``, ...) use the per-position fans;
    ``"keras_glorot_uniform"`` and ``"flax_conv_local_default"`` count the positions in.

    Args:
      identifier: a name from :func:`names` or a callable ``init(key, shape, dtype)``.
      fn, arg: the public function and argument to name in error messages.

    Returns:
      The initialiser.

    Raises:
      ValueError: for an unknown name. TypeError: for a non-callable.

    Example:
      >>> import jax, jlocalconv.initializers as ini
      >>> ini.get("keras_glorot_uniform")(jax.random.key(0), (4, 9, 2)).shape
      (4, 9, 2)
    """
    if isinstance(identifier, str):
        factory = _BY_NAME.get(identifier.lower())
        if factory is None:
            fail(fn, arg, f"a callable or one of {names()}", repr(identifier))
        return factory()
    if not callable(identifier):
        fail(fn, arg, f"a callable or one of {names()}", identifier, exc=TypeError)
    return identifier


def names() -> tuple[str, ...]:
    """Every name :func:`get` accepts."""
    return tuple(_BY_NAME)


__all__ = [
    "Initializer",
    "default_kernel_init",
    "flax_conv_local_default",
    "get",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "keras_glorot_uniform",
    "lecun_normal",
    "lecun_uniform",
    "names",
    "ones",
    "zeros",
]
