"""Special values and sizes: NaN/Inf propagation, empty batches, memory, non-float dtypes."""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import CASES, CF, CL, Case
from hypothesis import strategies as st
from reference import local_conv_ref
from strategies import PROFILES, Problem, auto_matches_one_of, problems, run

import jlocalconv
from jlocalconv.implementations import names

# Implementations that copy windows with a convolution against a one-hot kernel
# (lax.conv_general_dilated_patches, as jax.lax.conv_general_dilated_local does): an Inf
# input meets 0 * Inf = NaN in every window of more than one element that holds it, so such
# an output may be NaN where the reference has +-Inf. The positions are still exact. Pinned by
# test_one_hot_patches_turn_inf_inputs_into_nan, so this set cannot go stale.
INF_INPUT_BECOMES_NAN = frozenset({"patches"})

# Implementations that build the whole prod(kernel_size)-fold window tensor by design (their
# module docstrings say so): "patches" by a one-hot convolution, "slices" by strided slices.
WINDOW_TENSOR_BY_DESIGN = frozenset({"patches", "slices"})


def _windows_holding(problem: Problem, spatial_index: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The output positions whose (dilated, padded, strided) window holds one input element."""
    geom = problem.geometry()
    per_dim = [
        [o for o in range(n) if any(o * t + j * d - lo == s for j in range(k))]
        for s, k, t, d, (lo, _), n in zip(
            spatial_index, geom.kernel_size, geom.strides, geom.dilation, geom.padding,
            geom.output_shape,
        )
    ]  # fmt: skip
    return list(itertools.product(*per_dim))


def _poison_mask(problem: Problem, where: str, index: tuple[int, ...]) -> np.ndarray:
    """Which outputs one poisoned element reaches, as a mask of the result's shape."""
    case = problem.case
    mask = np.zeros((case.batch, *case.output_shape, case.filters), bool)  # channels-last
    if where == "inputs":
        b, *rest = index
        spatial = rest[:-1] if case.data_format == CL else rest[1:]
        for pos in _windows_holding(problem, tuple(spatial)):
            mask[(b, *pos)] = True  # every filter of that example and position
    elif where == "kernel":
        position, _, filt = index
        mask[(slice(None), *np.unravel_index(position, case.output_shape), filt)] = True
    else:  # a (filters,) or (*output_shape, filters) bias
        mask[(slice(None),) * (mask.ndim - len(index)) + index] = True
    return mask if case.data_format == CL else np.moveaxis(mask, -1, 1)


@st.composite
def poisoned(draw):
    """A problem, the operand to poison, one element of it and NaN, +Inf or -Inf."""
    problem = draw(problems(dtypes=("float32", "bfloat16", "float16"), min_batch=1))
    targets = ["inputs", "kernel"] + (["bias"] if problem.case.bias else [])
    where = draw(st.sampled_from(targets))
    x, k, b = problem.arrays()
    shape = {"inputs": x.shape, "kernel": k.shape, "bias": getattr(b, "shape", None)}[where]
    index = tuple(draw(st.integers(0, n - 1)) for n in shape)
    return problem, where, index, draw(st.sampled_from([np.nan, np.inf, -np.inf]))


def _propagates_exactly(poison):
    problem, where, index, value = poison
    arrays = dict(zip(("inputs", "kernel", "bias"), problem.arrays()))
    arrays[where][index] = value
    x, k, b = arrays.values()
    with np.errstate(invalid="ignore"):  # 0 * Inf in the reference is the point here
        want = problem.reference(x, k, b)
    mask = _poison_mask(problem, where, index)
    np.testing.assert_array_equal(~np.isfinite(want), mask, err_msg="reference vs geometry")
    outs = {name: np.asarray(problem.apply(x, k, b, name)).astype(np.float64) for name in names()}
    auto_matches_one_of(outs)
    for name, got in outs.items():
        np.testing.assert_array_equal(~np.isfinite(got), mask, err_msg=f"{name}: positions")
        np.testing.assert_array_equal(np.isnan(got[np.isnan(want)]), True, err_msg=name)
        infs = np.isinf(want)
        same = got[infs] == want[infs]  # the same signed Inf as the reference
        if where == "inputs" and problem.resolved(name) in INF_INPUT_BECOMES_NAN:
            same |= np.isnan(got[infs])
        assert same.all(), f"{name}: got {got[infs]}, want {want[infs]}"


@pytest.mark.parametrize("profile", PROFILES)
def test_nan_and_inf_propagate_exactly_where_the_reference_puts_them(profile):
    run(profile, _propagates_exactly, poison=poisoned())


@pytest.mark.parametrize("name", sorted(INF_INPUT_BECOMES_NAN))
def test_one_hot_patches_turn_inf_inputs_into_nan(name):
    """Pins the documented deviation: remove ``name`` from the set when it is fixed."""
    x = np.ones((1, 7, 1), np.float32)
    x[0, 3, 0] = np.inf
    k = np.ones((5, 3, 1), np.float32)
    got = np.asarray(jlocalconv.local_conv(x, k, 3, 1, implementation=name))[0, :, 0]
    assert np.isinf(local_conv_ref(x, k, (3,), (1,))[0, :, 0]).tolist() == [0, 1, 1, 1, 0]
    assert np.isnan(got).tolist() == [0, 1, 1, 1, 0]


@pytest.mark.parametrize("name", names())
@pytest.mark.parametrize("case", [CASES[1], CASES[6], CASES[15]], ids=str)
def test_zero_batch_gives_an_empty_result_of_the_right_shape(case, name):
    problem = Problem(dataclasses.replace(case, batch=0, bias=None))
    x, k, _ = problem.arrays()
    out = problem.apply(x, k, implementation=name)
    assert out.shape == problem.geometry().result_shape(0, case.filters)
    assert out.dtype == jnp.float32
    # Nothing flows back from an empty batch: the kernel gradient is exactly zero.
    g = jax.grad(lambda k: problem.apply(x, k, implementation=name).sum())(k)
    assert g.shape == k.shape and not np.asarray(g).any()


# Large spatial sizes, small windows, few channels: the prod(kernel_size)-fold window
# tensor (B * P * prod(k) * C) dwarfs inputs, kernel and result here.
LARGE = [
    Case((160, 160), 1, 1, (5, 5), (1, 1), padding="same", batch=64),
    Case((65536,), 1, 1, (9,), (1,), padding="causal", data_format=CF, batch=32),
    Case((32, 32, 32), 1, 1, (3, 3, 3), (1, 1, 1), padding="same", batch=16),
]
# Temporaries may hold a few copies of each operand (layout changes), never prod(k) of them.
TEMP_COPIES = 3


def _temp_bytes(case: Case, name: str) -> tuple[int, int]:
    """(compiled temp bytes, TEMP_COPIES * bytes of inputs + kernel + result)."""
    geom = Problem(case).geometry()
    shapes = (case.input_shape, geom.kernel_shape(case.filters))
    compiled = Problem(case).lower(*[jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes], name)
    shapes += (geom.result_shape(case.batch, case.filters),)
    operand_bytes = sum(4 * math.prod(s) for s in shapes)
    return compiled.compile().memory_analysis().temp_size_in_bytes, TEMP_COPIES * operand_bytes


@pytest.mark.parametrize("name", names())
@pytest.mark.parametrize("case", LARGE, ids=str)
def test_large_inputs_with_small_windows_keep_temporaries_lean(case, name):
    temp, allowed = _temp_bytes(case, name)
    resolved = Problem(case).resolved(name)
    if resolved in WINDOW_TENSOR_BY_DESIGN:
        # Strict by hand: fails if the implementation becomes lean (update the set).
        assert temp > allowed, f"{resolved} is now lean ({temp} <= {allowed} bytes)"
        pytest.xfail(
            f"{name} -> {resolved} builds the window tensor by design: temp "
            f"{temp / 2**20:.0f} MiB > {allowed / 2**20:.0f} MiB allowed"
        )
    assert temp <= allowed, f"{name}: temp {temp} bytes > {allowed} allowed"


BAD_DTYPES = [np.int8, np.int32, np.uint8, np.bool_, np.complex64]


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("arg", ["inputs", "kernel", "bias"])
def test_integer_bool_and_complex_operands_are_rejected(arg, dtype):
    """Documented in README "API": no silent promotion; the message says how to cast."""
    case = CASES[0]
    x, k, b = dataclasses.replace(case, bias="filters").arrays()
    operands = {"inputs": x, "kernel": k, "bias": b}
    operands[arg] = operands[arg].astype(dtype)
    with pytest.raises(TypeError) as info:
        jlocalconv.local_conv(
            operands["inputs"],
            operands["kernel"],
            case.kernel_size,
            case.strides,
            bias=operands["bias"],
        )
    message = str(info.value)
    for part in (f"`{arg}`", "real floating", f"dtype {np.dtype(dtype).name}", "Cast it"):
        assert part in message, message


def test_problem_arrays_are_in_the_drawn_dtype():
    """Guards the strategies: operands really are low precision when drawn so."""
    x, k, _ = Problem(CASES[0], "bfloat16").arrays()
    assert x.dtype == jnp.bfloat16 and k.dtype == jnp.bfloat16
