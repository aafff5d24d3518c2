"""jlocalconv: Keras-exact locally connected convolution for JAX/XLA.

Public API::

    local_conv, local_conv1d, local_conv2d, local_conv3d   # the operation
    local_conv_transpose, local_conv{1,2,3}d_transpose     # its adjoint in the input
    conv_output_shape, kernel_shape                        # static shape helpers

Submodules (imported on first attribute access, so optional dependencies stay optional):
``geometry``, ``implementations``, ``layout``, ``keras_io``, ``sharding``, and the layers
``nnx`` (Flax NNX), ``linen`` (Flax Linen), ``eqx`` (Equinox) and ``keras`` (Keras 3).
"""

import importlib
from types import ModuleType

from jlocalconv.geometry import conv_output_shape, kernel_shape
from jlocalconv.ops import local_conv, local_conv1d, local_conv2d, local_conv3d
from jlocalconv.transpose import (
    local_conv1d_transpose,
    local_conv2d_transpose,
    local_conv3d_transpose,
    local_conv_transpose,
)

__version__ = "0.1.0"

_LAZY_SUBMODULES = frozenset(
    {
        "geometry",
        "implementations",
        "layout",
        "keras_io",
        "sharding",
        "nnx",
        "linen",
        "eqx",
        "keras",
    }
)


def __getattr__(name: str) -> ModuleType:
    # `jlocalconv.nnx.LocallyConnected2D` works after a plain `import jlocalconv`, while
    # flax/equinox/h5py are imported only by the users who touch those submodules.
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"jlocalconv.{name}")
    raise AttributeError(f"module 'jlocalconv' has no attribute {name!r}")


__all__ = [
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
