"""Every bad file or argument of ``keras_io.load_weights`` gets a clear error.

Damaged files are tf_keras-written fixtures (tests/fixtures, make_keras_fixtures.py) copied
into a temporary directory and broken there: a dataset deleted, bytes zeroed, a file cut in
half, an archive member replaced. ``FILE_ERRORS`` is also the source of the load_weights
table in docs/errors.md: after changing it, regenerate it with
``python tests/test_keras_io_errors.py``.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable

import pytest
from test_misuse import Misuse, check_misuse, docs_table, render_table, write_docs

h5py = pytest.importorskip("h5py")
keras_io = pytest.importorskip("jlocalconv.keras_io")

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
FIRST = FIXTURES / "lc2d_first.h5"  # layers a, b, c; model.save
LAST = FIXTURES / "lc2d_last.h5"
ARCHIVE = FIXTURES / "lc2d_last.keras"
WEIGHTS_H5 = FIXTURES / "weights_only" / "lc2d_last_weights.h5"  # model.save_weights
WEIGHTS_KERAS = FIXTURES / "weights_only" / "lc2d_last.weights.h5"
NESTED = FIXTURES / "nested" / "nested_weights.h5"  # sub-model "inner" holds "inner_lc"
NESTED_KERAS = FIXTURES / "nested" / "nested.weights.h5"
BEGIN, END = "<!-- keras-errors-table:begin -->", "<!-- keras-errors-table:end -->"
# Layer "a" of lc2d_last, as its author knows it (implementation 2: no input_shape needed).
LAST_A = dict(filters=3, kernel_size=(2, 3), strides=(2, 1), padding="same", implementation=2)


def _load_made(make: Callable[[pathlib.Path], pathlib.Path], **kwargs):
    """``load_weights`` on the file ``make`` writes into a fresh temporary directory."""
    with tempfile.TemporaryDirectory() as directory:
        return keras_io.load_weights(make(pathlib.Path(directory)), **kwargs)


def _load_damaged(source: pathlib.Path, damage: Callable[[pathlib.Path], None], **kwargs):
    """``load_weights`` on a copy of ``source`` that ``damage`` broke."""

    def make(directory: pathlib.Path) -> pathlib.Path:
        path = directory / source.name
        shutil.copy(source, path)
        damage(path)
        return path

    return _load_made(make, **kwargs)


def _delete(key: str) -> Callable[[pathlib.Path], None]:
    def damage(path: pathlib.Path) -> None:
        with h5py.File(path, "a") as f:
            del f[key]

    return damage


def _zero_tail(path: pathlib.Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-4000] + bytes(4000))


def _cut_in_half(path: pathlib.Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _replace_member(name: str, change: Callable[[bytes], bytes]) -> Callable[[pathlib.Path], None]:
    def damage(path: pathlib.Path) -> None:
        with zipfile.ZipFile(path) as archive:
            members = {member: archive.read(member) for member in archive.namelist()}
        members[name] = change(members[name])
        with zipfile.ZipFile(path, "w") as archive:
            for member, data in members.items():
                archive.writestr(member, data)

    return damage


def _text_file(directory: pathlib.Path) -> pathlib.Path:
    path = directory / "model.h5"
    path.write_text("not a model")
    return path


def _plain_h5(directory: pathlib.Path) -> pathlib.Path:
    path = directory / "plain.h5"
    with h5py.File(path, "w") as f:
        f["x"] = [0.0, 0.0]
    return path


def _zip(directory: pathlib.Path) -> pathlib.Path:
    path = directory / "other.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hi")
    return path


def _dense_model(directory: pathlib.Path) -> pathlib.Path:
    path = directory / "dense.h5"
    config = {"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense"}]}}
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.create_group("model_weights").attrs["layer_names"] = ["dense"]
    return path


_INTACT = "an intact tf.keras 2 file"

FILE_ERRORS = [
    # Not a tf.keras file.
    Misuse("`path` does not exist", lambda: keras_io.load_weights(FIXTURES / "missing.h5"),
           FileNotFoundError, "path", ("an existing file", "missing.h5")),
    Misuse("`path` not a path", lambda: keras_io.load_weights(3), TypeError, "path",
           ("a file path (str or os.PathLike)", "got 3")),
    Misuse("a file neither HDF5 nor zip", lambda: _load_made(_text_file), ValueError, "path",
           ("a tf.keras 2 .h5 model or weights file", "model.h5", "neither HDF5 nor zip")),
    Misuse("an HDF5 file not written by tf.keras", lambda: _load_made(_plain_h5), ValueError,
           "path", ("plain.h5", "a tf.keras 2 .h5", "an HDF5 file with attributes []")),
    Misuse("a zip file that is not a `.keras` archive", lambda: _load_made(_zip), ValueError,
           "path", ("other.keras", "a tf.keras 2 .h5", "a zip file holding ['readme.txt']")),
    Misuse("a model without LocallyConnected layers", lambda: _load_made(_dense_model),
           ValueError, "path", ("dense.h5", "a model with LocallyConnected1D/2D layers")),
    # Damaged files: the file and, where known, the layer are named.
    Misuse("`.h5` model whose `kernel:0` dataset is missing",
           lambda: _load_damaged(FIRST, _delete("model_weights/a/a/kernel:0")), ValueError,
           "path", ("lc2d_first.h5", "layer 'a'", _INTACT, "dataset 'a/a/kernel:0'",
                    "KeyError")),
    Misuse("`.h5` model whose `bias:0` dataset is missing",
           lambda: _load_damaged(FIRST, _delete("model_weights/b/b/bias:0")), ValueError,
           "path", ("lc2d_first.h5", "layer 'b'", _INTACT, "dataset 'b/b/bias:0'", "KeyError")),
    Misuse("`.h5` model whose last 4000 bytes are zeroed",
           lambda: _load_damaged(LAST, _zero_tail), ValueError, "path",
           ("lc2d_last.h5", "layer 'c'", _INTACT, "group 'c'", "KeyError")),
    Misuse("`.h5` file cut in half", lambda: _load_damaged(LAST, _cut_in_half), ValueError,
           "path", ("lc2d_last.h5", _INTACT, "an HDF5 file", "truncated file")),
    Misuse("`.keras` archive whose `config.json` is not JSON",
           lambda: _load_damaged(ARCHIVE, _replace_member("config.json", lambda b: b[:100])),
           ValueError, "path", ("lc2d_last.keras", _INTACT, "config.json", "JSONDecodeError")),
    Misuse("`.keras` archive whose weights file is damaged",
           lambda: _load_damaged(ARCHIVE, _replace_member(
               "model.weights.h5", lambda b: b[:-4000] + bytes(4000))),
           ValueError, "path", ("lc2d_last.keras", "layer 'a'", _INTACT,
                                "group 'layers/locally_connected2d'")),
    Misuse("weights-only `.h5` whose `kernel:0` dataset is missing",
           lambda: _load_damaged(WEIGHTS_H5, _delete("a/a/kernel:0"), configs={"a": LAST_A}),
           ValueError, "path",
           ("lc2d_last_weights.h5", "layer 'a'", _INTACT, "dataset 'a/a/kernel:0'")),
    Misuse("weights-only `.h5` whose last 4000 bytes are zeroed",
           lambda: _load_damaged(WEIGHTS_H5, _zero_tail, configs={"a": LAST_A}), ValueError,
           "path", ("lc2d_last_weights.h5", _INTACT, "the layer groups", "KeyError")),
    Misuse("`.weights.h5` whose bias (`vars/1`) is missing",
           lambda: _load_damaged(WEIGHTS_KERAS, _delete("layers/locally_connected2d/vars/1"),
                                 configs={"locally_connected2d": {**LAST_A, "use_bias": True}}),
           ValueError, "path", ("lc2d_last.weights.h5", "layer 'locally_connected2d'",
                                "a kernel and a bias for this layer", "got 1 array(s)")),
    Misuse("`.weights.h5` whose last 4000 bytes are zeroed",
           lambda: _load_damaged(WEIGHTS_KERAS, _zero_tail, configs={"locally_connected2d": {}}),
           ValueError, "path", ("lc2d_last.weights.h5", _INTACT, "the layer groups")),
    # Layers that are not in the file, or that the caller must describe.
    Misuse("unknown `layer_name`", lambda: keras_io.load_weights(FIRST, "z"), ValueError,
           "layer_name", ("lc2d_first.h5", "a LocallyConnected layer: one of ['a', 'b', 'c']",
                          "got 'z'")),
    Misuse("weights-only file without `configs`", lambda: keras_io.load_weights(WEIGHTS_H5),
           ValueError, "configs", ("lc2d_last_weights.h5", "given for a weights-only file",
                                   "['a', 'b', 'c']", "pass configs=")),
    Misuse("`configs` key not stored in a weights-only file",
           lambda: keras_io.load_weights(WEIGHTS_KERAS, configs={"a": LAST_A}), ValueError,
           "configs", ("keyed by layers stored in the file", "'locally_connected2d'", "got 'a'")),
    Misuse("`configs` key of a nested model in a weights-only `.h5`",
           lambda: keras_io.load_weights(NESTED, configs={"inner": LAST_A}), ValueError,
           "configs", ("['inner/inner_lc', 'outer_lc']", "got 'inner'",
                       "'inner' is a nested model: key its layers by their paths")),
    Misuse("`configs` key of a nested layer's own name",
           lambda: keras_io.load_weights(NESTED, configs={"inner_lc": LAST_A}), ValueError,
           "configs", ("got 'inner_lc'", "keyed by its path: ['inner/inner_lc']")),
    Misuse("`configs` key of a nested model in a `.weights.h5`",
           lambda: keras_io.load_weights(NESTED_KERAS, configs={"functional": LAST_A}),
           ValueError, "configs",
           ("got 'functional'", "key its layers by their paths",
            "['functional/layers/locally_connected2d']")),
    Misuse("weights-only layer of implementation 1 or 3 without `input_shape`",
           lambda: keras_io.load_weights(NESTED, configs={"inner/inner_lc": {
               "filters": 3, "kernel_size": (2, 2)}}), ValueError, "configs",
           ("layer 'inner/inner_lc'", "an 'input_shape'", "{'input_shape': (rows, cols)}")),
    Misuse("weights-only config without `filters`",
           lambda: keras_io.load_weights(WEIGHTS_H5, configs={"a": {"kernel_size": 2}}),
           ValueError, "configs", ("layer 'a'", "a 'filters' entry for this layer")),
    # Weights that do not fit the configuration.
    Misuse("`input_shape` that does not fit the kernel",
           lambda: keras_io.load_weights(FIXTURES / "lc1d_last.h5", "c",
                                         configs={"c": {"input_shape": (4,)}}),
           ValueError, "kernel", ("lc1d_last.h5", "layer 'c'", "of shape (40,)",
                                  "implementation 3 for input (4, 4)", "got shape (42,)")),
    Misuse("unknown `activation` in `configs`",
           lambda: keras_io.load_weights(FIRST, configs={"a": {"activation": "relu7"}}),
           ValueError, "activation", ("layer 'a'", "None, a callable, or one of", "'relu7'")),
    Misuse("`configs` not a mapping of dicts",
           lambda: keras_io.load_weights(FIRST, configs=[("a", {})]), TypeError, "configs",
           ("a mapping of layer names to config dicts",)),
]  # fmt: skip


@pytest.mark.parametrize("misuse", FILE_ERRORS, ids=lambda m: m.situation.replace("`", ""))
def test_load_weights_error_names_file_layer_and_argument(misuse):
    check_misuse(misuse)


def test_damaged_files_raise_load_weights_errors_not_raw_ones():
    """The raw h5py/json error is kept as the cause, for debugging."""
    with pytest.raises(ValueError, match=r"^load_weights\(") as info:
        _load_damaged(FIRST, _delete("model_weights/a/a/kernel:0"))
    assert isinstance(info.value.__context__, KeyError)


def test_docs_list_the_load_weights_errors():
    assert docs_table(BEGIN, END) == render_table(FILE_ERRORS), (
        "regenerate: python tests/test_keras_io_errors.py"
    )


if __name__ == "__main__":
    sys.exit(write_docs(BEGIN, END, FILE_ERRORS))
