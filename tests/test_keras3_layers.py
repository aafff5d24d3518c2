"""jlocalconv.keras: Keras 3 LocallyConnected layers on JAX, against tf.keras 2's own files.

The fixtures in tests/fixtures/keras3/ were written by tf_keras (make_keras3_fixtures.py):
model files, weights-only files and the outputs tf_keras's ``predict`` returned. Nothing here
needs TensorFlow. conftest.py sets ``KERAS_BACKEND=jax`` before Keras is imported.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from reference import local_conv_ref

keras = pytest.importorskip("keras")
jk = pytest.importorskip("jlocalconv.keras.layers")

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "keras3"
NAMES = ["chain1d_last", "chain1d_first", "chain2d_last", "chain2d_first", "deep"]
CF = "channels_first"
LC = {1: jk.LocallyConnected1D, 2: jk.LocallyConnected2D}


def _recorded(name):
    saved = np.load(FIXTURES / f"{name}.npz")
    outputs = [saved[f"outputs_{i}"] for i in range(len(saved.files) - 1)]
    return saved["inputs"], outputs


def _predict(model, x):
    y = model.predict(x, verbose=0, batch_size=len(x))
    return y if isinstance(y, list) else [y]


def _assert_reproduces(model, name):
    x, expected = _recorded(name)
    got = _predict(model, x)
    assert len(got) == len(expected)
    for i, (y, want) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(y, want, rtol=0, atol=1e-5, err_msg=f"{name} output {i}")


def _lc(ndim, name, filters, kernel_size, **kwargs):
    return LC[ndim](filters, kernel_size, name=name, **kwargs)


# The architectures of make_keras3_fixtures.py, written again with the Keras 3 layers.
CHAINS = {
    "chain1d_last": (
        (11, 3),
        lambda: [
            _lc(1, "a", 4, 3, strides=2, activation="relu"),
            _lc(1, "b", 3, 2, padding="same", implementation=2, activation="tanh", use_bias=False),
            _lc(1, "c", 2, 3, strides=2, padding="same", implementation=3, activation="sigmoid"),
        ],
    ),
    "chain1d_first": (
        (2, 10),
        lambda: [
            _lc(1, "a", 3, 4, strides=3, padding="same", implementation=3, data_format=CF),
            _lc(1, "b", 2, 2, implementation=2, data_format=CF, activation="elu"),
            _lc(1, "c", 2, 2, data_format=CF, activation="softplus", use_bias=False),
        ],
    ),
    "chain2d_last": (
        (7, 6, 2),
        lambda: [
            _lc(2, "a", 3, (2, 3), strides=(2, 1), padding="same", implementation=2),
            _lc(2, "b", 2, 2, strides=(1, 2), implementation=3, activation="swish"),
            _lc(2, "c", 2, (2, 1), activation="gelu", use_bias=False),
        ],
    ),
    "chain2d_first": (
        (2, 7, 6),
        lambda: [
            _lc(2, "a", 3, (3, 2), strides=(2, 1), data_format=CF, activation="relu"),
            _lc(
                2, "b", 2, (2, 3), strides=(1, 2), padding="same", implementation=2, data_format=CF
            ),
            _lc(2, "c", 2, 2, padding="same", implementation=3, data_format=CF, use_bias=False),
        ],
    ),
}


def _rebuilt(name):
    """The fixture's architecture built in Keras 3 code, with fresh weights."""
    layers = keras.layers
    if name == "deep":
        return keras.Sequential(
            [
                keras.Input((16, 16, 3)),
                layers.Conv2D(4, 3, activation="relu"),
                layers.MaxPooling2D(3, strides=2, padding="same"),
                layers.Conv2D(4, 3, activation="relu"),
                jk.LocallyConnected2D(4, 3, activation="relu"),
                jk.LocallyConnected2D(4, 2, strides=2, implementation=2, activation="relu"),
                jk.LocallyConnected2D(3, 1, implementation=3, activation="relu"),
                layers.Flatten(),
                layers.Dense(8, activation="relu"),
                layers.Dropout(0.5),
                layers.Dense(5),
            ]
        )
    shape, make_layers = CHAINS[name]
    inputs = keras.Input(shape)
    outputs, x = [], inputs
    for layer in make_layers():
        x = layer(x)
        outputs.append(x)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("name", NAMES)
def test_load_model_reproduces_tf_keras(name):
    model = keras.saving.load_model(FIXTURES / f"{name}.h5", custom_objects=jk.custom_objects())
    ours = [layer for layer in model.layers if isinstance(layer, jk._LocallyConnected)]
    assert sorted({layer.implementation for layer in ours}) == [1, 2, 3]
    _assert_reproduces(model, name)


@pytest.mark.parametrize("name", NAMES)
def test_load_weights_into_a_rebuilt_architecture(name):
    model = _rebuilt(name)
    model.load_weights(FIXTURES / f"{name}_weights.h5")
    _assert_reproduces(model, name)


def test_fresh_weights_do_not_reproduce_the_fixture():
    # The comparison above can fail: the same architecture without tf_keras's weights.
    x, expected = _recorded("chain2d_first")
    assert not np.allclose(_predict(_rebuilt("chain2d_first"), x)[0], expected[0], atol=1e-2)


