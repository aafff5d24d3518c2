"""jlocalconv: Keras-exact locally connected convolution for JAX/XLA.

Public API::

    local_conv, local_conv1d, local_conv2d, local_conv3d   # the operation
    local_conv_transpose, local_conv{1,2,3}d_transpose     # its adjoint in the input
    conv_output_shape, kernel_shape                        # static shape helpers

    LocalConvSpec                                          # the static arguments of a call

Every public submodule (the package's module files whose names do not start with ``_``) is
an attribute, imported on first access so that optional dependencies stay optional:
``jlocalconv.nnx.LocallyConnected2D`` works after a plain ``import jlocalconv``, while
flax/equinox/h5py are imported only by the users who touch ``nnx``/``linen``/``eqx``/
``keras_io``. ``import jlocalconv`` imports no Keras code. See the README's "Architecture"
section for what each module holds.
"""

import importlib
import pkgutil
from types import ModuleType

from jlocalconv.geometry import conv_output_shape, kernel_shape
from jlocalconv.ops import local_conv, local_conv1d, local_conv2d, local_conv3d
from jlocalconv.spec import LocalConvSpec
from jlocalconv.transpose import (
    local_conv1d_transpose,
    local_conv2d_transpose,
    local_conv3d_transpose,
    local_conv_transpose,
)

__version__ = "0.1.0"

# Derived from the files, so a new module is reachable without editing a list.
_SUBMODULES = frozenset(
    info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")
)


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        return importlib.import_module(f"jlocalconv.{name}")
    raise AttributeError(f"module 'jlocalconv' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBMODULES})


__all__ = [
    "LocalConvSpec",
    "conv_output_shape",
    "kernel_shape",
    "local_conv",
    "local_conv1d",
    "local_conv1d_transpose",
    "local_conv2d",
    "local_conv2d_transpose",
    "local_conv3d",
    "local_conv3d_transpose",
    "local_conv_transpose",
]
