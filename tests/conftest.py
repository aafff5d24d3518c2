import os
import sys

from hypothesis import HealthCheck, settings

# Keras 3 picks its backend once, at its first import: jlocalconv.keras's layers run on JAX
# (tests that need another backend start a subprocess). Nothing else here imports Keras.
os.environ.setdefault("KERAS_BACKEND", "jax")

# Tests import the independent reference and the shared cases as plain modules.
sys.path.insert(0, os.path.dirname(__file__))

# Hypothesis profiles for the property tests (tests/strategies.py runs each property under
# both; the "slow" run is marked `slow`, so `pytest -m slow` selects it). Every example
# compiles a few XLA programs, so deadlines would only measure the compiler: none.
_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
# CI's default run: few examples, the same ones every time (no flaky discoveries in CI).
settings.register_profile("fast", max_examples=12, derandomize=True, database=None, **_COMMON)
# The weekly run: many fresh random examples.
settings.register_profile("slow", max_examples=300, **_COMMON)