def test_keras_file_round_trip_is_bit_exact(tmp_path):
    model = keras.saving.load_model(
        FIXTURES / "chain2d_first.h5", custom_objects=jk.custom_objects()
    )
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")  # registered: no custom_objects
    for before, after in zip(model.weights, loaded.weights):
        assert before.path == after.path
        np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
    x, _ = _recorded("chain2d_first")
    for y, z in zip(_predict(model, x), _predict(loaded, x)):
        np.testing.assert_array_equal(y, z)
    assert [type(layer).__name__ for layer in loaded.layers[1:]] == ["LocallyConnected2D"] * 3


def test_config_round_trip_through_json():
    layer = jk.LocallyConnected2D(
        5,
        (3, 2),
        strides=(2, 1),
        padding=((2, 1), (0, 3)),
        data_format=CF,
        activation="relu",
        use_bias=False,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.3, seed=1),
        kernel_regularizer=keras.regularizers.L2(0.01),
        bias_constraint=keras.constraints.NonNeg(),
        dilation_rate=(1, 2),
        name="lc",
    )
    config = json.loads(json.dumps(layer.get_config()))
    again = jk.LocallyConnected2D.from_config(config)
    assert again.get_config() == layer.get_config()
    assert again.padding == ((2, 1), (0, 3)) and again.dilation_rate == (1, 2)
    assert again.kernel_initializer.stddev == 0.3 and again.kernel_regularizer.l2 == 0.01


def test_fit_on_digits_lowers_the_loss():
    from jlocalconv._demo import digits_split

    data = digits_split()
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            jk.LocallyConnected2D(8, 3, activation="relu"),
            jk.LocallyConnected2D(8, 2, strides=2, implementation=2, activation="relu"),
            jk.LocallyConnected2D(4, 1, padding="same", implementation=3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss)
    x, y = data.x_train[:512], data.y_train[:512]
    before = [np.asarray(w) for w in model.weights]
    first = model.evaluate(x, y, verbose=0, batch_size=128)
    model.fit(x, y, epochs=4, batch_size=64, verbose=0)  # 32 steps
    last = model.evaluate(x, y, verbose=0, batch_size=128)
    # tf.keras 2's glorot fans count every position, so the start is slow (logits ~ 0).
    assert last < 0.8 * first, (first, last)
    changed = [not np.array_equal(b, np.asarray(w)) for b, w in zip(before, model.weights)]
    assert all(changed), [w.path for w, c in zip(model.weights, changed) if not c]


def test_implementation_2_masked_weights_get_no_gradient():
    # tf.keras 2 masks the dense kernel: its unconnected entries never influence the output.
    layer = jk.LocallyConnected1D(2, 3, strides=2, implementation=2)
    x = np.random.default_rng(0).standard_normal((2, 9, 3)).astype(np.float32)
    layer.build(x.shape)
    kernel, bias = (np.asarray(w) for w in layer.weights)

    def loss(kernel):
        y, _ = layer.stateless_call([kernel, bias], [], x)
        return (y**2).sum()

    grad = np.asarray(jax.grad(loss)(kernel))
    mask = np.zeros((9, 4), bool)  # (input step, output step): window o covers 2o..2o+2
    for o in range(4):
        mask[2 * o : 2 * o + 3, o] = True
    assert (grad[~mask[:, None, :].repeat(3, 1)] == 0).all()
    assert (grad[mask[:, None, :].repeat(3, 1)] != 0).all()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(padding=((2, 1), (0, 3)), dilation_rate=(2, 1), data_format=CF),
        dict(padding="same", dilation_rate=2, strides=(2, 1)),
        dict(padding=1, strides=2),
    ],
)
def test_jlocalconv_keywords_against_the_reference(kwargs):
    layer = jk.LocallyConnected2D(3, (3, 2), bias_initializer="random_normal", **kwargs)
    cf = kwargs.get("data_format") == CF
    x = np.random.default_rng(1).standard_normal((2, 2, 9, 8) if cf else (2, 9, 8, 2))
    x = x.astype(np.float32)
    y = np.asarray(layer(x))
    kernel, bias = (np.asarray(w, np.float64) for w in layer.weights)
    if cf:  # tf.keras 2 adds the stored (*out, F) bias reshaped (not transposed) to (F, *out)
        bias = np.moveaxis(bias.reshape(3, *bias.shape[:-1]), 0, -1)
    pads = layer._pads(layer.input_spatial_shape)
    fmt = CF if cf else "channels_last"
    want = local_conv_ref(x, kernel, (3, 2), layer.strides, fmt, pads, layer.dilation_rate, bias)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    if kwargs.get("padding") == "same":  # Keras 2's alignment: k // 2 first, on the extent
        assert pads == ((2, 2), (1, 1))


