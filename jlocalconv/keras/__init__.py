"""Everything about Keras, in one subpackage.

Submodules:

* :mod:`jlocalconv.keras.reader`: tf.keras 2 ``LocallyConnected1D/2D`` weights from
  ``.h5``/``.keras`` files, read with h5py alone (:func:`load_weights`);
* :mod:`jlocalconv.keras.converters`: Keras's kernels of implementations 2 (dense) and 3
  (sparse) <-> jlocalconv's (implementation 1's layout is already jlocalconv's), and
  Keras's own ``"same"`` padding;
* :mod:`jlocalconv.keras.activations`: Keras activation names -> JAX functions (tf.keras 2
  semantics), shared by the reader and the layers;
* :mod:`jlocalconv.keras.layers`: Keras 3 ``LocallyConnected1D/2D/3D`` layers on the JAX
  backend (tf.keras 2's arguments and weights) and :func:`custom_objects` for
  ``keras.saving.load_model``; Keras 3 is imported on first use of these names.

The names below are exported lazily (``jlocalconv.keras.load_weights`` imports the reader,
and h5py, on first use): importing ``jlocalconv.keras`` imports neither Keras nor h5py.
``jlocalconv.keras_io`` and ``jlocalconv.layout``'s Keras converters re-export the same
functions.

May import: the core modules (``ops``, ``geometry``, ``_validate``, ``_errors``, ...); no core
module imports this package, except the layers (``keras.activations``).

Example:
  >>> import jlocalconv.keras
  >>> "load_weights" in dir(jlocalconv.keras)    # listed; imported (with h5py) on first use
  True
  >>> jlocalconv.keras.get_activation("relu").__name__
  'relu'
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

# Public name -> the submodule defining it. A submodule added here exports by adding its
# names to this table.
_EXPORTS = {
    "KerasLocallyConnected": "reader",
    "load_weights": "reader",
    "from_keras_dense": "converters",
    "from_keras_sparse": "converters",
    "to_keras_dense": "converters",
    "to_keras_sparse": "converters",
    "keras_padding": "converters",
    "KERAS_ACTIVATIONS": "activations",
    "get_activation": "activations",
    "LocallyConnected1D": "layers",
    "LocallyConnected2D": "layers",
    "LocallyConnected3D": "layers",
    "custom_objects": "layers",
}

_SUBMODULES = frozenset(info.name for info in pkgutil.iter_modules(__path__))


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBMODULES, *_EXPORTS})


__all__ = sorted(_EXPORTS)  # resolved by __getattr__
