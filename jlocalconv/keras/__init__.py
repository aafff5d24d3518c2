"""jlocalconv for Keras: Keras 3 ``LocallyConnected1D/2D/3D`` layers on the JAX backend.

``import jlocalconv.keras`` imports nothing of Keras: the names below load
:mod:`jlocalconv.keras.layers` (and Keras 3) on first access. Install with
``pip install "jlocalconv[keras]"`` and run Keras with ``KERAS_BACKEND=jax``.

Names::

    LocallyConnected1D, LocallyConnected2D, LocallyConnected3D   # the layers
    custom_objects()                                             # for keras.saving.load_model
"""

import importlib
from typing import Any

# name -> the submodule that defines it, imported on first access.
_LAZY_ATTRIBUTES = {
    "LocallyConnected1D": "layers",
    "LocallyConnected2D": "layers",
    "LocallyConnected3D": "layers",
    "custom_objects": "layers",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRIBUTES:
        module = importlib.import_module(f"jlocalconv.keras.{_LAZY_ATTRIBUTES[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'jlocalconv.keras' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY_ATTRIBUTES])


__all__ = sorted(_LAZY_ATTRIBUTES)
