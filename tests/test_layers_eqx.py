"""Equinox layers: values against the reference, shapes, transforms, training, Keras."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

eqx = pytest.importorskip("equinox")
optax = pytest.importorskip("optax")

import layer_helpers as lh  # noqa: E402
from cases import CASES, CF, CL  # noqa: E402

from jlocalconv.eqx import LocallyConnected1D, LocallyConnected2D, LocallyConnected3D  # noqa: E402

CLASSES = {1: LocallyConnected1D, 2: LocallyConnected2D, 3: LocallyConnected3D}
NORMAL = jax.nn.initializers.normal(1.0)


def build(case, seed=0, **overrides):
    kwargs = {**lh.layer_kwargs(case), "bias_init": NORMAL, **overrides}
    return CLASSES[len(case.spatial)](**kwargs, key=jax.random.key(seed))


@pytest.mark.parametrize("index", range(len(CASES)), ids=[str(c) for c in CASES])
def test_matches_reference_one_example_at_a_time(index):
    case, activation = CASES[index], lh.activation_for(index)
    layer = build(case, activation=activation)
    x = lh.inputs(case)
    y = jax.vmap(layer)(jnp.asarray(x))
    want = lh.expected(case, x, np.asarray(layer.kernel), layer.bias, activation)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer(jnp.asarray(x[0])), want[0], rtol=1e-5, atol=1e-5)


def test_channels_first_is_the_default():
    layer = LocallyConnected2D(3, 4, (3, 2), input_shape=(6, 5), key=jax.random.key(0))
    assert layer.spec.geometry.data_format == CF
    assert layer(jnp.ones((3, 6, 5))).shape == (4, 4, 4)


@pytest.mark.parametrize(("padding", "strides", "out"), lh.PADDING_SHAPES)
def test_output_shape_for_every_padding(padding, strides, out):
    layer = LocallyConnected1D(
        2, 4, 3, input_shape=(10,), strides=strides, padding=padding, key=jax.random.key(0)
    )
    assert layer.output_shape == out
    assert layer.kernel.shape == (out[0], 6, 4) and layer.bias.shape == (*out, 4)
    assert layer(jnp.ones((2, 10))).shape == (4, *out)


def test_batched_input_is_an_error_that_says_vmap():
    layer = LocallyConnected1D(2, 4, 3, input_shape=(10,), key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"`inputs` must be of shape \(2, 10\).*jax.vmap"):
        layer(jnp.ones((5, 2, 10)))


def test_wrong_shape_error_mentions_no_batch():
    layer = LocallyConnected1D(2, 4, 3, input_shape=(10,), key=jax.random.key(0))
    with pytest.raises(
        ValueError, match=r"`inputs` must be of shape \(2, 10\); got shape \(2, 9\)"
    ):
        layer(jnp.ones((2, 9)))


def test_filter_jit_filter_grad_vmap():
    case = CASES[6]  # 2-D channels_first, strided, per-position bias
    layer = build(case, activation="tanh")
    x = jnp.asarray(lh.inputs(case))
    y = jax.vmap(layer)(x)
    jitted = eqx.filter_jit(lambda m, v: jax.vmap(m)(v))(layer, x)
    np.testing.assert_allclose(jitted, y, rtol=1e-6, atol=1e-6)

    grads = eqx.filter_grad(lambda m: (jax.vmap(m)(x) ** 2).sum())(layer)

    functional_loss = lh.functional_tanh_loss(case, x)

    gk, gb = jax.grad(functional_loss, (0, 1))(layer.kernel, layer.bias)
    np.testing.assert_allclose(grads.kernel, gk, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads.bias, gb, rtol=1e-5, atol=1e-5)


def test_trainable_leaves_are_kernel_and_bias():
    layer = build(CASES[1])
    leaves = jax.tree.leaves(eqx.filter(layer, eqx.is_array))
    assert [leaf.shape for leaf in leaves] == [layer.kernel.shape, layer.bias.shape]
    no_bias = build(CASES[0])
    assert no_bias.bias is None
    assert len(jax.tree.leaves(eqx.filter(no_bias, eqx.is_array))) == 1


def test_optax_steps_reduce_loss():
    case = CASES[6]
    x = lh.training_inputs(case)
    target = jax.vmap(build(case, seed=1, activation="tanh"))(x)
    model = build(case, seed=0, activation="tanh", bias_init="zeros")
    tx = optax.adam(3e-2)
    opt_state = tx.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, opt_state):
        loss, grads = eqx.filter_value_and_grad(lambda m: ((jax.vmap(m)(x) - target) ** 2).mean())(
            model
        )
        updates, opt_state = tx.update(grads, opt_state)
        return eqx.apply_updates(model, updates), opt_state, loss

    losses = []
    for _ in range(30):
        model, opt_state, loss = step(model, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.3 * losses[0], losses


def test_default_init_variance_ignores_output_size():
    layer = LocallyConnected2D(8, 32, 3, input_shape=(34, 34), key=jax.random.key(0))
    lh.assert_default_init_variance(layer.kernel)


def test_dtype_is_the_parameter_dtype():
    layer = LocallyConnected1D(2, 3, 3, input_shape=(8,), dtype=jnp.bfloat16, key=jax.random.key(0))
    assert layer.kernel.dtype == jnp.bfloat16 and layer.bias.dtype == jnp.bfloat16
    assert layer(jnp.ones((2, 8), jnp.bfloat16)).dtype == jnp.bfloat16


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        (dict(input_shape=(3, 8, 8)), "input_shape"),
        (dict(in_features=-1), "in_features"),
        (dict(activation=3), "activation"),
        (dict(bias_init="uniform"), "bias_init"),
        (dict(strides=0), "strides"),
        (dict(use_bias="yes"), "use_bias"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, arg):
    base = dict(in_features=3, filters=4, kernel_size=3, input_shape=(8, 8))
    with pytest.raises((ValueError, TypeError), match=f"LocallyConnected2D: `{arg}`"):
        LocallyConnected2D(**{**base, **kwargs}, key=jax.random.key(0))


def _keras_through_eqx(keras, x):
    """Keras's (batch, ...) inputs in Keras's format -> eqx layer outputs in Keras's format."""
    layer = CLASSES[len(keras.input_shape)].from_keras(keras)
    assert layer.spec.geometry.data_format == CF
    if keras.config["data_format"] == CL:
        return np.moveaxis(np.asarray(jax.vmap(layer)(np.moveaxis(x, -1, 1))), 1, -1)
    return np.asarray(jax.vmap(layer)(x))


@pytest.mark.parametrize("index", range(len(lh.KERAS_LIKE)))
def test_from_keras_hand_built_layer(index):
    case, keras = lh.hand_keras_case(index)
    x = lh.inputs(case)
    np.testing.assert_allclose(_keras_through_eqx(keras, x), keras.apply(x), rtol=1e-5, atol=1e-5)


def test_from_keras_can_keep_channels_last():
    case = lh.KERAS_LIKE[0]
    assert case.data_format == CL
    keras = lh.hand_keras_layer(case, activation="relu", use_bias=True)
    layer = CLASSES[len(case.spatial)].from_keras(keras, data_format=CL)
    np.testing.assert_array_equal(layer.kernel, keras.kernel)
    x = lh.inputs(case)
    np.testing.assert_allclose(jax.vmap(layer)(x), keras.apply(x), rtol=1e-5, atol=1e-5)


def test_keras_fixtures_reproduce_keras():
    for keras, x, want in lh.keras_fixtures():
        np.testing.assert_allclose(_keras_through_eqx(keras, x), want, rtol=1e-5, atol=1e-5)