def test_causal_1d():
    layer = jk.LocallyConnected1D(2, 3, padding="causal", dilation_rate=2)
    x = np.random.default_rng(2).standard_normal((2, 7, 3)).astype(np.float32)
    y = np.asarray(layer(x))
    kernel, bias = (np.asarray(w) for w in layer.weights)
    want = local_conv_ref(x, kernel, (3,), (1,), padding="causal", dilation=(2,), bias=bias)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    assert y.shape == (2, 7, 2)


@pytest.mark.parametrize(
    "make, exc, words",
    [
        (lambda: jk.LocallyConnected2D(2, 3, implementation=4), ValueError, ["implementation"]),
        (
            lambda: jk.LocallyConnected2D(2, 3, dilation_rate=2, implementation=3),
            ValueError,
            ["implementation", "dilation_rate=(2, 2)", "implementation=1"],
        ),
        (
            lambda: jk.LocallyConnected1D(2, 3, padding="causal", implementation=2),
            ValueError,
            ["implementation", "padding='causal'"],
        ),
        (lambda: jk.LocallyConnected2D(2, 3, padding="causal"), ValueError, ["padding", "1D"]),
        (lambda: jk.LocallyConnected2D(2, 3, padding="full"), ValueError, ["padding", "'full'"]),
        (lambda: jk.LocallyConnected2D(2, (3, 3, 3)), ValueError, ["kernel_size", "length 3"]),
        (lambda: jk.LocallyConnected2D(0, 3), ValueError, ["filters", "(0,)"]),
        (lambda: jk.LocallyConnected2D(2, 3, data_format="NHWC"), ValueError, ["data_format"]),
    ],
)
def test_bad_arguments_name_the_layer_and_argument(make, exc, words):
    with pytest.raises(exc) as info:
        make()
    message = str(info.value)
    assert message.startswith("LocallyConnected")
    for word in words:
        assert word in message


def test_unknown_spatial_size_fails_at_build():
    with pytest.raises(ValueError, match=r"LocallyConnected2D: `inputs` must be of fully defined"):
        jk.LocallyConnected2D(2, 3)(keras.Input((None, 5, 3)))


def _run(code, **env):
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_non_jax_backend_fails_at_construction():
    code = (
        "import keras, jlocalconv.keras as jk\n"
        "assert keras.backend.backend() == 'numpy'\n"
        "try:\n"
        "    jk.LocallyConnected2D(2, 3)\n"
        "except RuntimeError as e:\n"
        "    print(e)\n"
    )
    proc = _run(code, KERAS_BACKEND="numpy")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "LocallyConnected2D: `KERAS_BACKEND` must be \"jax\"; got 'numpy'" in proc.stdout
    assert "KERAS_BACKEND=jax" in proc.stdout


BLOCK_KERAS = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "keras" or name.startswith("keras."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
sys.meta_path.insert(0, Block())
"""


def test_core_imports_without_keras():
    code = BLOCK_KERAS + (
        "import jlocalconv, jlocalconv.keras, jlocalconv.layout\n"
        "import jax.numpy as jnp\n"
        "x = jnp.ones((1, 4, 4, 1)); k = jnp.ones(jlocalconv.kernel_shape(x.shape, 2, 3))\n"
        "assert jlocalconv.local_conv2d(x, k, 3, 1).shape == (1, 2, 2, 2)\n"
        "assert 'keras' not in sys.modules\n"
        "try:\n"
        "    jlocalconv.keras.LocallyConnected2D\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pip install 'jlocalconv[keras]'" in proc.stdout


def test_importing_jlocalconv_keras_does_not_import_keras():
    proc = _run("import sys, jlocalconv.keras\nprint('keras' in sys.modules)")
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr[-2000:]


@pytest.mark.parametrize("data_format", ["channels_last", CF])
def test_3d_layer_of_every_implementation_against_the_reference(data_format):
    # tf.keras 2 had no 3-D layer: implementations 2 and 3 get their weights from the
    # public converters, and all three must compute the reference's numbers.
    from jlocalconv import layout

    rng = np.random.default_rng(3)
    shape = (2, 2, 5, 4, 3) if data_format == CF else (2, 5, 4, 3, 2)
    x = rng.standard_normal(shape).astype(np.float32)
    geometry = ((5, 4, 3), (2, 3, 2), (2, 1, 1), "same", data_format)
    kernel = rng.standard_normal((3 * 4 * 3, 12 * 2, 3)).astype(np.float32)
    bias = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    stored = {
        1: kernel,
        2: layout.to_keras_dense(kernel, *geometry),
        3: layout.to_keras_sparse(kernel, *geometry)[0],
    }
    pads = layout.keras_padding(*geometry[:4])
    per_position = bias if data_format != CF else np.moveaxis(bias.reshape(3, 3, 4, 3), 0, -1)
    want = local_conv_ref(x, kernel, (2, 3, 2), (2, 1, 1), data_format, pads, None, per_position)
    for implementation, weights in stored.items():
        layer = jk.LocallyConnected3D(
            3, (2, 3, 2), (2, 1, 1), "same", data_format, implementation=implementation
        )
        layer.build(x.shape)
        layer.set_weights([weights, bias])
        np.testing.assert_allclose(layer(x), want, rtol=1e-5, atol=1e-5, err_msg=implementation)
