"""``keras_io.load_weights`` against tf_keras on random layers, weights-only and nested files.

tests/fixtures/differential holds 40 seeded random LocallyConnected1D/2D layers written by
tf_keras 2.21 (make_keras_fixtures.py): a model file and both weights-only formats, with
each layer's constructor arguments and Keras's own outputs. Every load is checked against
those outputs through the float64 loop of ``reference.py`` and NumPy activations (no JAX
compilation, so the test takes seconds); tests/fixtures/nested holds a sub-model.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
from collections import Counter

import numpy as np
import pytest
from reference import local_conv_ref

pytest.importorskip("h5py")
keras_io = pytest.importorskip("jlocalconv.keras_io")

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
RANDOM = FIXTURES / "differential"
NESTED = FIXTURES / "nested"
TOL = dict(rtol=1e-5, atol=1e-5)
KERAS_ARGS = ("filters", "kernel_size", "strides", "padding", "data_format", "implementation")
KERAS_ARGS += ("activation", "use_bias")

_erf = np.vectorize(math.erf)
# tf_keras's activations in float64 NumPy (gelu is its exact, erf form).
ACTIVATIONS = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    "softplus": lambda x: np.logaddexp(0, x),
    "swish": lambda x: x / (1 + np.exp(-x)),
    "gelu": lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))),
}


def _specs(saved) -> dict[str, dict]:
    """Layer name -> its tf_keras constructor arguments and input, in the model's order."""
    names = sorted(
        {key.split("/")[0] for key in saved if key.startswith("lc")}, key=lambda n: int(n[2:])
    )
    return {name: json.loads(str(saved[f"{name}/spec"])) for name in names}


SAVED = np.load(RANDOM / "random.npz")
SPECS = _specs(SAVED)


def _spatial(spec: dict) -> tuple[int, ...]:
    shape = spec["input_shape"]
    return tuple(shape[:-1] if spec["data_format"] == "channels_last" else shape[1:])


def _weights_only_config(spec: dict, input_shape: bool) -> dict:
    """What the author of a weights-only file's model knows of the layer."""
    config = {key: spec[key] for key in KERAS_ARGS}
    return {**config, "input_shape": _spatial(spec)} if input_shape else config


def _archive_keys() -> dict[str, str]:
    """Layer name -> its .weights.h5 key: snake-case class, numbered in the model's order."""
    counts: Counter[str] = Counter()
    keys = {}
    for name, spec in SPECS.items():
        snake = f"locally_connected{spec['ndim']}d"
        keys[name] = snake + (f"_{counts[snake]}" if counts[snake] else "")
        counts[snake] += 1
    return keys


def _keras_output(layer, x: np.ndarray) -> np.ndarray:
    """The layer's output by the float64 reference loop, its bias and a NumPy activation."""
    c = layer.config
    y = local_conv_ref(
        x, layer.kernel, c["kernel_size"], c["strides"], c["data_format"], c["padding"],
        bias=layer.bias,
    )  # fmt: skip
    return ACTIVATIONS[c["activation"]](y)


def _check_against_keras(name: str, layer) -> None:
    spec = SPECS[name]
    x = SAVED[f"in{spec['ndim']}d_{spec['input']}"]
    assert layer.input_shape == _spatial(spec), name
    fmt = spec["data_format"]
    assert layer.channels_in == spec["input_shape"][-1 if fmt == "channels_last" else 0], name
    c = layer.config
    assert (c["filters"], list(c["kernel_size"]), list(c["strides"])) == (
        spec["filters"], spec["kernel_size"], spec["strides"]
    ), name  # fmt: skip
    assert (c["implementation"], c["data_format"], c["activation"], c["use_bias"]) == (
        spec["implementation"], fmt, spec["activation"], spec["use_bias"]
    ), name  # fmt: skip
    assert (c["padding"] == "valid") == (spec["padding"] == "valid"), name
    want = SAVED[f"{name}/outputs"]
    np.testing.assert_allclose(_keras_output(layer, x), want, **TOL, err_msg=name)


def test_random_layers_cover_the_configurations():
    seen = Counter()
    for spec in SPECS.values():
        seen.update([("impl", spec["implementation"]), ("format", spec["data_format"])])
        seen.update([("pad", spec["padding"]), ("ndim", spec["ndim"]), ("bias", spec["use_bias"])])
        seen.update([("act", spec["activation"])])
        window = spec["kernel_size"]
        seen["even window, same"] += spec["padding"] == "same" and any(k % 2 == 0 for k in window)
        seen["window > input, same"] += any(k > n for k, n in zip(window, _spatial(spec)))
        seen["stride > 1"] += max(spec["strides"]) > 1
        seen["impl 2, same"] += spec["implementation"] == 2 and spec["padding"] == "same"
    assert 40 <= len(SPECS) <= 60
    for key in [("impl", 1), ("impl", 2), ("impl", 3), ("format", "channels_last")]:
        assert seen[key] >= 8, key
    for key in [("format", "channels_first"), ("pad", "valid"), ("pad", "same"), ("ndim", 1)]:
        assert seen[key] >= 8, key
    for key in [("ndim", 2), ("bias", True), ("bias", False), "even window, same", "stride > 1"]:
        assert seen[key] >= 8, key
    assert seen["window > input, same"] >= 1 and seen["impl 2, same"] >= 4
    assert sum(key[0] == "act" for key in seen if isinstance(key, tuple)) >= 6


