"""Initialisers: empirical variance against the documented fans; names; import isolation."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jlocalconv import initializers as ini

# A large kernel: 2048 positions, feature_dim 75, 40 filters (6.1M samples).
ITEMS, FEATURES, FILTERS = 2048, 75, 40
SHAPE = (ITEMS, FEATURES, FILTERS)

# Variances written from the documented fans, not from the implementation:
# per position fan_in = FEATURES, fan_out = FILTERS; Keras/Flax multiply both by ITEMS.
DOCUMENTED = {
    "default": 2 / (FEATURES + FILTERS),
    "glorot_uniform": 2 / (FEATURES + FILTERS),
    "glorot_normal": 2 / (FEATURES + FILTERS),
    "lecun_uniform": 1 / FEATURES,
    "lecun_normal": 1 / FEATURES,
    "he_uniform": 2 / FEATURES,
    "he_normal": 2 / FEATURES,
    "keras_glorot_uniform": 2 / (ITEMS * (FEATURES + FILTERS)),
    "flax_conv_local_default": 1 / (ITEMS * FEATURES),
}


def _variance_within_noise(sample: np.ndarray, variance: float) -> None:
    """Asserts E[w^2] == variance within 5 standard errors (SE from the 4th moment).

    Every initialiser here has zero mean, so E[w^2] is the variance; the standard error
    of the mean of w^2 over N i.i.d. draws is sqrt(Var(w^2) / N).
    """
    w2 = np.asarray(sample, np.float64) ** 2
    se = w2.std() / np.sqrt(w2.size)
    assert abs(w2.mean() - variance) < 5 * se, (w2.mean(), variance, se)
    assert se < 0.01 * variance  # the test is sharp enough to tell a 5% error


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_variance_matches_documented_fan(name):
    sample = ini.get(name)(jax.random.key(0), SHAPE, jnp.float32)
    assert sample.shape == SHAPE and sample.dtype == jnp.float32
    _variance_within_noise(sample, DOCUMENTED[name])
    assert abs(float(jnp.mean(sample))) < 5 * np.sqrt(DOCUMENTED[name] / sample.size)


def test_default_does_not_shrink_with_the_output_but_keras_does():
    key = jax.random.key(1)
    small, large = (16, FEATURES, FILTERS), (4096, FEATURES, FILTERS)
    for shape in (small, large):
        _variance_within_noise(ini.default_kernel_init(key, shape), 2 / (FEATURES + FILTERS))
    ratio = np.var(ini.keras_glorot_uniform()(key, small)) / np.var(
        ini.keras_glorot_uniform()(key, large)
    )
    assert 200 < ratio < 312  # 4096 / 16 = 256


def test_positions_are_independent_draws():
    # Per-position banks must not repeat: batch_axis does not mean "broadcast".
    k = np.asarray(ini.default_kernel_init(jax.random.key(0), (64, 9, 4)))
    assert len(np.unique(k.reshape(64, -1), axis=0)) == 64


def test_uniform_bounds():
    limit = np.sqrt(6 / (FEATURES + FILTERS))  # glorot_uniform: U(-limit, limit)
    k = np.asarray(ini.glorot_uniform()(jax.random.key(0), (256, FEATURES, FILTERS)))
    assert np.abs(k).max() <= limit
    assert np.abs(k).max() > 0.99 * limit


def test_get_names_callables_and_errors():
    assert set(DOCUMENTED) | {"zeros", "ones"} == set(ini.names())
    fn = jax.nn.initializers.zeros
    assert ini.get(fn) is fn
    assert float(ini.get("ONES")(jax.random.key(0), (2, 3)).sum()) == 6.0
    with pytest.raises(ValueError, match=r"Layer: `bias_init` must be a callable or one of"):
        ini.get("glorot", "Layer", "bias_init")
    with pytest.raises(TypeError, match=r"jlocalconv: `kernel_init` must be a callable"):
        ini.get(0.1)


def test_core_import_does_not_import_flax_or_equinox():
    code = (
        "import sys, jlocalconv, jlocalconv.initializers, jlocalconv.geometry\n"
        "heavy = [m for m in ('flax', 'equinox', 'optax', 'h5py') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert callable(jlocalconv.local_conv)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("module", "extra"), [("nnx", "flax"), ("linen", "flax"), ("eqx", "equinox")]
)
def test_missing_extra_names_the_pip_extra(module, extra):
    # Simulate an install without the extra: a None entry makes `import` raise ImportError.
    code = (
        "import sys\n"
        f"sys.modules.update({{'{extra}': None, 'flax.nnx': None, 'flax.linen': None}})\n"
        "import jlocalconv\n"
        "try:\n"
        f"    jlocalconv.{module}\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert f"pip install 'jlocalconv[{extra}]'" in result.stdout, result.stdout + result.stderr
