"""Keras activation names: each against an independent NumPy formula of tf_keras's definition."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jlocalconv.keras.activations import KERAS_ACTIVATIONS, get_activation

X = np.linspace(-4.0, 4.0, 33)
_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805
_erf = np.vectorize(math.erf)


def _softplus(x):
    return np.log1p(np.exp(x))


# tf_keras 2 definitions (keras/activations.py, keras/backend.py).
NUMPY = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "tanh": np.tanh,
    "softmax": lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True),
    "softplus": _softplus,
    "softsign": lambda x: x / (1 + np.abs(x)),
    "elu": lambda x: np.where(x > 0, x, np.expm1(x)),
    "selu": lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(x)),
    "exponential": np.exp,
    "hard_sigmoid": lambda x: np.clip(0.2 * x + 0.5, 0, 1),
    "swish": lambda x: x / (1 + np.exp(-x)),
    "silu": lambda x: x / (1 + np.exp(-x)),
    "gelu": lambda x: 0.5 * x * (1 + _erf(x / np.sqrt(2))),
    "mish": lambda x: x * np.tanh(_softplus(x)),
}


def test_every_name_has_a_reference():
    assert set(NUMPY) == set(KERAS_ACTIVATIONS)


@pytest.mark.parametrize("name", sorted(NUMPY))
def test_matches_tf_keras_definition(name):
    got = get_activation(name.upper())(jnp.asarray(X, jnp.float32))
    np.testing.assert_allclose(got, NUMPY[name](X), rtol=1e-5, atol=1e-6)


def test_none_callable_and_errors():
    assert get_activation(None)(3.0) == 3.0
    assert get_activation(np.abs) is np.abs
    with pytest.raises(ValueError, match=r"L: `activation` must be None, a callable, or one of"):
        get_activation("relu7", "L")
    with pytest.raises(TypeError, match=r"`activation` must be None, a callable"):
        get_activation(1.0)
