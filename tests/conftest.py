import os
import sys

import pytest
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


def pytest_collection_modifyitems(config, items):
    """Tests sharing a module- or session-scoped fixture of this suite run on one xdist worker.

    Those fixtures are the expensive ones (a subprocess on 8 simulated devices, a bench smoke
    run): spread over both workers, each worker would build its own copy. Under
    ``--dist loadgroup`` the group keeps them together; other tests are balanced one by one.
    """
    for item in items:
        for defs in item._fixtureinfo.name2fixturedefs.values():
            shared = [d for d in defs if d.scope in ("module", "session") and d.baseid]
            if shared:
                item.add_marker(
                    pytest.mark.xdist_group(f"{shared[-1].baseid}::{shared[-1].argname}")
                )
                break
