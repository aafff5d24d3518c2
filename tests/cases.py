"""Geometries shared by the numerical tests: every spatial rank, both data formats,
non-square windows and inputs, strides, every padding mode, dilation and bias."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

import jlocalconv


@dataclasses.dataclass(frozen=True)
class Case:
    spatial: tuple[int, ...]
    channels: int
    filters: int
    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    padding: object = "valid"
    dilation: int | tuple[int, ...] | None = None
    data_format: str = "channels_last"
    batch: int = 2
    bias: str | None = None  # None, "filters" or "positions"

    @property
    def input_shape(self):
        if self.data_format == "channels_last":
            return (self.batch, *self.spatial, self.channels)
        return (self.batch, self.channels, *self.spatial)

    @property
    def dil(self):
        d = self.dilation or 1
        return (d,) * len(self.spatial) if isinstance(d, int) else d

    @property
    def output_shape(self):
        return jlocalconv.conv_output_shape(
            self.spatial, self.kernel_size, self.strides, self.padding, self.dil
        )

    def geometry(self):
        from jlocalconv.geometry import make_geometry

        return make_geometry(self.input_shape, self.kernel_size, self.strides, self.padding,
                             self.dil, self.data_format)  # fmt: skip

    def arrays(self, seed=0, dtype=np.float32):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(self.input_shape).astype(dtype)
        shape = jlocalconv.kernel_shape(
            self.input_shape,
            self.filters,
            self.kernel_size,
            self.strides,
            self.padding,
            self.dil,
            self.data_format,
        )
        k = (rng.standard_normal(shape) / math.sqrt(shape[1])).astype(dtype)
        b = None
        if self.bias == "filters":
            b = rng.standard_normal((self.filters,)).astype(dtype)
        elif self.bias == "positions":
            b = rng.standard_normal((*self.output_shape, self.filters)).astype(dtype)
        return x, k, b

    def kwargs(self):
        return dict(padding=self.padding, dilation=self.dil)

    def __str__(self):
        fmt = "cl" if self.data_format == "channels_last" else "cf"
        sp = "x".join(map(str, self.spatial))
        return (
            f"{len(self.spatial)}d-{fmt}-in{sp}-c{self.channels}f{self.filters}-k{self.kernel_size}"
            f"-s{self.strides}-p{self.padding}-d{self.dil}-b{self.batch}-bias{self.bias}"
        ).replace(" ", "")


CL, CF = "channels_last", "channels_first"

CASES = [
    # 1-D
    Case((10,), 3, 4, (3,), (1,)),
    Case((11,), 2, 3, (4,), (2,), data_format=CF, bias="positions"),
    Case((9,), 1, 2, (3,), (1,), padding="causal", dilation=(2,)),
    Case((8,), 2, 2, (3,), (3,), padding="same", data_format=CF, bias="filters"),
    Case((7,), 3, 1, (2,), (1,), padding=((2, 1),), batch=1),
    # 2-D
    Case((5, 6), 3, 4, (3, 2), (1, 1)),
    Case((7, 6), 2, 3, (3, 3), (2, 1), data_format=CF, bias="positions"),
    Case((6, 5), 1, 2, (2, 3), (1, 2), padding="same", bias="filters"),
    Case((6, 7), 2, 3, (3, 2), (2, 2), padding="SAME", data_format=CF),
    Case((8, 7), 2, 2, (3, 2), (1, 1), dilation=(2, 3)),
    Case((7, 7), 3, 2, (2, 2), (2, 1), padding=1, dilation=(2, 1), data_format=CF),
    Case((5, 4), 2, 3, (3, 3), (1, 1), padding=((1, 0), (2, 1)), batch=1, bias="positions"),
    Case((5, 5), 1, 1, (5, 5), (1, 1), batch=3),
    Case((6, 6), 2, 2, (3, 3), (1, 1), padding=(1, 2), dilation=2, bias="filters"),
    # 3-D
    Case((4, 5, 3), 2, 3, (2, 3, 2), (1, 1, 1)),
    Case((5, 4, 4), 2, 2, (3, 2, 2), (2, 1, 2), data_format=CF, bias="positions"),
    Case((4, 4, 4), 1, 2, (2, 2, 2), (1, 2, 1), padding="same", dilation=(1, 1, 2)),
]
