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
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
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
            *input_shape)`` as the layer's ``data_format``. Floating inputs are cast to the
            kernel's dtype, as Keras casts a layer's inputs to its dtype (so float64 NumPy
            input works, computed in float32 for a float32 file).
          precision, implementation: forwarded to :func:`jlocalconv.local_conv`.

        Returns:
          ``(batch, *output_shape, filters)`` or ``(batch, filters, *output_shape)``.
        """
        config = self.config
        dtype = getattr(inputs, "dtype", None)
        if dtype is not None and jnp.issubdtype(dtype, jnp.floating):
            inputs = jnp.asarray(inputs, self.kernel.dtype)
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
    location: str  # its weights: a group path in a .keras archive, "<group>/<layer>" in a .h5


class _Source(NamedTuple):
    """An open file: its model config (None for weights-only) and how to read its weights."""

    path: str
    model_config: dict | None
    read: Callable[[_Entry], list[np.ndarray]]
    stored: dict[str, str]  # weights-only: {key: location} of the layers holding weights
    archive: bool  # weights in the .keras layout (layers/<snake_case>/vars)


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
      path: a ``.h5`` model file (``model.save``), a ``.keras`` archive, or a weights-only
        file (``model.save_weights``, ``.h5`` or ``.weights.h5``).
      layer_name: the one layer to read; all LocallyConnected layers when None.
      configs: per layer name, Keras config entries that override or complete the file's:
        any of ``filters``, ``kernel_size``, ``strides``, ``padding``, ``data_format``,
        ``implementation``, ``activation``, ``use_bias``, plus ``input_shape`` (the spatial
        shape). Required for weights-only files, which hold no configuration: there the
        layers read are exactly those named, each needing ``kernel_size``, ``filters``
        and (except implementation 2) ``input_shape``; the rest default as in tf.keras.
        Keys of a weights-only file are paths, as the file stores them (errors list them):
        in a ``.h5`` file a layer's name, and for a layer of a nested model
        ``"<model>/<layer>"`` (e.g. ``"inner/inner_lc"``, the model being the top-level
        one that holds it); in a ``.weights.h5`` file, which names layers by class and
        position, the group path under ``layers/`` (``"locally_connected2d_1"``, or
        ``"functional/layers/locally_connected2d"`` inside a nested model). Model files
        key layers by name, nested or not.

    Returns:
      ``{layer name: KerasLocallyConnected}`` in the model's layer order (for a weights-only
      file, ``configs``'s keys in its order).

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: for a file that is not a tf.keras 2 model or weights file, a damaged file
        (a missing or unreadable dataset, group, attribute or archive member; a model
        config that is not JSON), a weights-only file without ``configs``, an unknown
        ``layer_name`` or ``configs`` key (the message lists the layers there are, and
        how to key a nested layer), a file without LocallyConnected layers, or weights
        that do not fit the configuration. Messages name the file and, where known, the
        layer (docs/errors.md lists them).
      ImportError: without h5py (``pip install "jlocalconv[keras]"``).

    Example:
      >>> from jlocalconv.keras_io import load_weights
      >>> layer = load_weights("tests/fixtures/lc2d_first.h5", "b")["b"]
      >>> layer.config["implementation"], layer.config["padding"]   # Keras's "same"
      (2, ((1, 0), (1, 1)))
      >>> layer.input_shape, layer.channels_in, layer.kernel.shape, layer.bias.shape
      ((3, 5), 3, (9, 18, 2), (3, 3, 2))
      >>> nested = "tests/fixtures/nested/nested_weights.h5"   # sub-model "inner"
      >>> config = {"filters": 3, "kernel_size": 2, "input_shape": (6, 5)}
      >>> list(load_weights(nested, configs={"inner/inner_lc": config}))
      ['inner/inner_lc']
    """
    configs = _check_configs(configs)
    with _open(path) as source:
        entries = _entries(source, configs)
        names = [entry.name for entry in entries]
        for name in [*configs, *([layer_name] if layer_name is not None else [])]:
            if name not in names:
                arg = "layer_name" if name == layer_name else "configs"
                fail(
                    _where(source.path),
                    arg,
                    f"a LocallyConnected layer: one of {names}",
                    repr(name),
                )
        if layer_name is not None:
            entries = [entry for entry in entries if entry.name == layer_name]
        return {e.name: _convert(source, e, configs.get(e.name, {})) for e in entries}


