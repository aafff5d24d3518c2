import os
import sys

from hypothesis import HealthCheck, settings

# Keras 3 picks its backend once, at its first import: jlocalconv.keras's layers run on JAX
# (tests that need another backend start a subprocess). Nothing else here imports Keras.
os.environ.setdefault("KERAS_BACKEND", "jax")

# The suite is compile-bound (hundreds of small programs, each run once or twice), and most of
# XLA's CPU compile time is LLVM optimising the emitted code. -O0 there ran
# tests/test_implementations.py's slowest tests in 44 s instead of 62. What the tests check
# is unchanged: results come from the same optimised HLO (fusion, layout and buffer
# assignment, hence temp memory, are decided before LLVM), and speed is measured in bench/.
_FAST_COMPILE = "--xla_backend_optimization_level=0"
if _FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()

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
