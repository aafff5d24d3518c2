"""LocalConvSpec: one static description of a call, built once and used by every entry point."""

from __future__ import annotations

import dataclasses
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jlocalconv
from jlocalconv import implementations, spec
from jlocalconv.spec import ConvOptions, LocalConvSpec

OPTIONS = tuple(ConvOptions.__annotations__)
X = np.ones((2, 6, 5, 3), np.float32)
K = np.ones((12, 27, 4), np.float32)


def test_equivalent_arguments_give_one_hashable_spec():
    a = LocalConvSpec.create(2, 3, 1, None, padding="VALID", precision=["highest", "highest"])
    b = LocalConvSpec.create(2, (3, 3), (1, 1), "channels_last", padding="valid")
    b = dataclasses.replace(b, precision=("highest", "highest"))
    assert a == b and hash(a) == hash(b)
    assert a.kernel_size == (3, 3) and a.strides == (1, 1) and a.dilation == (1, 1)
    assert {a: 1}[b] == 1  # usable as a jit static argument / dict key


def test_explicit_padding_is_normalised_to_pairs_and_modes_stay_modes():
    assert LocalConvSpec.create(2, 3, padding=1).padding == ((1, 1), (1, 1))
    assert LocalConvSpec.create(2, 3, padding=[(0, 1), 2]).padding == ((0, 1), (2, 2))
    assert LocalConvSpec.create(1, 3, padding="Causal").padding == "causal"


def test_geometry_resolves_a_mode_against_the_input():
    geom = LocalConvSpec.create(2, 3, 2, padding="same").geometry((1, 7, 6, 3))
    assert geom.output_shape == (4, 3) and geom.padding == ((1, 1), (0, 1))  # odd pad high


@pytest.mark.parametrize(
    ("options", "exc", "arg"),
    [
        (dict(kernel_size=0), ValueError, "kernel_size"),
        (dict(strides=(1, 2, 3)), ValueError, "strides"),
        (dict(dilation=1.5), TypeError, "dilation"),
        (dict(padding="full"), ValueError, "padding"),
        (dict(padding="causal"), ValueError, "padding"),
        (dict(data_format="NHWC"), ValueError, "data_format"),
        (dict(implementation="fastest"), ValueError, "implementation"),
        (dict(preferred_element_type=jnp.int32), TypeError, "preferred_element_type"),
    ],
)
def test_construction_validates_naming_the_function_and_argument(options, exc, arg):
    args = {"kernel_size": 3, **options}
    with pytest.raises(exc, match=f"my_fn: `{arg}` must be"):
        LocalConvSpec.create(2, fn="my_fn", **args)
    with pytest.raises(exc, match=f"LocalConvSpec: `{arg}` must be"):
        LocalConvSpec(ndim=2, **args)


def test_an_unknown_option_is_a_type_error_like_python_s():
    with pytest.raises(TypeError, match=r"local_conv2d\(\) got an unexpected keyword .*'padd'"):
        jlocalconv.local_conv2d(X, K, 3, 1, padd="same")


def _keyword_options(function) -> set[str]:
    params = inspect.signature(function).parameters.values()
    return {p.name for p in params if p.kind is p.KEYWORD_ONLY}


def test_every_entry_point_shows_every_option_in_its_signature_and_docstring():
    nnx, linen, eqx = (pytest.importorskip(f"jlocalconv.{m}") for m in ("nnx", "linen", "eqx"))
    from jlocalconv.sharding import sharded_local_conv

    mesh = jax.make_mesh((1,), ("data",))
    functions = [
        jlocalconv.local_conv,
        jlocalconv.local_conv1d,
        jlocalconv.local_conv2d,
        jlocalconv.local_conv3d,
        jlocalconv.local_conv_transpose,
        jlocalconv.local_conv1d_transpose,
        jlocalconv.local_conv2d_transpose,
        jlocalconv.local_conv3d_transpose,
        sharded_local_conv(mesh, batch_axis="data"),
        nnx.LocallyConnected2D.__init__,  # NNX's metaclass hides the class signature
        eqx.LocallyConnected2D,
    ]
    for function in functions:
        assert set(OPTIONS) <= _keyword_options(function), function
    linen_fields = {f.name for f in dataclasses.fields(linen.LocallyConnected2D)}
    assert set(OPTIONS) <= linen_fields
    for doc in (jlocalconv.local_conv.__doc__, nnx.LocallyConnected2D.__doc__):
        assert all(f"      {name}: " in doc for name in OPTIONS), doc
    assert "{options}" not in jlocalconv.local_conv_transpose.__doc__


@pytest.fixture
def recorded(monkeypatch):
    """Calls of the "patches" implementation, with the keyword options it received."""
    calls = []
    original = implementations.IMPLEMENTATIONS["patches"]

    def patches(inputs, kernel, geom, **kwargs):
        calls.append(kwargs)
        return original(inputs, kernel, geom, **kwargs)

    monkeypatch.setitem(implementations.IMPLEMENTATIONS, "patches", patches)
    return calls


def test_the_options_reach_the_implementation_from_every_entry_point(recorded):
    nnx, linen, eqx = (pytest.importorskip(f"jlocalconv.{m}") for m in ("nnx", "linen", "eqx"))
    from jlocalconv.sharding import sharded_local_conv

    options = dict(implementation="patches", precision=lax.Precision.HIGHEST)
    mesh = jax.make_mesh((1,), ("data",))
    y = np.asarray(jlocalconv.local_conv2d(X, K, 3, 1, **options))
    rngs = pytest.importorskip("flax.nnx").Rngs(0)
    entry_points = {
        "local_conv2d": lambda: jlocalconv.local_conv2d(X, K, 3, 1, **options),
        "sharded_local_conv": lambda: sharded_local_conv(mesh, batch_axis="data")(
            X, K, 3, 1, **options
        ),
        "local_conv2d_transpose": lambda: jlocalconv.local_conv2d_transpose(
            y, K, 3, 1, (6, 5), **options
        ),
        "nnx": lambda: nnx.LocallyConnected2D(3, 4, 3, input_shape=(6, 5), rngs=rngs, **options)(X),
        "linen": lambda: linen.LocallyConnected2D(4, 3, **options).init(jax.random.key(0), X),
        "eqx": lambda: eqx.LocallyConnected2D(
            3, 4, 3, input_shape=(6, 5), key=jax.random.key(0), **options
        )(X[0].transpose(2, 0, 1)),
    }
    for name, call in entry_points.items():
        # The implementation runs under jit: a cached trace would not call it again.
        jax.clear_caches()
        before = len(recorded)
        call()
        assert len(recorded) > before, f"{name} did not reach the implementation"
        assert all(c["precision"] == lax.Precision.HIGHEST for c in recorded[before:]), name


def test_with_options_expands_the_signature_of_a_new_entry_point():
    @spec.with_options
    def f(x, **options):
        """Doc.

        Args:
          {options}
        """
        return options

    params = inspect.signature(f).parameters
    assert [p for p in params if p != "x"] == list(OPTIONS)
    assert params["padding"].default == "valid" and params["implementation"].default == "auto"
    assert "{options}" not in f.__doc__ and "dilation: kernel (atrous) dilation" in f.__doc__
