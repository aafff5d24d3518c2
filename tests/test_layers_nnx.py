"""Flax NNX layers: values against the reference, shapes, transforms, state, training, Keras."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("flax")
optax = pytest.importorskip("optax")

import layer_helpers as lh  # noqa: E402
from cases import CASES  # noqa: E402
from flax import nnx  # noqa: E402

import jlocalconv  # noqa: E402
from jlocalconv.nnx import LocallyConnected1D, LocallyConnected2D, LocallyConnected3D  # noqa: E402

CLASSES = {1: LocallyConnected1D, 2: LocallyConnected2D, 3: LocallyConnected3D}
NORMAL = jax.nn.initializers.normal(1.0)


def build(case, seed=0, **overrides):
    kwargs = {**lh.layer_kwargs(case), "bias_init": NORMAL, **overrides}
    return CLASSES[len(case.spatial)](**kwargs, rngs=nnx.Rngs(seed))


@pytest.mark.parametrize("index", range(len(CASES)), ids=[str(c) for c in CASES])
def test_matches_reference_and_functional_call(index):
    case, activation = CASES[index], lh.activation_for(index)
    layer = build(case, activation=activation)
    x = lh.inputs(case)
    y = layer(jnp.asarray(x))
    bias = None if layer.bias is None else np.asarray(layer.bias[...])
    want = lh.expected(case, x, np.asarray(layer.kernel[...]), bias, activation)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    functional = jlocalconv.local_conv(
        x,
        layer.kernel[...],
        case.kernel_size,
        case.strides,
        None,
        case.data_format,
        bias=bias,
        **case.kwargs(),
    )
    act = lh.NP_ACTIVATIONS[activation] if activation != "tanh" else jnp.tanh
    np.testing.assert_allclose(y, act(functional), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("padding", "strides", "out"), lh.PADDING_SHAPES)
def test_output_shape_for_every_padding(padding, strides, out):
    layer = LocallyConnected1D(
        2, 4, 3, input_shape=(10,), strides=strides, padding=padding, rngs=nnx.Rngs(0)
    )
    assert layer.output_shape == out
    assert layer.kernel.shape == (out[0], 6, 4) and layer.bias.shape == (*out, 4)
    assert layer(jnp.ones((3, 10, 2))).shape == (3, *out, 4)


def test_lazy_attribute_access():
    assert jlocalconv.nnx.LocallyConnected2D is LocallyConnected2D


def test_batch_dims_any_number_including_none():
    layer = build(CASES[5], activation="relu")
    x = jnp.asarray(lh.inputs(CASES[5]))
    y = layer(x)
    np.testing.assert_allclose(layer(x[0]), y[0], rtol=1e-6, atol=1e-6)
    stacked = layer(jnp.stack([x, 2 * x]))
    np.testing.assert_allclose(stacked[1], layer(2 * x), rtol=1e-6, atol=1e-6)


def test_jit_vmap_grad():
    case = CASES[6]  # 2-D channels_first, strided, per-position bias
    layer = build(case, activation="tanh")
    x = jnp.asarray(lh.inputs(case))
    y = layer(x)
    np.testing.assert_allclose(nnx.jit(lambda m, v: m(v))(layer, x), y, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(layer)(x), y, rtol=1e-6, atol=1e-6)

    grads = nnx.grad(lambda m: (m(x) ** 2).sum())(layer)

    functional_loss = lh.functional_tanh_loss(case, x)

    gk, gb = jax.grad(functional_loss, (0, 1))(layer.kernel[...], layer.bias[...])
    np.testing.assert_allclose(grads["kernel"][...], gk, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads["bias"][...], gb, rtol=1e-5, atol=1e-5)


def test_split_merge_and_state_round_trip():
    case = CASES[14]  # 3-D
    layer = build(case, activation="relu", use_bias=True)
    x = jnp.asarray(lh.inputs(case))
    graphdef, state = nnx.split(layer)
    assert set(nnx.to_pure_dict(state)) == {"kernel", "bias"}
    assert isinstance(layer.kernel, nnx.Param) and isinstance(layer.bias, nnx.Param)
    np.testing.assert_array_equal(nnx.merge(graphdef, state)(x), layer(x))

    other = build(case, seed=1, activation="relu", use_bias=True)
    assert not np.allclose(other(x), layer(x))
    pure = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
    _, other_state = nnx.split(other)
    nnx.replace_by_pure_dict(other_state, pure)
    nnx.update(other, other_state)
    np.testing.assert_array_equal(other(x), layer(x))


def test_no_bias_state_has_kernel_only():
    layer = build(CASES[0], use_bias=False)
    assert layer.bias is None
    _, state = nnx.split(layer)
    assert set(nnx.to_pure_dict(state)) == {"kernel"}


def test_optax_steps_reduce_loss():
    case = CASES[5]
    x = lh.training_inputs(case)
    target = build(case, seed=1, activation="tanh")(x)
    model = build(case, seed=0, activation="tanh", bias_init="zeros")
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: ((m(x) - target) ** 2).mean())(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(30)]
    assert losses[-1] < 0.3 * losses[0], losses


def test_default_init_variance_ignores_output_size():
    layer = LocallyConnected2D(8, 32, 3, input_shape=(34, 34), rngs=nnx.Rngs(0))
    lh.assert_default_init_variance(layer.kernel[...])
    assert np.all(np.asarray(layer.bias[...]) == 0)


def test_kernel_init_by_name_and_dtypes():
    layer = LocallyConnected1D(
        2,
        3,
        3,
        input_shape=(8,),
        kernel_init="keras_glorot_uniform",
        param_dtype=jnp.bfloat16,
        rngs=nnx.Rngs(0),
    )
    limit = np.sqrt(6 / (6 * (6 + 3)))  # fans counted over the 6 positions
    assert layer.kernel[...].dtype == jnp.bfloat16
    assert float(jnp.abs(layer.kernel[...].astype(jnp.float32)).max()) <= limit * 1.01
    assert layer(jnp.ones((2, 8, 2))).dtype == jnp.float32  # promoted with the f32 input
    compute = LocallyConnected1D(2, 3, 3, input_shape=(8,), dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert compute(jnp.ones((2, 8, 2))).dtype == jnp.bfloat16


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        (dict(input_shape=(8, 8, 3)), "input_shape"),
        (dict(in_features=0), "in_features"),
        (dict(filters=2.0), "filters"),
        (dict(activation="relu7"), "activation"),
        (dict(kernel_init="glorot"), "kernel_init"),
        (dict(kernel_size=(3, 3, 3)), "kernel_size"),
        (dict(padding="full"), "padding"),
        (dict(implementation="fast"), "implementation"),
        (dict(kernel_size=9), "kernel_size"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, arg):
    base = dict(in_features=3, filters=4, kernel_size=3, input_shape=(8, 8))
    with pytest.raises((ValueError, TypeError), match=f"LocallyConnected2D: `{arg}`"):
        LocallyConnected2D(**{**base, **kwargs}, rngs=nnx.Rngs(0))


def test_wrong_input_shape_is_an_error():
    layer = LocallyConnected2D(3, 4, 3, input_shape=(8, 8), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`inputs` must be of shape \(\*batch, 8, 8, 3\)"):
        layer(jnp.ones((2, 3, 8, 8)))


@pytest.mark.parametrize("index", range(len(lh.KERAS_LIKE)))
def test_from_keras_hand_built_layer(index):
    case, keras = lh.hand_keras_case(index)
    layer = CLASSES[len(case.spatial)].from_keras(keras)
    x = lh.inputs(case)
    np.testing.assert_allclose(layer(jnp.asarray(x)), keras.apply(x), rtol=1e-5, atol=1e-5)


def test_from_keras_rejects_wrong_rank():
    keras = lh.hand_keras_layer(lh.KERAS_LIKE[0], "relu", True)  # 1-D
    with pytest.raises(ValueError, match=r"LocallyConnected2D.from_keras: `layer` must be a 2-D"):
        LocallyConnected2D.from_keras(keras)


def test_keras_fixtures_reproduce_keras():
    for keras, x, want in lh.keras_fixtures():
        layer = CLASSES[len(keras.input_shape)].from_keras(keras)
        np.testing.assert_allclose(layer(jnp.asarray(x)), want, rtol=1e-5, atol=1e-5)
