"""The package is typed: it ships ``py.typed`` and mypy (configured in pyproject.toml) passes.

CI's ``python -m pytest`` runs the type checker through this test.
"""

from __future__ import annotations

import importlib.resources
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_py_typed_ships_with_the_package():
    assert (importlib.resources.files("jlocalconv") / "py.typed").is_file()
    # The wheel holds it only if setuptools' package-data names it (tomllib needs 3.11).
    line = re.search(r"^jlocalconv = \[.*\]$", (ROOT / "pyproject.toml").read_text(), re.M)
    assert line is not None and '"py.typed"' in line.group(0)


def test_mypy_passes_on_the_package():
    pytest.importorskip("mypy")
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "jlocalconv"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout + run.stderr
