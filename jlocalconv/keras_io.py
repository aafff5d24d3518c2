"""tf.keras 2 ``LocallyConnected1D/2D`` weights from files: :func:`load_weights`.

A thin re-export, kept for the documented path ``jlocalconv.keras_io.load_weights``; the
reader lives in :mod:`jlocalconv.keras.reader` (see its docstring for the file formats).
Importing this module imports h5py (``pip install "jlocalconv[keras]"``).

May import: ``keras.reader``.

Example:
  >>> from jlocalconv import keras_io
  >>> from jlocalconv.keras import reader
  >>> keras_io.load_weights is reader.load_weights
  True
"""

from jlocalconv.keras.reader import KerasLocallyConnected, load_weights

__all__ = ["KerasLocallyConnected", "load_weights"]
