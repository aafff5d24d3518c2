"""Properties of every implementation on drawn problems (see tests/strategies.py).

Each property runs under the "fast" profile by default and under the "slow" profile with
``pytest -m slow``. Implementations are taken from ``jlocalconv.implementations.names()``
at run time, so new ones are covered as they are registered.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import CF, CL
from hypothesis import strategies as st
from strategies import PROFILES, Problem, auto_matches_one_of, problems, run
from tolerances import GRAD_CHECK, assert_close

import jlocalconv
from jlocalconv.implementations import names


def _matches_reference(problem):
    with problem.x64():
        x, k, b = problem.arrays()
        want = problem.reference(x, k, b)
        scale = problem.scale(x, k, b)
        for name in names():
            got = problem.apply(x, k, b, name)
            assert got.dtype == jnp.dtype(problem.result_dtype), (name, got.dtype)
            assert_close(got, want, scale, problem.result_dtype, what=name)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_implementation_matches_the_float64_reference(profile):
    run(profile, _matches_reference, problem=problems())


def _gradients(problem):
    x, k, b = problem.arrays()
    rng = np.random.default_rng(problem.seed)
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(a) for a in (x, k, b) if a is not None)
        tangents = tuple(jnp.asarray(rng.standard_normal(a.shape)) for a in args)
        y = rng.standard_normal(problem.reference(x, k).shape)
        for name in names():
            f = lambda *a, name=name: problem.apply(*a, implementation=name)
            _check_against_central_differences(f, args, tangents, y, name)


def _check_against_central_differences(f, args, tangents, y, name):
    """Forward mode (jvp) elementwise and reverse mode (vjp) through <y, jvp>.

    The map is bilinear in (inputs, kernel) and linear in bias, so central differences
    along one joint direction are exact up to rounding.
    """
    h = GRAD_CHECK["eps"]
    shifted = lambda sign: f(*(a + sign * h * t for a, t in zip(args, tangents)))
    numeric = (np.asarray(shifted(1)) - np.asarray(shifted(-1))) / (2 * h)

    @jax.jit
    def derivatives(args, tangents, y):
        _, jvp = jax.jvp(f, args, tangents)
        return jvp, jax.vjp(f, *args)[1](y)

    jvp, vjp = derivatives(args, tangents, y)
    tol = dict(rtol=GRAD_CHECK["rtol"], atol=GRAD_CHECK["atol"])
    np.testing.assert_allclose(jvp, numeric, **tol, err_msg=f"{name}: jvp")
    pulled = sum(float(jnp.vdot(c, t)) for c, t in zip(vjp, tangents))
    np.testing.assert_allclose(pulled, float(np.vdot(y, numeric)), **tol, err_msg=f"{name}: vjp")


@pytest.mark.parametrize("profile", PROFILES)
def test_gradients_match_finite_differences_in_float64(profile):
    problem = problems(dtypes=("float64",), max_batch=2)
    run(profile, _gradients, share=0.5, problem=problem)


# Their values are sums of products that compiled code contracts into fused multiply-adds
# (one rounding) while eager mode rounds each product: jit and eager differ in rounding.
FUSED_MULTIPLY_ADD = {"shifts"}


def _deterministic(problem):
    x, k, b = problem.arrays()
    outs = {}
    for name in names():
        first = np.asarray(problem.apply(x, k, b, name))
        np.testing.assert_array_equal(problem.apply(x, k, b, name), first, err_msg=name)
        eager = problem.apply(x, k, b, name, jit=False)
        if problem.resolved(name) in FUSED_MULTIPLY_ADD:
            scale = problem.scale(x, k, b)
            assert_close(eager, first, scale, "float32", both_approximate=True, what=name)
        else:
            np.testing.assert_array_equal(eager, first, err_msg=f"{name}: jit vs eager")
        as_jax = [None if a is None else jnp.asarray(a) for a in (x, k, b)]
        np.testing.assert_array_equal(problem.apply(*as_jax, name), first, err_msg=name)
        outs[name] = first
    auto_matches_one_of(outs)
    scale = problem.scale(x, k, b)
    for name, out in outs.items():
        assert_close(out, outs["auto"], scale, "float32", both_approximate=True, what=name)


@pytest.mark.parametrize("profile", PROFILES)
def test_float32_results_are_deterministic(profile):
    """Repeated calls, jit vs eager (except FUSED_MULTIPLY_ADD) and NumPy vs JAX operands
    are bit-identical; distinct implementations differ only within the stated tolerance."""
    run(profile, _deterministic, share=0.5, problem=problems(dtypes=("float32",)))


def _adjoint(problem, seed):
    transpose = jlocalconv.local_conv_transpose
    c = problem.case
    with jax.enable_x64(True):
        x, k, _ = problem.arrays()
        y = np.random.default_rng(seed).standard_normal(problem.reference(x, k).shape)
        kw = dict(padding=c.padding, dilation=c.dil)
        fwd = jlocalconv.local_conv(x, k, c.kernel_size, c.strides, None, c.data_format, **kw)
        back = transpose(y, k, c.kernel_size, c.strides, c.spatial, c.data_format, **kw)
        assert back.shape == x.shape
        lhs, rhs = float(jnp.vdot(fwd, y)), float(jnp.vdot(x, back))
        scale = float(np.abs(problem.scale(x, k)).ravel() @ np.abs(y).ravel())
        assert abs(lhs - rhs) <= 1e-12 * max(scale, 1.0), (lhs, rhs)


@pytest.mark.parametrize("profile", PROFILES)
def test_local_conv_transpose_is_the_exact_adjoint(profile):
    """sum(local_conv(x, k) * y) == sum(x * local_conv_transpose(y, k)), in float64."""
    run(profile, _adjoint, problem=problems(dtypes=("float64",)), seed=st.integers(0, 99))


def _layout_round_trips(problem):
    layout = jlocalconv.layout
    c = problem.case
    other = CF if c.data_format == CL else CL
    x, k, _ = problem.arrays()
    there = layout.convert_data_format(k, c.kernel_size, c.channels, c.data_format, other)
    back = layout.convert_data_format(there, c.kernel_size, c.channels, other, c.data_format)
    np.testing.assert_array_equal(back, k)
    # The converted kernel computes the same map on the input in the other format.
    x_other = np.moveaxis(x, -1, 1) if other == CF else np.moveaxis(x, 1, -1)
    other_problem = Problem(dataclasses.replace(c, data_format=other, bias=None))
    got = np.asarray(other_problem.apply(x_other, there))
    got = np.moveaxis(got, 1, -1) if other == CF else np.moveaxis(got, -1, 1)
    assert_close(got, problem.reference(x, k), problem.scale(x, k), "float32", what="convert")
    geom = problem.geometry()
    args = (geom.output_shape, c.kernel_size, c.channels, c.data_format)
    np.testing.assert_array_equal(layout.from_lax(layout.to_lax(k, *args), *args), k)
    # The dense matrix is the same map, rows and columns flattened in the data format.
    geometry = (c.spatial, c.kernel_size, c.strides, c.padding, c.dil, c.data_format)
    dense = layout.to_dense_matrix(k, *geometry)
    want = problem.reference(x, k)
    got = x.reshape(len(x), len(dense)).astype(np.float64) @ dense  # len(x) may be 0
    assert_close(got.reshape(want.shape), want, problem.scale(x, k), "float32", what="dense")


@pytest.mark.parametrize("profile", PROFILES)
def test_layout_converters_round_trip(profile):
    """convert_data_format both ways and to_lax/from_lax are exact inverses; the converted
    kernel and to_dense_matrix compute the same map."""
    run(profile, _layout_round_trips, share=0.5, problem=problems(dtypes=("float32",)))
