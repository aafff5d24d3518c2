"""Flax Linen layers: values against the reference, shapes, transforms, training, Keras."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("flax")
optax = pytest.importorskip("optax")

import layer_helpers as lh  # noqa: E402
from cases import CASES  # noqa: E402

import jlocalconv  # noqa: E402
from jlocalconv.linen import (  # noqa: E402
    LocallyConnected1D,
    LocallyConnected2D,
    LocallyConnected3D,
)

CLASSES = {1: LocallyConnected1D, 2: LocallyConnected2D, 3: LocallyConnected3D}
NORMAL = jax.nn.initializers.normal(1.0)


def build(case, **overrides):
    kwargs = lh.layer_kwargs(case)
    del kwargs["in_features"], kwargs["input_shape"]
    return CLASSES[len(case.spatial)](**{**kwargs, "bias_init": NORMAL, **overrides})


@pytest.mark.parametrize("index", range(len(CASES)), ids=[str(c) for c in CASES])
def test_matches_reference_and_functional_call(index):
    case, activation = CASES[index], lh.activation_for(index)
    layer = build(case, activation=activation)
    x = jnp.asarray(lh.inputs(case))
    variables = layer.init(jax.random.key(0), x)
    params = variables["params"]
    assert params["kernel"].shape == jlocalconv.kernel_shape(
        x.shape,
        case.filters,
        case.kernel_size,
        case.strides,
        case.padding,
        case.dil,
        case.data_format,
    )
    y = layer.apply(variables, x)
    bias = params.get("bias")
    assert (bias is None) == (case.bias is None)
    want = lh.expected(case, np.asarray(x), np.asarray(params["kernel"]), bias, activation)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("padding", "strides", "out"), lh.PADDING_SHAPES)
def test_output_shape_for_every_padding(padding, strides, out):
    layer = LocallyConnected1D(4, 3, strides=strides, padding=padding)
    y, variables = layer.init_with_output(jax.random.key(0), jnp.ones((3, 10, 2)))
    assert y.shape == (3, *out, 4)
    shapes = jax.tree.map(jnp.shape, variables["params"])
    assert shapes == {"kernel": (out[0], 6, 4), "bias": (*out, 4)}


def test_jit_vmap_grad():
    case = CASES[6]  # 2-D channels_first, strided, per-position bias
    layer = build(case, activation="tanh")
    x = jnp.asarray(lh.inputs(case))
    variables = layer.init(jax.random.key(0), x)
    y = layer.apply(variables, x)
    np.testing.assert_allclose(jax.jit(layer.apply)(variables, x), y, rtol=1e-6, atol=1e-6)
    per_example = jax.vmap(layer.apply, in_axes=(None, 0))(variables, x)
    np.testing.assert_allclose(per_example, y, rtol=1e-6, atol=1e-6)

    grads = jax.grad(lambda v: (layer.apply(v, x) ** 2).sum())(variables)["params"]

    functional_loss = lh.functional_tanh_loss(case, x)

    p = variables["params"]
    gk, gb = jax.grad(functional_loss, (0, 1))(p["kernel"], p["bias"])
    np.testing.assert_allclose(grads["kernel"], gk, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads["bias"], gb, rtol=1e-5, atol=1e-5)


def test_no_bias_params_have_kernel_only():
    variables = build(CASES[0]).init(jax.random.key(0), jnp.asarray(lh.inputs(CASES[0])))
    assert set(variables["params"]) == {"kernel"}


def test_optax_steps_reduce_loss():
    case = CASES[5]
    x = lh.training_inputs(case)
    layer = build(case, activation="tanh", bias_init="zeros")
    teacher = build(case, activation="tanh").init(jax.random.key(1), x)
    target = layer.apply(teacher, x)
    params = layer.init(jax.random.key(0), x)
    tx = optax.adam(3e-2)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: ((layer.apply(p, x) - target) ** 2).mean())(
            params
        )
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(30):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.3 * losses[0], losses


def test_default_init_variance_ignores_output_size():
    variables = LocallyConnected2D(32, 3).init(jax.random.key(0), jnp.ones((1, 34, 34, 8)))
    lh.assert_default_init_variance(variables["params"]["kernel"])


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        (dict(filters=0), "filters"),
        (dict(activation="relu7"), "activation"),
        (dict(kernel_init="glorot"), "kernel_init"),
        (dict(kernel_size=(3, 3, 3)), "kernel_size"),
        (dict(padding="full"), "padding"),
        (dict(data_format="NHWC"), "data_format"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, arg):
    layer = LocallyConnected2D(**{"filters": 4, "kernel_size": 3, **kwargs})
    with pytest.raises((ValueError, TypeError), match=f"LocallyConnected2D: `{arg}`"):
        layer.init(jax.random.key(0), jnp.ones((2, 8, 8, 3)))


def test_zero_channels_names_the_inputs():
    with pytest.raises(ValueError, match=r"`inputs` must be of at least one channel"):
        LocallyConnected2D(4, 3).init(jax.random.key(0), jnp.ones((2, 8, 8, 0)))


def test_rank_too_small_is_an_error():
    with pytest.raises(ValueError, match=r"LocallyConnected2D: `inputs` must be of rank >= 3"):
        LocallyConnected2D(4, 3).init(jax.random.key(0), jnp.ones((8, 8)))


@pytest.mark.parametrize("index", range(len(lh.KERAS_LIKE)))
def test_from_keras_hand_built_layer(index):
    case, keras = lh.hand_keras_case(index)
    module, variables = CLASSES[len(case.spatial)].from_keras(keras)
    x = lh.inputs(case)
    np.testing.assert_allclose(module.apply(variables, x), keras.apply(x), rtol=1e-5, atol=1e-5)
    # init reproduces Keras's weights too.
    init = module.init(jax.random.key(0), x)
    np.testing.assert_array_equal(init["params"]["kernel"], variables["params"]["kernel"])


def test_keras_fixtures_reproduce_keras():
    for keras, x, want in lh.keras_fixtures():
        module, variables = CLASSES[len(keras.input_shape)].from_keras(keras)
        np.testing.assert_allclose(module.apply(variables, x), want, rtol=1e-5, atol=1e-5)
