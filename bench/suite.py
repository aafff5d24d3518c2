"""The benchmark shapes: the issue-3 suite, real model layers, a smoke suite and a GPU variant."""

from __future__ import annotations

import dataclasses

from jlocalconv.geometry import Geometry, make_geometry


@dataclasses.dataclass(frozen=True)
class Shape:
    """One benchmark problem: channels_last inputs, Keras-layout kernel.

    ``dtype`` is the dtype of inputs and kernel; for ``"bfloat16"`` jlocalconv accumulates
    in float32 (``preferred_element_type``) and peers do what their bf16 path does.
    """

    key: str
    batch: int
    spatial: tuple[int, ...]
    channels: int
    filters: int
    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    padding: str = "valid"
    dtype: str = "float32"
    source: str = ""
    dilation: tuple[int, ...] = ()  # () is no dilation

    @property
    def ndim(self) -> int:
        return len(self.spatial)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.batch, *self.spatial, self.channels)

    def geometry(self) -> Geometry:
        """The jlocalconv geometry of this problem (channels_last)."""
        return make_geometry(
            self.input_shape,
            self.kernel_size,
            self.strides,
            self.padding,
            self.dilation or 1,
            "channels_last",
        )

    def label(self) -> str:
        """``"N, HxW, C->F, kxk, s[, same][, dil d][, bf16]"`` as the issue writes shapes."""
        x = "x".join
        parts = [
            str(self.batch),
            x(map(str, self.spatial)),
            f"{self.channels}->{self.filters}",
            x(map(str, self.kernel_size)),
            x(map(str, sorted(set(self.strides)))),
        ]
        parts += [self.padding] if self.padding != "valid" else []
        parts += [f"dil {x(map(str, self.dilation))}"] if any(d > 1 for d in self.dilation) else []
        parts += ["bf16"] if self.dtype == "bfloat16" else []
        return ", ".join(parts)

    def scaled(self, factor: int) -> Shape:
        """The same problem with ``factor`` times the batch."""
        return dataclasses.replace(self, batch=self.batch * factor)

    def kernel_items(self) -> int:
        """Number of kernel weights, ``output_items * feature_dim * filters``."""
        geom = self.geometry()
        return geom.output_items * geom.feature_dim * self.filters


def _s(key, batch, spatial, channels, filters, window, stride, **kw) -> Shape:
    n = len(spatial)
    return Shape(key, batch, spatial, channels, filters, (window,) * n, (stride,) * n, **kw)


# The issue-3 suite (the shapes its geomean targets are computed on).
SUITE: tuple[Shape, ...] = (
    _s("base", 32, (32, 32), 16, 16, 3, 1),
    _s("mnist5x5", 32, (28, 28), 1, 8, 5, 1),
    _s("batch64", 64, (16, 16), 32, 32, 3, 1),
    _s("batch1", 1, (32, 32), 64, 64, 3, 1),
    _s("stride2", 128, (12, 12), 16, 16, 3, 2),
    _s("large5x5", 16, (64, 64), 8, 8, 5, 1),
    _s("same", 8, (24, 24), 32, 64, 3, 1, padding="same"),
    _s("1d", 32, (256,), 32, 32, 7, 1),
    _s("3d", 4, (12, 12, 12), 4, 8, 3, 1),
    _s("bf16", 32, (32, 32), 16, 16, 3, 1, dtype="bfloat16"),
)

# Locally connected layers of published models, at the batches their users train with.
# ``source`` says where each comes from; the report prints it beside the figures.
_DEEPFACE = "DeepFace (Taigman et al., CVPR 2014), Fig. 2"
REAL_LAYERS: tuple[Shape, ...] = (
    _s("deepface_l4", 8, (63, 63), 16, 16, 9, 1, source=f"{_DEEPFACE}, L4"),
    _s("deepface_l5", 8, (55, 55), 16, 16, 7, 2, source=f"{_DEEPFACE}, L5"),
    _s("deepface_l6", 32, (25, 25), 16, 16, 5, 1, source=f"{_DEEPFACE}, L6"),
    _s(
        "yolov1_local",
        8,
        (7, 7),
        1024,
        256,
        3,
        1,
        padding="same",
        source="YOLOv1 (Redmon et al., CVPR 2016), the 'local' layer of yolov1.cfg",
    ),
    _s(
        "genomic_1d",
        32,
        (20000,),
        1,
        4,
        10,
        10,
        source="1-D genomic prediction over SNP markers (locally connected first layer, "
        "e.g. Pook et al., Genetics 2020)",
    ),
    _s(
        "medical_3d",
        4,
        (32, 32, 32),
        1,
        8,
        3,
        1,
        source="3-D medical volume patch (32^3 voxels, one modality), first layer",
    ),
)

# Real layers whose kernel dwarfs their windows at batch <= 8: their bound is the kernel
# bytes moved, and the issue sets bandwidth-fraction targets for them.
KERNEL_BOUND = ("deepface_l4", "yolov1_local")

# ``python -m bench``: the suite, then the real layers.
DEFAULT: tuple[Shape, ...] = SUITE + REAL_LAYERS

# One tiny shape with padding and strides: the smoke run checks the plumbing, not speed.
SMOKE: tuple[Shape, ...] = (_s("tiny", 2, (7, 6), 2, 3, 3, 2, padding="same"),)

GPU_BATCH_FACTOR = 8


def select(shapes: tuple[Shape, ...], wanted: list[str] | None) -> tuple[Shape, ...]:
    """The shapes whose key (or 1-based index) is in ``wanted``; all when ``wanted`` is None.

    Raises:
      ValueError: naming the unknown keys and the valid ones.
    """
    if not wanted:
        return shapes
    by_name = {s.key: s for s in shapes} | {str(i): s for i, s in enumerate(shapes, 1)}
    unknown = [w for w in wanted if w not in by_name]
    if unknown:
        raise ValueError(f"--shapes: unknown {unknown}; choose from {[s.key for s in shapes]}")
    return tuple(dict.fromkeys(by_name[w] for w in wanted))
