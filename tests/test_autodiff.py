"""Autodiff of every implementation: grads to order 2, forward mode, linear_transpose."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import CASES
from jax.test_util import check_grads

import jlocalconv
from jlocalconv import ops
from jlocalconv.implementations import names, shifts

# Small, varied geometries keep second-order numerical checks cheap.
SMALL = [CASES[1], CASES[6], CASES[9], CASES[15]]


def _fn(case, implementation):
    def f(x, k):
        return jlocalconv.local_conv(
            x, k, case.kernel_size, case.strides, None, case.data_format,
            implementation=implementation, precision=jax.lax.Precision.HIGHEST, **case.kwargs(),
        )  # fmt: skip

    return f


# "shifts" differentiates through the "tiles" loop (checked on every case); its own
# part, the custom_jvp that routes derivatives there, needs one case, not four. So does
# "auto", a choice among the others (its composed routes: tests/test_implementations.py).
ORDER_2 = [(c, n) for c in SMALL for n in names() if n not in ("shifts", "auto") or c is SMALL[0]]


@pytest.mark.parametrize("case, implementation", ORDER_2, ids=str)
def test_check_grads_order_2(case, implementation):
    x, k, _ = case.arrays(dtype=np.float64)
    with jax.enable_x64(True):
        x, k = jnp.asarray(x, jnp.float64), jnp.asarray(k, jnp.float64)
        # Under jit each derivative program compiles once instead of op by op: the same
        # derivatives checked at a third of the compile time.
        check_grads(jax.jit(_fn(case, implementation)), (x, k), order=2, modes=("fwd", "rev"))


@pytest.mark.parametrize("implementation", names())
@pytest.mark.parametrize("case", SMALL, ids=str)
def test_jvp_is_bilinear(case, implementation):
    x, k, _ = case.arrays()
    dx, dk, _ = case.arrays(seed=7)
    f = _fn(case, implementation)
    primal, tangent = jax.jvp(f, (x, k), (dx, dk))
    np.testing.assert_allclose(primal, f(x, k), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(tangent, f(dx, k) + f(x, dk), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", names())
@pytest.mark.parametrize("case", SMALL, ids=str)
def test_linear_transpose_is_adjoint(case, implementation):
    x, k, _ = case.arrays()
    f = _fn(case, implementation)
    y = np.random.default_rng(3).standard_normal(f(x, k).shape).astype(np.float32)
    (xt,) = jax.linear_transpose(lambda x: f(x, k), x)(y)
    lhs = float(jnp.vdot(f(x, k), y))
    rhs = float(jnp.vdot(x, xt))
    assert abs(lhs - rhs) <= 1e-4 * max(1.0, abs(lhs))
    # The kernel side is linear too.
    (kt,) = jax.linear_transpose(lambda k: f(x, k), k)(y)
    assert abs(float(jnp.vdot(k, kt)) - lhs) <= 1e-4 * max(1.0, abs(lhs))


def test_grad_with_bias_per_position():
    case = CASES[6]  # channels_first with a (*output_shape, filters) bias
    x, k, b = case.arrays()

    def loss(b):
        y = jlocalconv.local_conv(x, k, case.kernel_size, case.strides, None, case.data_format,
                                  bias=b, **case.kwargs())  # fmt: skip
        return jnp.sum(y * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape))

    g = jax.grad(loss)(b)
    # d/d bias[p, f] of sum(y * w) is w at (batch summed) position p, filter f.
    w = np.arange(np.prod(g.shape) * case.batch, dtype=np.float64)
    w = w.reshape(case.batch, case.filters, *case.output_shape).sum(0)
    np.testing.assert_allclose(g, np.moveaxis(w, 0, -1), rtol=1e-6)


def test_traced_calls_skip_the_inner_jit():
    """Where the call is traced into a jaxpr (jit, scan), beneath any grad or vmap, the
    implementation runs without ``ops._compiled``'s jit; eagerly (grad and vmap
    included) with it, one compiled program per problem."""
    seen = []

    def probe(x):
        seen.append(ops._traced_into_jaxpr())
        return x * x

    x = jnp.ones(3)
    probe(x)
    jax.grad(lambda v: probe(v).sum())(x)
    jax.vmap(probe)(x)
    assert seen == [False] * 3
    seen.clear()
    jax.jit(probe)(x)
    jax.jit(jax.grad(lambda v: probe(v).sum()))(x)
    jax.jit(jax.vmap(jax.grad(lambda v: probe(v).sum())))(x[:, None])
    jax.lax.scan(lambda c, v: (c, probe(v)), 0.0, x)
    assert seen == [True] * 4


def test_jitted_derivatives_do_not_trace_unused_values(monkeypatch):
    """Differentiated under jit, "shifts" takes values and derivatives from its
    derivative route: its own unrolled values are never traced (the inner jit traced
    them, for differentiation to discard); undifferentiated, they are."""
    calls = []
    original = shifts._shift_accumulate

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(shifts, "_shift_accumulate", counted)
    case = CASES[1]
    x, k, _ = case.arrays()
    f = _fn(case, "shifts")
    jax.jit(jax.value_and_grad(lambda x, k: f(x, k).sum(), argnums=(0, 1))).lower(x, k)
    assert calls == []
    jax.jit(f).lower(x, k)
    assert calls == [1]
