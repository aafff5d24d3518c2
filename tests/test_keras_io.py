"""tf.keras interop: the implementation 2/3 converters and ``keras_io.load_weights``.

Golden data are real tf_keras 2.21 files and outputs (tests/fixtures, written by
make_keras_fixtures.py); the converters are also checked by applying their kernels as
Keras does (a dense matmul, a sparse matrix) against the float64 loop in ``reference.py``.
No TensorFlow needed: only h5py, NumPy and JAX.
"""

import math
import pathlib

import numpy as np
import pytest
from reference import local_conv_ref

import jlocalconv
from jlocalconv import _keras_layouts as kl

pytest.importorskip("h5py")
keras_io = pytest.importorskip("jlocalconv.keras_io")

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
MODELS = sorted(FIXTURES.glob("*.h5")) + sorted(FIXTURES.glob("*.keras"))
CL, CF = "channels_last", "channels_first"
TOL = dict(rtol=1e-5, atol=1e-5)  # float32 outputs of a few dozen terms each

# (spatial, channels, kernel_size, strides, padding, data_format, filters): odd and even
# windows, strides that do and do not divide, and "same" where the last window ends early.
GEOMETRIES = [
    ((7,), 2, 3, 1, "valid", CL, 3),
    ((9,), 3, 4, 2, "same", CF, 2),
    ((4,), 2, 4, 1, "same", CF, 1),
    ((6, 5), 2, (2, 3), (2, 1), "same", CL, 3),
    ((5, 6), 3, (3, 2), (1, 2), "valid", CF, 2),
    ((6, 6), 1, 2, 3, "same", CL, 2),
]


def _ids(geometry):
    spatial, c, k, s, padding, fmt, f = geometry
    return f"{spatial}-C{c}-k{k}-s{s}-{padding}-{fmt[9:]}-F{f}"


