"""Every notebook re-executes top to bottom in its quick setting (``JLOCALCONV_QUICK=1``).

A failing cell fails the test. Notebook 03 only reads the bench's JSON reports: it runs on
the newest committed report, on a fresh ``--smoke`` report when none is committed, and once
more with no report at all (it must then say so and stop cleanly).
"""

import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


@pytest.fixture
def execute(monkeypatch):
    """Runs ``notebooks/<name>`` quick, in a fresh kernel from notebooks/, and returns it."""

    def run(name: str, **env: str) -> nbformat.NotebookNode:
        monkeypatch.delenv("MPLBACKEND", raising=False)  # inline figures become outputs
        for key, value in {"JLOCALCONV_QUICK": "1", **env}.items():
            monkeypatch.setenv(key, value)
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        resources = {"metadata": {"path": NOTEBOOKS}}
        nbclient.NotebookClient(
            nb, timeout=300, kernel_name="python3", resources=resources
        ).execute()
        return nb

    return run


def text_output(nb: nbformat.NotebookNode) -> str:
    return "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )


def test_every_notebook_is_tested():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == [
        "01_quickstart.ipynb",
        "02_training.ipynb",
        "03_performance.ipynb",
    ]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("01_quickstart.ipynb", ["same numbers", "relative difference", "max |difference|"]),
        ("02_training.ipynb", ["locally connected", "CNN", "MLP", "test accuracy"]),
    ],
)
def test_notebook_runs(execute, name, expected):
    if name.startswith("02"):
        pytest.importorskip("optax")
    out = text_output(execute(name))  # raises CellExecutionError on a failing cell
    for text in expected:
        assert text in out


def images(nb: nbformat.NotebookNode) -> list:
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    return [o for o in outputs if "image/png" in o.get("data", {})]


@pytest.mark.parametrize("name", ["01_quickstart.ipynb", "02_training.ipynb"])
def test_committed_notebooks_have_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), f"{name} committed unexecuted"
    assert len(images(nb)) >= 3, f"{name} committed without its figures"


def test_performance_notebook_plots_a_report(execute, tmp_path):
    reports = sorted((ROOT / "bench" / "results").glob("*.json"))
    env = {}
    if not reports:  # nothing committed yet: make a real, tiny report to read
        if not (ROOT / "bench" / "__main__.py").exists():
            pytest.skip("neither a bench report nor the bench in this checkout")
        cmd = [sys.executable, "-m", "bench", "--smoke", "--only", "auto,jax.lax"]
        proc = subprocess.run(
            [*cmd, "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        env = {"JLOCALCONV_BENCH_RESULTS": str(tmp_path)}
    nb = execute("03_performance.ipynb", **env)
    out = text_output(nb)
    assert "using " in out and "No benchmark results" not in out
    assert len(images(nb)) >= 3  # speed-ups, memory, roofline


def test_performance_notebook_without_reports(execute, tmp_path):
    out = text_output(execute("03_performance.ipynb", JLOCALCONV_BENCH_RESULTS=str(tmp_path)))
    assert "No benchmark results found" in out and "nothing to plot" in out