def test_random_layers_from_the_model_file_reproduce_keras():
    layers = keras_io.load_weights(RANDOM / "random.h5")
    assert list(layers) == list(SPECS)
    for name, layer in layers.items():
        _check_against_keras(name, layer)


def test_model_file_with_the_true_input_shape_in_configs():
    """Defect 1 for model files: overriding input_shape with its true value changes nothing."""
    plain = keras_io.load_weights(RANDOM / "random.h5")
    configs = {name: {"input_shape": _spatial(spec)} for name, spec in SPECS.items()}
    overridden = keras_io.load_weights(RANDOM / "random.h5", configs=configs)
    for name, layer in plain.items():
        assert overridden[name].channels_in == layer.channels_in, name
        np.testing.assert_array_equal(overridden[name].kernel, layer.kernel, err_msg=name)


@pytest.mark.parametrize("file", ["random_weights.h5", "random.weights.h5"])
def test_random_layers_from_weights_only_files_with_input_shape(file):
    """Defect 1: implementation 2 with its (correct) input_shape was refused."""
    keys = {name: name for name in SPECS} if file == "random_weights.h5" else _archive_keys()
    configs = {keys[name]: _weights_only_config(spec, True) for name, spec in SPECS.items()}
    layers = keras_io.load_weights(RANDOM / file, configs=configs)
    assert list(layers) == list(configs)
    for name in SPECS:
        _check_against_keras(name, layers[keys[name]])
    assert sum(spec["implementation"] == 2 for spec in SPECS.values()) >= 8


@pytest.mark.parametrize("file", ["random_weights.h5", "random.weights.h5"])
def test_random_layers_from_weights_only_files_without_input_shape(file):
    """Implementation 2's kernel gives the input shape; 1 and 3 ask for it, for their rank."""
    keys = {name: name for name in SPECS} if file == "random_weights.h5" else _archive_keys()
    for name, spec in SPECS.items():
        configs = {keys[name]: _weights_only_config(spec, False)}
        if spec["implementation"] == 2:
            _check_against_keras(
                name, keras_io.load_weights(RANDOM / file, configs=configs)[keys[name]]
            )
            continue
        example = "(steps,)" if spec["ndim"] == 1 else "(rows, cols)"
        hint = re.escape(f"{{'input_shape': {example}}}")
        with pytest.raises(ValueError, match=rf"layer '{keys[name]}'.*{hint}"):
            keras_io.load_weights(RANDOM / file, configs=configs)


def _nested_saved():
    return np.load(NESTED / "nested.npz")


INNER = dict(filters=3, kernel_size=(2, 2), activation="relu", input_shape=(6, 5))
OUTER = dict(filters=2, kernel_size=(2, 3), padding="same", implementation=2)


@pytest.mark.parametrize(
    ("file", "inner", "outer"),
    [
        ("nested_weights.h5", "inner/inner_lc", "outer_lc"),
        ("nested.weights.h5", "functional/layers/locally_connected2d", "locally_connected2d"),
    ],
)
def test_nested_layers_of_weights_only_files_by_path(file, inner, outer):
    """Defect 3: a layer of a sub-model is keyed by its path."""
    saved = _nested_saved()
    layers = keras_io.load_weights(NESTED / file, configs={inner: INNER, outer: OUTER})
    assert list(layers) == [inner, outer]
    for key, name in [(inner, "inner_lc"), (outer, "outer_lc")]:
        got = _keras_output(layers[key], saved[f"{name}/inputs"])
        np.testing.assert_allclose(got, saved[f"{name}/outputs"], **TOL, err_msg=key)


def test_nested_model_file_and_weights_only_agree():
    model = keras_io.load_weights(NESTED / "nested.h5")
    assert list(model) == ["inner_lc", "outer_lc"]
    configs = {"inner/inner_lc": INNER, "outer_lc": OUTER}
    weights = keras_io.load_weights(NESTED / "nested_weights.h5", configs=configs)
    for key, name in [("inner/inner_lc", "inner_lc"), ("outer_lc", "outer_lc")]:
        np.testing.assert_array_equal(weights[key].kernel, model[name].kernel)
        np.testing.assert_array_equal(weights[key].bias, model[name].bias)
        assert weights[key].config == model[name].config


def test_apply_casts_float64_numpy_inputs_as_keras():
    """tf.keras casts float64 inputs to the layer's float32; so does ``apply``."""
    saved = _nested_saved()
    layer = keras_io.load_weights(NESTED / "nested.h5", "outer_lc")["outer_lc"]
    y = layer.apply(saved["outer_lc/inputs"].astype(np.float64))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, saved["outer_lc/outputs"], **TOL)
