"""jlocalconv: Keras-exact locally connected convolution for JAX/XLA.

Public API::

    local_conv, local_conv1d, local_conv2d, local_conv3d   # the operation
    conv_output_shape, kernel_shape                        # static shape helpers
"""

from jlocalconv.geometry import conv_output_shape, kernel_shape
from jlocalconv.ops import local_conv, local_conv1d, local_conv2d, local_conv3d

__version__ = "0.1.0"

__all__ = [
    "conv_output_shape",
    "kernel_shape",
    "local_conv",
    "local_conv1d",
    "local_conv2d",
    "local_conv3d",
]
