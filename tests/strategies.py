"""Hypothesis strategies that draw whole local-convolution problems, and the profile runner.

A drawn :class:`Problem` is a :class:`cases.Case` geometry (1-3 spatial dims, both data
formats, window, strides, dilation, every padding mode, batch >= 0, channels and filters
>= 1, an optional bias) plus a dtype and a seed. Every property runs twice: under the
"fast" profile in the default (CI) run and under the "slow" profile, marked ``slow``, in
``pytest -m slow`` (profiles are registered in ``tests/conftest.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import CF, CL, Case
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import local_conv_ref, resolve_padding

import jlocalconv
from jlocalconv.geometry import Geometry, make_geometry
from jlocalconv.implementations import choose

FLOAT_DTYPES = ("float32", "bfloat16", "float16", "float64")
PROFILES = [
    pytest.param("fast", id="fast"),
    pytest.param("slow", id="slow", marks=pytest.mark.slow),
]


def run(profile: str, check, *, share: float = 1.0, **strategies) -> None:
    """Runs ``check(**drawn)`` on examples from ``strategies`` under ``profile``'s settings.

    ``share`` scales the profile's ``max_examples`` for properties that compile many
    programs per example (the whole default run must stay well under a minute).
    """
    base = settings.get_profile(profile)
    examples = max(1, round(share * base.max_examples))
    given(**strategies)(settings(base, max_examples=examples)(check))()


@dataclasses.dataclass(frozen=True)
class Problem:
    """One drawn problem: a geometry, an operand dtype and the seed of its arrays.

    ``accumulate_f32`` asks for ``preferred_element_type=float32`` (low precision only).
    """

    case: Case
    dtype: str = "float32"
    accumulate_f32: bool = False
    seed: int = 0

    @property
    def result_dtype(self) -> str:
        return "float32" if self.accumulate_f32 else self.dtype

    def x64(self):
        """The context float64 operands need (x64 is never switched on globally)."""
        return jax.enable_x64(True) if self.dtype == "float64" else contextlib.nullcontext()

    def arrays(self, seed: int | None = None):
        """``(inputs, kernel, bias)`` as NumPy arrays of ``dtype`` (bias may be None)."""
        x, k, b = self.case.arrays(self.seed if seed is None else seed, dtype=np.float64)
        cast = lambda a: None if a is None else a.astype(jnp.dtype(self.dtype))
        return cast(x), cast(k), cast(b)

    def static(self, implementation: str = "auto") -> dict:
        """The static (hashable) keyword arguments of ``local_conv`` for this problem."""
        c = self.case
        return dict(
            kernel_size=c.kernel_size,
            strides=c.strides,
            data_format=c.data_format,
            padding=c.padding,
            dilation=c.dil,
            implementation=implementation,
            preferred_element_type=jnp.float32 if self.accumulate_f32 else None,
        )

    def apply(self, x, k, b=None, implementation="auto", *, jit=True):
        """``jlocalconv.local_conv`` on this problem (jitted; compiled once per shape)."""
        fn = _local_conv_jit if jit else _local_conv
        return fn(x, k, b, **self.static(implementation))

    def lower(self, x, k, implementation="auto"):
        """The jitted call lowered for ``x`` and ``k`` (arrays or ShapeDtypeStructs)."""
        return _local_conv_jit.lower(x, k, None, **self.static(implementation))

    def geometry(self) -> Geometry:
        c = self.case
        args = (c.kernel_size, c.strides, c.padding, c.dil, c.data_format)
        return make_geometry(c.input_shape, *args)

    def resolved(self, implementation: str) -> str:
        """The implementation ``implementation`` runs ("auto" resolved as the library does)."""
        if implementation != "auto":
            return implementation
        c, backend = self.case, jax.default_backend()
        return choose(self.geometry(), c.batch, c.filters, jnp.dtype(self.dtype), backend)

    def reference(self, x, k, b=None):
        """The float64 NumPy reference on the very same (already rounded) operands."""
        c = self.case
        args = (c.kernel_size, c.strides, c.data_format, c.padding, c.dil)
        return local_conv_ref(_f64(x), _f64(k), *args, None if b is None else _f64(b))

    def scale(self, x, k, b=None):
        """``sum |x_i w_i| (+ |b|)`` per output: the magnitude rounding errors scale with."""
        absb = None if b is None else np.abs(_f64(b))
        return self.reference(np.abs(_f64(x)), np.abs(_f64(k)), absb)

    def __str__(self):
        acc = "-acc32" if self.accumulate_f32 else ""
        return f"{self.case}-{self.dtype}{acc}-seed{self.seed}"


def _f64(a):
    return np.asarray(a).astype(np.float64)


def _local_conv(x, k, b, **static):
    return jlocalconv.local_conv(x, k, output_shape=None, bias=b, **static)


_STATIC = (
    "kernel_size",
    "strides",
    "data_format",
    "padding",
    "dilation",
    "implementation",
    "preferred_element_type",
)
# One jitted function for every test: equal shapes and geometry reuse the compiled program.
_local_conv_jit = jax.jit(_local_conv, static_argnames=_STATIC)


def _ints(n: int, lo: int, hi: int):
    return st.tuples(*[st.integers(lo, hi)] * n)


def paddings(n: int) -> st.SearchStrategy:
    """Every padding mode: valid, same (any case), causal (1-D), an int, N ints, N pairs."""
    modes = [st.sampled_from(["valid", "same", "VALID", "Same"])]
    if n == 1:
        modes.append(st.just("causal"))
    pair = st.tuples(st.integers(0, 2), st.integers(0, 2))
    modes += [st.integers(0, 2), _ints(n, 0, 2), st.tuples(*[pair] * n)]
    return st.one_of(*modes)


@st.composite
def cases(
    draw, ndims=(1, 2, 3), min_batch: int = 0, max_batch: int = 3, max_extra: int = 4
) -> Case:
    """A geometry whose (dilated) window fits the padded input; sizes stay small."""
    n = draw(st.sampled_from(ndims))
    kernel_size = draw(_ints(n, 1, 3))
    strides = draw(_ints(n, 1, 3))
    dilation = draw(_ints(n, 1, 2))
    padding = draw(paddings(n))
    # "same" pads depend on the spatial size but always fit; others need spatial >= minimum.
    pads = resolve_padding(padding, (1,) * n, kernel_size, strides, dilation)
    extra = max_extra if n < 3 else max_extra // 2
    spatial = []
    for k, d, (lo, hi) in zip(kernel_size, dilation, pads):
        low = 1 if isinstance(padding, str) and padding.lower() == "same" else d * (k - 1) + 1
        low = max(1, low - lo - hi)
        spatial.append(draw(st.integers(low, low + extra)))
    return Case(
        spatial=tuple(spatial),
        channels=draw(st.integers(1, 3)),
        filters=draw(st.integers(1, 3)),
        kernel_size=kernel_size,
        strides=strides,
        padding=padding,
        dilation=dilation,
        data_format=draw(st.sampled_from([CL, CF])),
        batch=draw(st.integers(min_batch, max_batch)),
        bias=draw(st.sampled_from([None, "filters", "positions"])),
    )


@st.composite
def problems(draw, dtypes=FLOAT_DTYPES, **case_kwargs) -> Problem:
    """A :class:`Problem` with a dtype from ``dtypes``."""
    dtype = draw(st.sampled_from(dtypes))
    low = dtype in ("bfloat16", "float16")
    return Problem(
        case=draw(cases(**case_kwargs)),
        dtype=dtype,
        accumulate_f32=low and draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


def auto_matches_one_of(outputs: dict[str, np.ndarray]) -> None:
    """ "auto" runs one registered implementation: the same math, so the same bits."""
    auto = outputs["auto"]
    others = [v for name, v in outputs.items() if name != "auto"]
    assert any(np.array_equal(auto, v, equal_nan=True) for v in others), (
        "auto is not bit-identical to any registered implementation"
    )
