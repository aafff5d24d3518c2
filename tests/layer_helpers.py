"""Material shared by the layer tests (Flax NNX, Flax Linen, Equinox).

Expected outputs come from the independent float64 loop in ``reference.py``; Keras
layers are either the real tf_keras fixtures (via ``jlocalconv.keras_io``) or a
``HandKerasLayer`` built here with the fields of keras_io's ``KerasLocallyConnected``.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import CASES, Case
from reference import local_conv_ref

import jlocalconv

FIXTURES = pathlib.Path(__file__).parent / "fixtures"

# Keras activation name -> an independent NumPy version.
NP_ACTIVATIONS = {
    None: lambda y: y,
    "linear": lambda y: y,
    "relu": lambda y: np.maximum(y, 0.0),
    "tanh": np.tanh,
    "sigmoid": lambda y: 1.0 / (1.0 + np.exp(-y)),
}

# A rotating activation per case keeps every case cheap while covering names and None.
CASE_ACTIVATIONS = [None, "tanh", "relu", "sigmoid"]


def case_id(case: Case) -> str:
    return str(case)


def activation_for(index: int) -> str | None:
    return CASE_ACTIVATIONS[index % len(CASE_ACTIVATIONS)]


def layer_kwargs(case: Case) -> dict:
    """Constructor arguments (NNX/Equinox style) for the geometry of ``case``."""
    return dict(
        in_features=case.channels,
        filters=case.filters,
        kernel_size=case.kernel_size,
        input_shape=case.spatial,
        strides=case.strides,
        padding=case.padding,
        data_format=case.data_format,
        dilation=case.dil,
        use_bias=case.bias is not None,
    )


def expected(case: Case, x, kernel, bias, activation) -> np.ndarray:
    """The float64 reference output of a layer with ``kernel``/``bias`` on batched ``x``."""
    y = local_conv_ref(
        x,
        kernel,
        case.kernel_size,
        case.strides,
        case.data_format,
        case.padding,
        case.dil,
        bias,  # (*output_shape, filters): added per position in both formats
    )
    return NP_ACTIVATIONS[activation](y)


# (padding, strides, output length) for 10 steps and a window of 3, computed by hand as
# floor((10 + pads - 3) / strides) + 1.
PADDING_SHAPES = [
    ("valid", 2, (4,)),
    ("same", 2, (5,)),
    ("causal", 1, (10,)),
    (1, 2, (5,)),
    (((3, 0),), 1, (11,)),
]


def functional_tanh_loss(case: Case, x):
    """``(kernel, bias) -> sum(tanh(local_conv(x) + bias) ** 2)``, to check layer gradients."""

    def loss(kernel, bias):
        out = jlocalconv.local_conv(
            x,
            kernel,
            case.kernel_size,
            case.strides,
            None,
            case.data_format,
            bias=bias,
            **case.kwargs(),
        )
        return (jnp.tanh(out) ** 2).sum()

    return loss


def assert_default_init_variance(kernel) -> None:
    """A default-initialised (1024, 72, 32) kernel has Var = 2 / (72 + 32), within 5 SE."""
    k = np.asarray(kernel, np.float64)
    assert k.shape == (1024, 72, 32)
    se = np.sqrt(np.mean(k**4) - np.mean(k**2) ** 2) / np.sqrt(k.size)
    assert abs(np.mean(k**2) - 2 / (72 + 32)) < 5 * se


def training_inputs(case: Case) -> jax.Array:
    rng = np.random.default_rng(3)
    return jnp.asarray(rng.standard_normal((16, *case.input_shape[1:])), jnp.float32)


def inputs(case: Case, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(case.input_shape).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class HandKerasLayer:
    """The fields of ``jlocalconv.keras_io.KerasLocallyConnected``, filled by hand."""

    name: str
    config: dict
    input_shape: tuple
    channels_in: int
    output_shape: tuple
    kernel: np.ndarray
    bias: np.ndarray | None

    def apply(self, x):  # what Keras computes, from the independent reference
        y = local_conv_ref(
            x,
            self.kernel,
            self.config["kernel_size"],
            self.config["strides"],
            self.config["data_format"],
            self.config["padding"],
            None,
            self.bias,
        )
        return NP_ACTIVATIONS[self.config["activation"]](y)


# Keras LocallyConnected1D/2D geometries: string "valid"/"same" padding, no dilation.
KERAS_LIKE = [c for c in CASES if isinstance(c.padding, str) and c.padding.lower() != "causal"]
KERAS_LIKE = [c for c in KERAS_LIKE if len(c.spatial) <= 2 and c.dilation is None]


def hand_keras_layer(case: Case, activation: str, use_bias: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    _, k, _ = case.arrays(seed)
    bias = None
    if use_bias:
        bias = rng.standard_normal((*case.output_shape, case.filters)).astype(np.float32)
    config = dict(
        filters=case.filters,
        kernel_size=case.kernel_size,
        strides=case.strides,
        padding=case.padding.lower(),
        data_format=case.data_format,
        implementation=1,
        activation=activation,
        use_bias=use_bias,
    )
    return HandKerasLayer(
        f"lc{len(case.spatial)}d", config, case.spatial, case.channels, case.output_shape, k, bias
    )


def hand_keras_case(index: int):
    """``(case, HandKerasLayer)`` for ``KERAS_LIKE[index]``, varying activation and bias."""
    case = KERAS_LIKE[index]
    activation = ["relu", "linear"][index % 2]
    return case, hand_keras_layer(case, activation, use_bias=index % 3 != 2, seed=index)


def keras_fixtures() -> list:
    """``(layer, inputs, keras_outputs)`` from the real tf_keras fixtures, or a skip."""
    pytest.importorskip("h5py")
    keras_io = pytest.importorskip("jlocalconv.keras_io")
    files = sorted(FIXTURES.glob("*.h5")) if FIXTURES.is_dir() else []
    if not files:
        pytest.skip("no tf_keras fixtures in tests/fixtures yet")
    found = []
    for path in files:
        outputs = path.with_suffix(".npz")
        if not outputs.exists():
            continue
        saved = np.load(outputs)
        for name, layer in keras_io.load_weights(path).items():
            if f"{name}/inputs" in saved:
                found.append((layer, saved[f"{name}/inputs"], saved[f"{name}/outputs"]))
    if not found:
        pytest.skip("tests/fixtures has no layer with saved inputs/outputs")
    return found