def _where(path: str, layer: str | None = None) -> str:
    """The ``fn`` part of an error: the function, the file and the layer if known."""
    return f"{_FN}({path!r})" + (f": layer {layer!r}" if layer is not None else "")


def _check_configs(configs: object) -> dict[str, dict[str, Any]]:
    if configs is None:
        return {}
    if not isinstance(configs, Mapping) or not all(
        isinstance(c, Mapping) for c in configs.values()
    ):
        fail(_FN, "configs", "a mapping of layer names to config dicts", configs, exc=TypeError)
    return {str(name): dict(config) for name, config in configs.items()}


# What h5py, json and zipfile raise for damaged content (h5py: KeyError for a missing
# object or a bad header, OSError for unreadable data, RuntimeError for broken links).
_DAMAGE = (KeyError, OSError, RuntimeError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


@contextlib.contextmanager
def _reading(path: str, what: str, layer: str | None = None) -> Iterator[None]:
    """Turns a raw read error inside into a ValueError naming the file, ``what`` and layer.

    Wraps reads only (h5py, json, zipfile), never code that raises jlocalconv's own errors.
    """
    try:
        yield
    except _DAMAGE as err:
        got = f"{what} that cannot be read ({type(err).__name__}: {err})"
        fail(_where(path, layer), "path", "an intact tf.keras 2 file", got)


@contextlib.contextmanager
def _open(path: str | os.PathLike) -> Iterator[_Source]:
    if not isinstance(path, (str, os.PathLike)):
        fail(_FN, "path", "a file path (str or os.PathLike)", path, exc=TypeError)
    path = os.fspath(path)
    if not os.path.isfile(path):
        fail(_FN, "path", "an existing file", repr(path), exc=FileNotFoundError)
    expected = "a tf.keras 2 .h5 model or weights file, or a .keras archive"
    if zipfile.is_zipfile(path):
        with _reading(path, "a zip archive"):
            archive = zipfile.ZipFile(path)
        with archive:
            names = archive.namelist()
            if "config.json" not in names or "model.weights.h5" not in names:
                fail(_where(path), "path", expected, f"a zip file holding {names}")
            with _reading(path, "config.json"):
                config = json.loads(archive.read("config.json"))
            with _reading(path, "model.weights.h5"):
                f = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
        with f:
            yield _Source(path, config, _archive_reader(f, path), {}, True)
    elif h5py.is_hdf5(path):
        with _reading(path, "an HDF5 file"):
            f = h5py.File(path, "r")
        with f:
            yield _h5_source(f, path, expected)
    else:
        fail(_FN, "path", expected, f"{path!r}, neither HDF5 nor zip")


def _h5_source(f: Any, path: str, expected: str) -> _Source:
    """The model (``model.save``) or weights-only (``model.save_weights``) HDF5 file ``f``."""
    with _reading(path, "the file's attributes"):
        attrs = set(f.attrs)
        archive_layout = isinstance(f.get("layers"), h5py.Group)
    if "model_config" in attrs:
        with _reading(path, "the model config"):
            config, root = json.loads(_text(f.attrs["model_config"])), f["model_weights"]
        return _Source(path, config, _h5_reader(root, path), {}, False)
    if archive_layout:  # model.save_weights("w.weights.h5")
        with _reading(path, "the layer groups"):
            return _Source(path, None, _archive_reader(f, path), _archive_layers(f), True)
    if "layer_names" not in attrs:
        fail(_where(path), "path", expected, f"an HDF5 file with attributes {sorted(attrs)}")
    with _reading(path, "the layer groups"):
        return _Source(path, None, _h5_reader(f, path), _h5_layers(f), False)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _weight_names(group: Any) -> list[str]:
    return [_text(w) for w in group.attrs.get("weight_names", [])]


def _h5_layers(root: Any) -> dict[str, str]:
    """``{key: "<group>/<layer>"}`` of a tf.keras 2 HDF5 weights file's layers with weights.

    Each top-level group lists its weights as ``<layer>/kernel:0``, also for the layers of a
    nested model (group ``inner``, weights ``inner_lc/kernel:0``): those are keyed by path.
    """
    layers: dict[str, str] = {}
    for group_name in map(_text, root.attrs.get("layer_names", [])):
        for weight in _weight_names(root[group_name]):
            layer = weight.split("/")[-2] if "/" in weight else group_name
            key = group_name if layer == group_name else f"{group_name}/{layer}"
            layers.setdefault(key, f"{group_name}/{layer}")
    return layers


def _h5_reader(root: Any, path: str) -> Callable[[_Entry], list[np.ndarray]]:
    def read(entry: _Entry) -> list[np.ndarray]:
        """The arrays of the entry's layer, kernel first, from its top-level group."""
        group_name, layer = entry.location.split("/")[0], entry.location.split("/")[-1]
        with _reading(path, f"group {group_name!r}", entry.name):
            group = root[group_name]
            names = [w for w in _weight_names(group) if w.split("/")[-2:-1] == [layer]]
        arrays = []
        for name in names:
            with _reading(path, f"dataset {f'{group_name}/{name}'!r}", entry.name):
                arrays.append(np.asarray(group[name]))
        return arrays

    return read


def _archive_layers(f: Any) -> dict[str, str]:
    """``{key: group path}`` of a ``.weights.h5`` file's layers with weights.

    Groups are ``layers/<snake_case>[_<n>]/vars`` (nested: ``layers/<model>/layers/...``); the
    key is the path under the top ``layers/``.
    """
    found: dict[str, str] = {}

    def visit(name: str, obj: Any) -> None:
        if name.startswith("layers/") and name.endswith("/vars") and len(obj):
            found[name[len("layers/") : -len("/vars")]] = name[: -len("/vars")]

    f["layers"].visititems(lambda name, obj: visit(f"layers/{name}", obj))
    return found


def _archive_reader(f: Any, path: str) -> Callable[[_Entry], list[np.ndarray]]:
    def read(entry: _Entry) -> list[np.ndarray]:
        """The arrays of ``<location>/vars/0, 1, ...`` (kernel first)."""
        with _reading(path, f"group {entry.location!r}", entry.name):
            group = f[f"{entry.location}/vars"]
            return [np.asarray(group[key]) for key in sorted(group, key=int)]

    return read


def _entries(source: _Source, configs: dict) -> list[_Entry]:
    if source.model_config is None:
        return _weights_only_entries(source, configs)
    found: list[_Entry] = []
    _walk(source.model_config, "", None, source, found)
    if not found:
        fail(
            _where(source.path),
            "path",
            "a model with LocallyConnected1D/2D layers",
            "a model without any",
        )
    return found


def _weights_only_entries(source: _Source, configs: dict) -> list[_Entry]:
    stored = list(source.stored)
    if not configs:
        hint = (
            "A weights-only file (model.save_weights) holds no layer configuration: pass "
            "configs={name: {'filters': ..., 'kernel_size': ..., 'input_shape': ...}}, "
            "or read the model file written by model.save."
        )
        fail(
            _where(source.path),
            "configs",
            f"given for a weights-only file (layers {stored})",
            "None",
            hint=hint,
        )
    for name in configs:
        if name not in source.stored:
            expected = f"keyed by layers stored in the file, {stored}"
            fail(_where(source.path), "configs", expected, repr(name), hint=_key_hint(name, stored))
    return [_Entry(name, {}, None, source.stored[name]) for name in configs]


def _key_hint(name: str, stored: list[str]) -> str:
    """How to key ``name`` if it is a nested model, or a nested layer's own name."""
    inside = [key for key in stored if key.startswith(f"{name}/")]
    if inside:
        return f"{name!r} is a nested model: key its layers by their paths, {inside}."
    paths = [key for key in stored if key.rsplit("/", 1)[-1] == name]
    if paths:
        return f"A layer of a nested model is keyed by its path: {paths}."
    return ""


def _walk(model: dict, prefix: str, top: str | None, file: _Source, found: list[_Entry]) -> None:
    """Collects the LocallyConnected layers of a (possibly nested) model config in order.

    Tracks each layer's output shape where it is known (inputs and locally connected
    layers), so a layer's input shape can come from the layer that feeds it. ``top`` is the
    top-level layer holding a nested model's layers: their weights are in its HDF5 group.
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
            location = archive_path if file.archive else f"{top or name}/{name}"
            found.append(_Entry(name, config, shape, location))
            output = _output_shape(config, shape, _where(file.path, name))
        elif "layers" in config:
            _walk(layer, archive_path + "/", top or name, file, found)
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


def _output_shape(config: dict, shape: tuple[int, ...] | None, fn: str) -> tuple[int, ...] | None:
    if shape is None:
        return None
    fmt = normalize_data_format(config.get("data_format"), fn)
    spatial, channels = (shape[:-1], shape[-1]) if fmt == "channels_last" else (shape[1:], shape[0])
    geom = _geometry(config, spatial, channels, fn)
    filters = int(config["filters"])
    return geom.result_shape(1, filters)[1:]


def _geometry(config: dict, spatial: tuple[int, ...], channels: int, fn: str) -> Geometry:
    return kl.keras_geometry(
        spatial,
        channels,
        config["kernel_size"],
        config["strides"],
        config["padding"],
        config["data_format"],
        fn,
    )


def _convert(source: _Source, entry: _Entry, override: dict) -> KerasLocallyConnected:
    """One layer's weights and configuration in jlocalconv's layout."""
    fn = _where(source.path, entry.name)
    arrays = source.read(entry)
    config = {**_DEFAULTS, **entry.config, **override}
    for key in ("filters", "kernel_size"):
        if key not in config:
            fail(fn, "configs", f"a {key!r} entry for this layer", f"{sorted(config)}")
    implementation = config["implementation"]
    if implementation not in (1, 2, 3):
        fail(fn, "implementation", "1, 2 or 3", repr(implementation))
    use_bias = bool(config.get("use_bias", len(arrays) == 2))
    if len(arrays) != 1 + use_bias:
        held = "a kernel and a bias" if use_bias else "a kernel (use_bias=False)"
        fail(fn, "path", f"a file holding {held} for this layer", f"{len(arrays)} array(s)")
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
    """The layer's geometry, its input shape from ``configs``, the file or the kernel.

    ``C`` comes from the file's input shape when that is used, else from the kernel.
    """
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
    else:
        examples = {1: "(steps,)", 2: "(rows, cols)", None: "(steps,) or (rows, cols)"}
        example = examples.get(_ndim(config), examples[None])
        hint = f"Pass it: configs={{{entry.name!r}: {{'input_shape': {example}}}}}."
        fail(fn, "configs", "an 'input_shape' (the file does not determine it)", "none", hint=hint)
    if channels is None:
        channels = _channels(kernel, _geometry(config, tuple(spatial), 1, fn), config)
    return _geometry(config, tuple(spatial), int(channels), fn)


def _ndim(config: dict) -> int | None:
    """The layer's spatial rank if its config tells (a tuple ``kernel_size`` or ``strides``)."""
    for key in ("kernel_size", "strides"):
        if isinstance(config.get(key), (list, tuple)):
            return len(config[key])
    return None


def _channels(kernel: np.ndarray, geom: Geometry, config: dict) -> int:
    """``C`` from the kernel, given the geometry for one channel (a shape check follows).

    Implementation 1 holds ``prod(kernel_size) * C`` features, 2 the ``C`` axis of its dense
    kernel, 3 ``C`` times the one-channel count of values.
    """
    implementation = config["implementation"]
    if implementation == 1:
        channels = kernel.shape[1] // geom.window_items if kernel.ndim == 3 else 1
    elif implementation == 2:
        if kernel.ndim != 2 * geom.ndim + 2:
            return 1
        channels = kernel.shape[geom.ndim] if geom.channels_last else kernel.shape[0]
    else:
        channels = kernel.size // kl.keras_kernel_shape(geom, int(config["filters"]), 3)[0]
    return max(channels, 1)
