"""Every numerical tolerance of the property tests, by dtype, stated once.

Error model. A local convolution output is a dot product of ``feature_dim`` terms (plus an
optional bias) rounded to the result dtype. The reference is computed in float64 from the
*same, already rounded* operands, so what remains is the implementation's own rounding,
which is bounded by a multiple of ``eps(result dtype)`` times

    scale = sum_i |x_i * w_i| + |b|     (the reference applied to |x|, |w| and |b|).

Measured on 150 drawn problems, every implementation, CPU (Nov 2026), the worst
``|got - want| / (eps * scale)`` was 1.03 (float64, the reference's own rounding included),
0.84 (float32), 0.53 (bfloat16), 0.24 (float16) and 0.52 (float16 operands, float32
accumulation). We allow ``ULPS = 8``: a single rounding plus room for other summation
orders, still far below the error of one wrong, missing or misplaced term (about ``scale``).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

ULPS = 8

# Gradients against central differences in float64 (test_properties). The map is bilinear,
# so central differences are exact up to rounding (about 1e-16 * |f| / eps ~ 1e-12 here);
# any wrong or missing term in a derivative is of order one.
GRAD_CHECK = dict(eps=1e-3, rtol=1e-8, atol=1e-8)


def bound(scale: np.ndarray, dtype) -> np.ndarray:
    """The allowed ``|got - want|`` per element for results of ``dtype``.

    ``tiny`` (the smallest normal number) absorbs products that underflow to subnormals.
    """
    info = jnp.finfo(dtype)
    return ULPS * float(info.eps) * scale + float(info.tiny)


def assert_close(got, want, scale, dtype, *, both_approximate: bool = False, what: str = ""):
    """Asserts ``|got - want| <= bound(scale, dtype)`` elementwise, NaN == NaN.

    Args:
      got, want: arrays of one shape (``want`` usually the float64 reference).
      scale: ``sum |x_i w_i| + |b|`` per element, see the module docstring.
      dtype: the dtype ``got`` was computed in.
      both_approximate: both sides carry rounding error (two implementations compared
        with each other): the bound doubles, by the triangle inequality.
      what: a label for the failure message.
    """
    got = np.asarray(got).astype(np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    allowed = bound(np.asarray(scale, np.float64), dtype) * (2 if both_approximate else 1)
    err = np.abs(got - want)
    same_special = (np.isnan(got) & np.isnan(want)) | (got == want)
    bad = ~(same_special | (err <= allowed))
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        raise AssertionError(
            f"{what}: {bad.sum()} of {bad.size} elements off (dtype {dtype}); first at {i}: "
            f"got {got[i]!r}, want {want[i]!r}, |err| {err[i]:.3g} > allowed {allowed[i]:.3g}"
        )
