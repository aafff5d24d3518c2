"""What every measured variant provides, and the problem arrays they all share."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import ml_dtypes
import numpy as np

from bench.suite import Shape
from jlocalconv.geometry import Geometry


class Skip(Exception):
    """Raised by :attr:`Candidate.build` when a variant does not support a shape."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """Arrays for one shape, identical for every candidate (float32 NumPy, channels_last).

    For a bf16 shape the values are already rounded to bf16, so every framework sees the
    same numbers; candidates cast them to their own bf16 type.

    Attributes:
      shape: the benchmark shape.
      geom: its jlocalconv geometry.
      inputs: ``(batch, *spatial, channels)``.
      kernel: Keras layout ``(output_items, feature_dim, filters)``, window flattened
        ``(k..., C)``.
      cotangent: ``(batch, *output_shape, filters)``; fwd+bwd differentiates
        ``sum(result * cotangent)`` with respect to inputs and kernel.
    """

    shape: Shape
    geom: Geometry
    inputs: np.ndarray
    kernel: np.ndarray
    cotangent: np.ndarray

    @classmethod
    def make(cls, shape: Shape, seed: int = 0) -> Problem:
        """Random operands for ``shape`` (kernel scaled by ``1/sqrt(feature_dim)``)."""
        geom = shape.geometry()
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(shape.input_shape, np.float32)
        k = rng.standard_normal(geom.kernel_shape(shape.filters), np.float32)
        k /= np.float32(np.sqrt(geom.feature_dim))
        g = rng.standard_normal(geom.result_shape(shape.batch, shape.filters), np.float32)
        x, k, g = (_round(a, shape.dtype) for a in (x, k, g))
        return cls(shape, geom, x, k, g)

    def kernel_channels_major(self) -> np.ndarray:
        """The kernel with each window flattened ``(C, k...)``, as XLA and ``F.unfold`` do."""
        n, (items, _, filters) = self.geom.ndim, self.kernel.shape
        k = self.kernel.reshape(items, *self.geom.kernel_size, self.geom.channels, filters)
        k = k.transpose(0, n + 1, *range(1, n + 1), n + 2)
        return np.ascontiguousarray(k.reshape(self.kernel.shape))


def _round(a: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return a
    return a.astype(getattr(ml_dtypes, dtype)).astype(np.float32)


@dataclasses.dataclass
class Built:
    """A candidate compiled/traced for one problem, warmed up and ready to time.

    Attributes:
      forward: runs the forward pass once and waits for it.
      forward_backward: runs value-and-gradient (inputs and kernel) once and waits.
      result: the forward result as float32 NumPy, channels_last (checked against a
        reference before timing).
      compile_s: (forward, forward+backward) compile seconds, None where not applicable.
      temp_bytes: (forward, forward+backward) XLA temp allocation, None outside XLA.
      programs: (forward, forward+backward) digests of the compiled programs
        (``bench.jax_measure.program_fingerprint``), None outside XLA.
    """

    forward: Callable[[], object]
    forward_backward: Callable[[], object]
    result: np.ndarray
    compile_s: tuple[float | None, float | None] = (None, None)
    temp_bytes: tuple[int | None, int | None] = (None, None)
    programs: tuple[str | None, str | None] = (None, None)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A measured variant: a display name, its family and a builder.

    Attributes:
      name: e.g. ``"jlocalconv:auto"``, ``"jax.lax"``, ``"tf_keras.LC2"``.
      family: ``"jlocalconv"``, ``"jax"``, ``"tf_keras"`` or ``"torch"``.
      build: ``build(problem) -> Built``; raises :class:`Skip` for unsupported shapes.
    """

    name: str
    family: str
    build: Callable[[Problem], Built]
