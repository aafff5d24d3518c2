"""tf.keras 2 ``LocallyConnected1D/2D`` weights from files, read with h5py alone (no TensorFlow).

:func:`load_weights` reads three kinds of file written by tf.keras 2 (``tf_keras``):

* ``model.save("m.h5")``: the legacy HDF5 model file (config and weights);
* ``model.save("m.keras")``: the zip archive (``config.json`` + ``model.weights.h5``);
* ``model.save_weights("w.h5")`` or ``model.save_weights("w.weights.h5")``: weights only.
  Such a file has no configuration, so the caller passes it, per layer, in ``configs=``
  (see :func:`load_weights`).

Each LocallyConnected layer becomes a :class:`KerasLocallyConnected` whose ``kernel`` is in
jlocalconv's layout whatever Keras's ``implementation`` (1, 2 or 3) was, and whose
``bias`` is the per-position bias Keras really adds. Install with
``pip install "jlocalconv[keras]"``.

Example (from a jlocalconv checkout, whose tests/fixtures hold files written by tf_keras):
  >>> import numpy as np
  >>> from jlocalconv import keras_io
  >>> layers = keras_io.load_weights("tests/fixtures/lc2d_first.h5")
  >>> {name: layer.config["implementation"] for name, layer in layers.items()}
  {'a': 1, 'b': 2, 'c': 3}
  >>> saved = np.load("tests/fixtures/lc2d_first.npz")    # Keras's inputs and outputs
  >>> y = layers["b"].apply(saved["b/inputs"])
  >>> bool(np.allclose(y, saved["b/outputs"], atol=1e-5))
  True
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
from jax import lax

from jlocalconv import _keras_layouts as kl
from jlocalconv._activations import get_activation
from jlocalconv._errors import fail
from jlocalconv._layer_common import import_optional
from jlocalconv.geometry import Geometry, normalize_data_format
from jlocalconv.ops import local_conv

h5py = import_optional("h5py", "keras", "jlocalconv.keras_io")

_FN = "load_weights"
_CLASSES = ("LocallyConnected1D", "LocallyConnected2D")
# tf.keras's defaults, for what a weights-only file's caller leaves out.
_DEFAULTS = {
    "strides": 1,
    "padding": "valid",
    "data_format": "channels_last",
    "implementation": 1,
    "activation": "linear",
}


@dataclasses.dataclass(frozen=True, eq=False)
class KerasLocallyConnected:
    """One tf.keras LocallyConnected1D/2D layer, in jlocalconv's terms.

    Attributes:
      name: the Keras layer name.
      config: ``filters``, ``kernel_size`` and ``strides`` (tuples), ``padding``,
        ``data_format``, ``implementation``, ``activation`` (a Keras name) and ``use_bias``.
        ``padding`` is jlocalconv's equivalent of Keras's: ``"valid"``, or for Keras's
        ``"same"`` the explicit ``(low, high)`` pairs of Keras's rule (``kernel_size // 2``
        zeros first), which is not XLA's ``"same"`` for even windows or uneven strides.
      input_shape: the input's spatial shape.
      channels_in: the input's channel count.
      output_shape: the output's spatial shape.
      kernel: ``(output_items, feature_dim, filters)`` NumPy array, features in
        ``data_format``'s order (converted from implementations 2 and 3).
      bias: ``(*output_shape, filters)`` NumPy array (the bias Keras adds at each output
        position and filter, un-scrambled for channels_first) or None.
      keras_config: the layer's configuration as stored in the file (``{}`` for a
        weights-only file).
    """

    name: str
    config: dict[str, Any]
    input_shape: tuple[int, ...]
    channels_in: int
    output_shape: tuple[int, ...]
    kernel: np.ndarray
    bias: np.ndarray | None
    keras_config: dict[str, Any] = dataclasses.field(default_factory=dict)

    def apply(
        self, inputs: jax.Array, *, precision: lax.PrecisionLike = None, implementation="auto"
    ) -> jax.Array:
        """The Keras layer's output: ``activation(local_conv(inputs, kernel) + bias)``.

        Args:
          inputs: ``(batch, *input_shape, channels_in)`` or ``(batch, channels_in,
            *input_shape)`` as the layer's ``data_format``, the kernel's dtype.
          precision, implementation: forwarded to :func:`jlocalconv.local_conv`.

        Returns:
          ``(batch, *output_shape, filters)`` or ``(batch, filters, *output_shape)``.
        """
        config = self.config
        out = local_conv(
            inputs,
            self.kernel,
            config["kernel_size"],
            config["strides"],
            data_format=config["data_format"],
            padding=config["padding"],
            bias=self.bias,
            precision=precision,
            implementation=implementation,
        )
        return get_activation(config["activation"])(out)


class _Entry(NamedTuple):
    """A LocallyConnected layer found in a model config (or named by the caller)."""

    name: str
    config: dict[str, Any]
    input_shape: tuple[int, ...] | None  # without batch, in the layer's format, if known
    archive_path: str  # its weights' group in a .keras archive


def load_weights(
    path: str | os.PathLike,
    layer_name: str | None = None,
    *,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, KerasLocallyConnected]:
    """Reads the LocallyConnected1D/2D layers of a tf.keras 2 file, without TensorFlow.

    The input shape of each layer comes from the file (the model's input, a
    ``batch_input_shape``, the layer before it in a chain of known layers, or the dense
    kernel of implementation 2). When the file cannot tell (e.g. an implementation 1 or 3
    layer after a ``Flatten``/``Reshape``), pass it in ``configs``.

    Args:
      path: a ``.h5`` model file (``model.save``), a ``.keras`` archive, or a ``.h5``
        weights-only file (``model.save_weights``).
      layer_name: the one layer to read; all LocallyConnected layers when None.
      configs: per layer name, Keras config entries that override or complete the file's:
        any of ``filters``, ``kernel_size``, ``strides``, ``padding``, ``data_format``,
        ``implementation``, ``activation``, ``use_bias``, plus ``input_shape`` (the spatial
        shape). Required for weights-only files, which hold no configuration: there the
        layers read are exactly those named, each needing ``kernel_size``, ``filters``
        and (except implementation 2) ``input_shape``; the rest default as in tf.keras.
        A ``.weights.h5`` file names layers by class and position (``locally_connected2d``,
        ``locally_connected2d_1``, ...), so those are its keys; errors list what is stored.

    Returns:
      ``{layer name: KerasLocallyConnected}`` in the model's layer order (the order of
      ``configs`` for a weights-only file).

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: for a file that is not a tf.keras 2 model or weights file, a weights-only
        file without ``configs``, an unknown ``layer_name`` or ``configs`` key (the message
        lists the layers there are), a file without LocallyConnected layers, or weights
        that do not fit the configuration.
      ImportError: without h5py (``pip install "jlocalconv[keras]"``).

    Example:
      >>> from jlocalconv.keras_io import load_weights
      >>> layer = load_weights("tests/fixtures/lc2d_first.h5", "b")["b"]
      >>> layer.config["implementation"], layer.config["padding"]   # Keras's "same"
      (2, ((1, 0), (1, 1)))
      >>> layer.input_shape, layer.channels_in, layer.kernel.shape, layer.bias.shape
      ((3, 5), 3, (9, 18, 2), (3, 3, 2))
    """
    configs = _check_configs(configs)
    with _open(path) as (model_config, weights, stored):
        entries = _entries(model_config, configs, stored)
        names = [entry.name for entry in entries]
        for name in [*configs, *([layer_name] if layer_name is not None else [])]:
            if name not in names:
                arg = "layer_name" if name == layer_name else "configs"
                fail(_FN, arg, f"a LocallyConnected layer of {path!s}: one of {names}", repr(name))
        if layer_name is not None:
            entries = [entry for entry in entries if entry.name == layer_name]
        return {e.name: _convert(e, weights(e), configs.get(e.name, {})) for e in entries}


def _check_configs(configs: object) -> dict[str, dict[str, Any]]:
    if configs is None:
        return {}
    if not isinstance(configs, Mapping) or not all(
        isinstance(c, Mapping) for c in configs.values()
    ):
        fail(_FN, "configs", "a mapping of layer names to config dicts", configs, exc=TypeError)
    return {str(name): dict(config) for name, config in configs.items()}


Weights = Callable[[_Entry], list[np.ndarray]]


@contextlib.contextmanager
def _open(path: str | os.PathLike) -> Iterator[tuple[dict | None, Weights, list[str]]]:
    """Yields ``(model_config or None, weights of an entry, layer names stored)``."""
    if not isinstance(path, (str, os.PathLike)):
        fail(_FN, "path", "a file path (str or os.PathLike)", path, exc=TypeError)
    if not os.path.isfile(path):
        fail(_FN, "path", "an existing file", repr(os.fspath(path)), exc=FileNotFoundError)
    expected = "a tf.keras 2 .h5 model or weights file, or a .keras archive"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "config.json" not in names or "model.weights.h5" not in names:
                fail(_FN, "path", expected, f"a zip file holding {names}")
            config = json.loads(archive.read("config.json"))
            data = io.BytesIO(archive.read("model.weights.h5"))
        with h5py.File(data, "r") as f:
            yield config, lambda entry: _archive_weights(f, entry), []
    elif h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            if "model_config" in f.attrs:
                config = json.loads(_text(f.attrs["model_config"]))
                root = f["model_weights"]
            elif "layer_names" in f.attrs:
                config, root = None, f
            elif isinstance(f.get("layers"), h5py.Group):  # model.save_weights("w.weights.h5")
                yield None, lambda entry: _archive_weights(f, entry), list(f["layers"])
                return
            else:
                fail(_FN, "path", expected, f"an HDF5 file with attributes {sorted(f.attrs)}")
            stored = [_text(name) for name in root.attrs.get("layer_names", [])]
            yield config, lambda entry: _h5_weights(root, entry.name), stored
    else:
        fail(_FN, "path", expected, f"{os.fspath(path)!r}, neither HDF5 nor zip")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _h5_weights(root: Any, name: str) -> list[np.ndarray]:
    """The arrays of layer ``name``, kernel first, from an HDF5 file's weight groups.

    Each top-level group lists its weights as ``.../<layer>/kernel:0``, also for layers of
    nested models, so the layer's own arrays are those one level below its name.
    """
    for group_name in root.attrs.get("layer_names", []):
        group = root[_text(group_name)]
        found = [
            np.asarray(group[_text(w)])
            for w in group.attrs.get("weight_names", [])
            if _text(w).split("/")[-2:-1] == [name]
        ]
        if found:
            return found
    return []


def _archive_weights(f: Any, entry: _Entry) -> list[np.ndarray]:
    # The .keras archive names groups by class and position, e.g. layers/locally_connected2d_1.
    group = f.get(f"{entry.archive_path}/vars")
    if group is None:
        return []
    return [np.asarray(group[key]) for key in sorted(group, key=int)]


def _entries(model_config: dict | None, configs: dict, stored: list[str]) -> list[_Entry]:
    if model_config is None:
        if not configs:
            hint = (
                "A weights-only file (model.save_weights) holds no layer configuration: pass "
                "configs={name: {'filters': ..., 'kernel_size': ..., 'input_shape': ...}}, "
                "or read the model file written by model.save."
            )
            fail(
                _FN,
                "configs",
                f"given for a weights-only file (layers {stored})",
                "None",
                hint=hint,
            )
        for name in configs:
            if name not in stored:
                fail(_FN, "configs", f"keyed by layers stored in the file, {stored}", repr(name))
        return [_Entry(name, {}, None, f"layers/{name}") for name in configs]
    found: list[_Entry] = []
    _walk(model_config, "", found)
    if not found:
        fail(_FN, "path", "a model with LocallyConnected1D/2D layers", "a model without any")
    return found


def _walk(model: dict, prefix: str, found: list[_Entry]) -> None:
    """Collects the LocallyConnected layers of a (possibly nested) model config in order.

    Tracks each layer's output shape where it is known (inputs and locally connected
    layers), so a layer's input shape can come from the layer that feeds it.
    """
    sequential = model.get("class_name") == "Sequential"
    shapes: dict[str | None, tuple[int, ...] | None] = {}
    counts: Counter[str] = Counter()
    previous = None
    for layer in model.get("config", {}).get("layers", []):
        kind, config = layer.get("class_name", ""), layer.get("config", {})
        name = config.get("name", layer.get("name"))
        snake = _snake_case(kind)
        archive_path = f"{prefix}layers/{snake}" + (f"_{counts[snake]}" if counts[snake] else "")
        counts[snake] += 1
        source = previous if sequential else _inbound(layer)
        shape = _declared_shape(layer) or shapes.get(source)
        output = shape if kind == "InputLayer" else None
        if kind in _CLASSES:
            found.append(_Entry(name, config, shape, archive_path))
            output = _output_shape(config, shape)
        elif "layers" in config:
            _walk(layer, archive_path + "/", found)
        shapes[name], previous = output, name


def _snake_case(name: str) -> str:
    # tf_keras.src.utils.generic_utils.to_snake_case, which names the .keras groups.
    name = re.sub("(.)([A-Z][a-z0-9]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
    return name if not name.startswith("_") else "private" + name


def _inbound(layer: dict) -> str | None:
    try:
        return layer["inbound_nodes"][0][0][0]
    except (KeyError, IndexError, TypeError):
        return None


def _declared_shape(layer: dict) -> tuple[int, ...] | None:
    config = layer.get("config", {})
    shape = layer.get("build_config", {}).get("input_shape") or config.get("batch_input_shape")
    if not shape or not all(isinstance(s, int) for s in shape[1:]):
        return None
    return tuple(shape[1:])


def _output_shape(config: dict, shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
    if shape is None:
        return None
    fmt = normalize_data_format(config.get("data_format"), _FN)
    spatial, channels = (shape[:-1], shape[-1]) if fmt == "channels_last" else (shape[1:], shape[0])
    geom = _geometry(config, spatial, channels, config.get("name", "?"))
    filters = int(config["filters"])
    return geom.result_shape(1, filters)[1:]


def _geometry(config: dict, spatial: tuple[int, ...], channels: int, name: str) -> Geometry:
    fn = f"{_FN}: layer {name!r}"
    return kl.keras_geometry(
        spatial,
        channels,
        config["kernel_size"],
        config["strides"],
        config["padding"],
        config["data_format"],
        fn,
    )


def _convert(entry: _Entry, arrays: list[np.ndarray], override: dict) -> KerasLocallyConnected:
    """One layer's weights and configuration in jlocalconv's layout."""
    fn = f"{_FN}: layer {entry.name!r}"
    config = {**_DEFAULTS, **entry.config, **override}
    for key in ("filters", "kernel_size"):
        if key not in config:
            fail(fn, "configs", f"a {key!r} entry for this layer", f"{sorted(config)}")
    implementation = config["implementation"]
    if implementation not in (1, 2, 3):
        fail(fn, "implementation", "1, 2 or 3", repr(implementation))
    use_bias = bool(config.get("use_bias", len(arrays) == 2))
    if len(arrays) != 1 + use_bias:
        expected = "a kernel and a bias" if use_bias else "a kernel (use_bias=False)"
        fail(fn, "path", f"a file holding {expected} for this layer", f"{len(arrays)} arrays")
    kernel, bias = arrays[0], (arrays[1] if use_bias else None)
    geom = _layer_geometry(entry, config, kernel, fn)
    filters = int(config["filters"])
    expected = kl.keras_kernel_shape(geom, filters, implementation)
    if kernel.shape != expected:
        why = f"implementation {implementation} for input {geom.input_shape(1)[1:]}"
        fail(fn, "kernel", f"of shape {expected} ({why})", f"shape {kernel.shape}")
    out = geom.output_shape
    if bias is not None and bias.shape != (*out, filters):
        fail(fn, "bias", f"of shape {(*out, filters)}", f"shape {bias.shape}")
    get_activation(config["activation"], fn)  # an unknown name fails now, not at apply
    if implementation == 2:
        kernel = kl.dense_to_kernel(kernel, geom)
    elif implementation == 3:
        kernel = kl.sparse_to_kernel(kernel, geom, filters)
    if bias is not None and not geom.channels_last:
        # bias_add reshapes (not transposes) Keras's (*out, F) bias to (F, *out) here.
        bias = np.moveaxis(bias.reshape(filters, *out), 0, -1)
    same = str(config["padding"]).lower() == "same"
    public = dict(
        filters=filters,
        kernel_size=geom.kernel_size,
        strides=geom.strides,
        padding=geom.padding if same else "valid",
        data_format=geom.data_format,
        implementation=implementation,
        activation=config["activation"],
        use_bias=use_bias,
    )
    return KerasLocallyConnected(
        entry.name, public, geom.spatial_shape, geom.channels, out, kernel, bias, entry.config
    )


def _layer_geometry(entry: _Entry, config: dict, kernel: np.ndarray, fn: str) -> Geometry:
    """The layer's geometry, its input shape from ``configs``, the file or the kernel."""
    fmt = normalize_data_format(config["data_format"], fn)
    channels = None
    if "input_shape" in config:
        spatial = kl.spatial_shape(config["input_shape"], fn)
    elif entry.input_shape is not None:
        shape = entry.input_shape
        spatial, channels = (
            (shape[:-1], shape[-1]) if fmt == "channels_last" else (shape[1:], shape[0])
        )
    elif config["implementation"] == 2 and kernel.ndim % 2 == 0:
        n = kernel.ndim // 2 - 1
        spatial = kernel.shape[:n] if fmt == "channels_last" else kernel.shape[1 : n + 1]
        channels = kernel.shape[n] if fmt == "channels_last" else kernel.shape[0]
    else:
        hint = f"Pass it: configs={{{entry.name!r}: {{'input_shape': (rows, cols)}}}}."
        fail(fn, "configs", "an 'input_shape' (the file does not determine it)", "none", hint=hint)
    if channels is None:
        channels = _channels(kernel, _geometry(config, spatial, 1, entry.name), config)
    return _geometry(config, tuple(spatial), int(channels), entry.name)


def _channels(kernel: np.ndarray, geom: Geometry, config: dict) -> int:
    """``C`` from the kernel, given the geometry for one channel (a shape check follows)."""
    if config["implementation"] == 1:
        return kernel.shape[1] // geom.window_items if kernel.ndim == 3 else 1
    per_channel = kl.keras_kernel_shape(geom, int(config["filters"]), 3)[0]
    return max(kernel.size // per_channel, 1)
