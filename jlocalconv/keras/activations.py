"""Keras activation names -> JAX functions, with tf.keras 2 (tf_keras) semantics.

The one place that maps the ``activation`` strings stored in a tf.keras layer config
(``"linear"``, ``"relu"``, ...) to functions. The layers and :mod:`jlocalconv.keras_io`
share it, so a loaded Keras layer and a jlocalconv layer built from it apply the same
function. Where Keras 2 and ``jax.nn`` differ, Keras wins: ``gelu`` is the exact (erf)
form and ``hard_sigmoid`` is ``clip(0.2 * x + 0.5, 0, 1)``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jlocalconv._errors import fail

Activation = Callable[[jax.Array], jax.Array]


def linear(x: jax.Array) -> jax.Array:
    """The identity (Keras's ``"linear"``, also what ``activation=None`` means)."""
    return x


def _hard_sigmoid(x: jax.Array) -> jax.Array:
    # tf_keras.backend.hard_sigmoid; jax.nn.hard_sigmoid is relu6(x + 3) / 6, not this.
    return jnp.clip(0.2 * x + 0.5, 0.0, 1.0)


def _gelu(x: jax.Array) -> jax.Array:
    # tf_keras's gelu defaults to the exact erf form; jax.nn.gelu defaults to tanh's.
    return jax.nn.gelu(x, approximate=False)


def _mish(x: jax.Array) -> jax.Array:
    return x * jnp.tanh(jax.nn.softplus(x))


KERAS_ACTIVATIONS: dict[str, Activation] = {
    "linear": linear,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "softmax": jax.nn.softmax,  # over the last axis, as Keras (even for channels_first)
    "softplus": jax.nn.softplus,
    "softsign": jax.nn.soft_sign,
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "exponential": jnp.exp,
    "hard_sigmoid": _hard_sigmoid,
    "swish": jax.nn.silu,
    "silu": jax.nn.silu,
    "gelu": _gelu,
    "mish": _mish,
}


def get_activation(activation: str | Activation | None, fn: str = "jlocalconv") -> Activation:
    """Resolves ``None``, a callable or a Keras activation name to a function.

    Args:
      activation: ``None`` (the identity), any callable, or a name from
        ``KERAS_ACTIVATIONS`` (case-insensitive), e.g. ``"relu"``.
      fn: the public name to put in error messages.

    Returns:
      A function of one array.

    Raises:
      ValueError: for an unknown name.
      TypeError: for anything else that is not callable.

    Example:
      >>> import jax.numpy as jnp
      >>> from jlocalconv.keras.activations import get_activation
      >>> get_activation("relu")(jnp.array([-1.0, 2.0]))
      Array([0., 2.], dtype=float32)
    """
    if activation is None:
        return linear
    if isinstance(activation, str):
        found = KERAS_ACTIVATIONS.get(activation.lower())
        if found is None:
            known = ", ".join(sorted(KERAS_ACTIVATIONS))
            fail(fn, "activation", f"None, a callable, or one of: {known}", repr(activation))
        return found
    if not callable(activation):
        expected = "None, a callable, or a Keras activation name"
        fail(fn, "activation", expected, activation, exc=TypeError)
    return activation