def _keras_windows(spatial, kernel_size, strides, padding):
    """Keras's ``conv_connected_inputs`` as a loop: ``(outputs, taps)`` of input positions."""
    ks = [kernel_size] * len(spatial) if isinstance(kernel_size, int) else list(kernel_size)
    st = [strides] * len(spatial) if isinstance(strides, int) else list(strides)
    if padding == "same":
        out = [-(-n // s) for n, s in zip(spatial, st)]
        lo = [k // 2 for k in ks]
    else:
        out = [-(-(n - k + 1) // s) for n, k, s in zip(spatial, ks, st)]
        lo = [0] * len(spatial)
    taps = [
        [
            tuple(o * s - low + j for o, s, low, j in zip(pos, st, lo, tap))
            for tap in np.ndindex(*ks)
        ]
        for pos in np.ndindex(*out)
    ]
    return tuple(out), ks, taps


def _problem(geometry, seed=0):
    """``(x, kernel, connected, output_shape, kernel_size)``; ``connected``: taps not in padding."""
    spatial, c, k, s, padding, fmt, f = geometry
    out, ks, taps = _keras_windows(spatial, k, s, padding)
    inside = np.array([[all(0 <= i < n for i, n in zip(t, spatial)) for t in row] for row in taps])
    connected = (
        np.repeat(inside[:, :, None], c, 2) if fmt == CL else np.repeat(inside[:, None], c, 1)
    )
    rng = np.random.default_rng(seed)
    kernel = rng.standard_normal((len(taps), c * math.prod(ks), f)).astype(np.float32)
    shape = (2, *spatial, c) if fmt == CL else (2, c, *spatial)
    x = rng.standard_normal(shape).astype(np.float32)
    return x, kernel, connected.reshape(len(taps), -1, 1), out, tuple(ks)


def _reference(x, kernel, geometry, ks):
    spatial, _, _, s, padding, fmt, _ = geometry
    st = (s,) * len(spatial) if isinstance(s, int) else s
    pads = kl.keras_padding(spatial, ks, st, padding)
    return local_conv_ref(x, kernel, ks, st, fmt, pads)


def _to_output(flat, batch, out, filters, fmt):
    return flat.reshape(batch, *out, filters) if fmt == CL else flat.reshape(batch, filters, *out)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_ids)
def test_dense_kernel_applied_as_keras_equals_local_conv(geometry):
    spatial, _, k, s, padding, fmt, f = geometry
    x, kernel, connected, out, ks = _problem(geometry)
    dense = kl.to_keras_dense(kernel, spatial, k, s, padding, fmt)
    matrix = dense.reshape(x[0].size, -1)  # local_conv_matmul: inputs_flat @ make_2d(kernel)
    got = _to_output(x.reshape(len(x), -1) @ matrix, len(x), out, f, fmt)
    np.testing.assert_allclose(got, _reference(x, kernel, geometry, ks), **TOL)
    back = kl.from_keras_dense(dense, spatial, k, s, padding, fmt)
    np.testing.assert_array_equal(back, np.where(connected, kernel, 0))
    # Keras masks the dense kernel at call time: entries off the mask must not matter.
    noisy = dense + (kl.to_keras_dense(np.ones_like(kernel), spatial, k, s, padding, fmt) == 0)
    np.testing.assert_array_equal(kl.from_keras_dense(noisy, spatial, k, s, padding, fmt), back)
    np.testing.assert_array_equal(kl.to_keras_dense(back, spatial, k, s, padding, fmt), dense)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_ids)
def test_sparse_kernel_applied_as_keras_equals_local_conv(geometry):
    spatial, c, k, s, padding, fmt, f = geometry
    x, kernel, connected, out, ks = _problem(geometry, seed=1)
    values, idxs = kl.to_keras_sparse(kernel, spatial, k, s, padding, fmt)
    assert idxs.tolist() == sorted(idxs.tolist())  # Keras sorts kernel_idxs
    matrix = np.zeros((math.prod(out) * f, math.prod(spatial) * c), np.float32)
    matrix[idxs[:, 0], idxs[:, 1]] = values  # local_conv_sparse_matmul's SparseTensor
    got = _to_output(x.reshape(len(x), -1) @ matrix.T, len(x), out, f, fmt)
    np.testing.assert_allclose(got, _reference(x, kernel, geometry, ks), **TOL)
    back = kl.from_keras_sparse(values, idxs, spatial, out, k, s, padding, fmt)
    np.testing.assert_array_equal(back, np.where(connected, kernel, 0))
    again = kl.to_keras_sparse(back, spatial, k, s, padding, fmt)
    np.testing.assert_array_equal(again[0], values)
    np.testing.assert_array_equal(again[1], idxs)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_ids)
def test_keras_same_padding_is_its_own_rule(geometry):
    spatial, _, _, s, padding, fmt, _ = geometry
    x, kernel, _, out, ks = _problem(geometry, seed=2)
    pads = kl.keras_padding(spatial, ks, (s,) * len(spatial) if isinstance(s, int) else s, padding)
    y = jlocalconv.local_conv(x, kernel, ks, s, data_format=fmt, padding=pads)
    assert y.shape[1:-1] == out if fmt == CL else y.shape[2:] == out
    np.testing.assert_allclose(y, _reference(x, kernel, geometry, ks), **TOL)


def test_keras_same_differs_from_xla_same_for_even_windows():
    # Keras pads kernel_size // 2 first; XLA puts the odd pad last.
    assert kl.keras_padding((7,), (2,), (1,), "same") == ((1, 0),)
    assert jlocalconv.geometry.normalize_padding("same", (7,), (2,), (1,), (1,)) == ((0, 1),)


def _fixture_layers():
    for path in MODELS:
        saved = np.load(path.with_suffix(".npz"))
        for layer in keras_io.load_weights(path).values():
            yield path, layer, saved


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_fixtures_reproduce_keras_outputs(path):
    saved = np.load(path.with_suffix(".npz"))
    layers = keras_io.load_weights(path)
    assert list(layers) == ["a", "b", "c"]
    for name, layer in layers.items():
        x, want = saved[f"{name}/inputs"], saved[f"{name}/outputs"]
        fmt, c = layer.config["data_format"], layer.channels_in
        assert x.shape[1:] == ((*layer.input_shape, c) if fmt == CL else (c, *layer.input_shape))
        np.testing.assert_allclose(layer.apply(x), want, **TOL, err_msg=f"{path.name}:{name}")


def test_fixtures_cover_the_keras_configurations():
    seen = set()
    for _, layer, _ in _fixture_layers():
        c = layer.config
        padding = c["padding"] if c["padding"] == "valid" else "same"
        seen |= {("impl", c["implementation"]), ("format", c["data_format"]), ("pad", padding)}
        seen |= {("ndim", len(layer.input_shape)), ("bias", c["use_bias"])}
        seen |= {("strided", max(c["strides"]) > 1), ("act", c["activation"] != "linear")}
    wanted = {("impl", 1), ("impl", 2), ("impl", 3), ("format", CL), ("format", CF)}
    wanted |= {("pad", "valid"), ("pad", "same"), ("ndim", 1), ("ndim", 2), ("bias", True)}
    wanted |= {("bias", False), ("strided", True), ("act", True)}
    assert wanted <= seen


def test_fixture_kernel_idxs_are_keras_own():
    checked = 0
    for _, layer, saved in _fixture_layers():
        c = layer.config
        if c["implementation"] != 3:
            continue
        padding = "valid" if c["padding"] == "valid" else "same"
        args = (layer.input_shape, c["kernel_size"], c["strides"], padding, c["data_format"])
        _, idxs = kl.to_keras_sparse(layer.kernel, *args)
        np.testing.assert_array_equal(idxs, saved[f"{layer.name}/kernel_idxs"])
        checked += 1
    assert checked >= 4


def test_channels_first_bias_is_keras_reshape_not_transpose():
    layer = keras_io.load_weights(FIXTURES / "lc2d_first.h5", "a")["a"]
    import h5py

    with h5py.File(FIXTURES / "lc2d_first.h5") as f:
        stored = f["model_weights/a/a/bias:0"][()]  # (rows, cols, filters) as Keras keeps it
    rows, cols, filters = stored.shape
    np.testing.assert_array_equal(
        layer.bias.transpose(2, 0, 1), stored.reshape(filters, rows, cols)
    )
    assert not np.array_equal(layer.bias, stored)


def test_keras_archive_and_h5_model_agree():
    from_h5 = keras_io.load_weights(FIXTURES / "lc2d_last.h5")
    from_zip = keras_io.load_weights(FIXTURES / "lc2d_last.keras")
    for name, layer in from_h5.items():
        np.testing.assert_array_equal(from_zip[name].kernel, layer.kernel)
        np.testing.assert_array_equal(from_zip[name].bias, layer.bias)
        assert from_zip[name].config == layer.config


def test_weights_only_files_with_configs():
    model = keras_io.load_weights(FIXTURES / "lc2d_last.h5")
    saved = np.load(FIXTURES / "lc2d_last.npz")
    configs = {
        name: {**layer.keras_config, "input_shape": layer.input_shape}
        for name, layer in model.items()
        if name != "a"
    }
    # Layer a from what its author knows; implementation 2: the input shape is in the kernel.
    configs["a"] = dict(filters=3, kernel_size=(2, 3), strides=(2, 1), padding="same")
    configs["a"]["implementation"] = 2
    legacy = FIXTURES / "weights_only" / "lc2d_last_weights.h5"
    by_name = keras_io.load_weights(legacy, configs=configs)
    assert list(by_name) == ["b", "c", "a"]  # the order of `configs`
    # A .weights.h5 file keys layers by class and position, in the model's order.
    keys = {"a": "locally_connected2d", "b": "locally_connected2d_1", "c": "locally_connected2d_2"}
    path = FIXTURES / "weights_only" / "lc2d_last.weights.h5"
    by_position = keras_io.load_weights(path, configs={keys[n]: c for n, c in configs.items()})
    for name, layer in model.items():
        x, want = saved[f"{name}/inputs"], saved[f"{name}/outputs"]
        for other in (by_name[name], by_position[keys[name]]):
            np.testing.assert_array_equal(other.kernel, layer.kernel)
            np.testing.assert_array_equal(other.bias, layer.bias)
            assert other.config == layer.config
            np.testing.assert_allclose(other.apply(x), want, **TOL)


def test_layer_name_selects_one_layer():
    layers = keras_io.load_weights(FIXTURES / "lc1d_last.h5", "b")
    assert list(layers) == ["b"] and layers["b"].bias is None
    assert layers["b"].config["use_bias"] is False


def test_configs_complete_a_layer_the_file_cannot_place(tmp_path):
    path = FIXTURES / "lc1d_last.h5"
    override = {"c": {"input_shape": (4,)}}  # wrong: c follows b, which gives 5 steps
    with pytest.raises(ValueError, match=r"layer 'c': `kernel` must be of shape"):
        keras_io.load_weights(path, "c", configs=override)


_K = np.zeros((3, 6, 4), np.float32)  # 5 steps, C=2, window 3 -> 3 outputs, 4 filters


@pytest.mark.parametrize(
    ("call", "exc", "message"),
    [
        (
            lambda: kl.to_keras_dense(_K, (6,), 3),
            ValueError,
            r"to_keras_dense: `kernel` must be of shape \(4, 6, 4\)",
        ),
        (
            lambda: kl.to_keras_dense(_K, (5,), 4),
            ValueError,
            "`kernel` must be a feature_dim divisible by",
        ),
        (
            lambda: kl.to_keras_sparse(_K, (5,), 3, padding="causal"),
            ValueError,
            "`padding` must be one of Keras's",
        ),
        (
            lambda: kl.to_keras_sparse(_K, 5, 3),
            TypeError,
            "`input_shape` must be the input's spatial shape",
        ),
        (
            lambda: kl.from_keras_dense(np.zeros((5, 2, 3)), (5,), 3),
            ValueError,
            "`kernel` must be a 4-D dense",
        ),
        (
            lambda: kl.from_keras_dense(np.zeros((5, 2, 2, 4)), (5,), 3),
            ValueError,
            r"`kernel` must be of shape \(5, 2, 3, 4\)",
        ),
        (
            lambda: kl.from_keras_dense(np.zeros((5, 2, 3, 4)), (5,), 3, data_format="NHWC"),
            ValueError,
            "`data_format`",
        ),
        (
            lambda: kl.from_keras_sparse(*kl.to_keras_sparse(_K, (5,), 3), (5,), (4,), 3),
            ValueError,
            r"`output_shape` must be the geometry's spatial output shape \(3,\)",
        ),
        (
            lambda: kl.from_keras_sparse(
                kl.to_keras_sparse(_K, (5,), 3)[0],
                kl.to_keras_sparse(_K, (5,), 3)[1][::-1],
                (5,),
                (3,),
                3,
            ),
            ValueError,
            "`kernel_idxs` must be Keras's indices for this geometry",
        ),
        (
            lambda: kl.from_keras_sparse(np.zeros(7), np.zeros((7, 2), int), (5,), (3,), 3),
            ValueError,
            "`values` must be 9 connected taps",
        ),
        (
            lambda: kl.from_keras_sparse(np.zeros(7), np.zeros((6, 2), int), (5,), (3,), 3),
            ValueError,
            "`kernel_idxs` must be 7 integer",
        ),
    ],
)
def test_converter_errors(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_converters_keep_dtype():
    kernel = np.ones((3, 6, 4), np.float64)
    assert kl.to_keras_dense(kernel, (5,), 3).dtype == np.float64
    values, idxs = kl.to_keras_sparse(kernel.astype(np.float16), (5,), 3)
    assert values.dtype == np.float16 and idxs.dtype == np.int64
