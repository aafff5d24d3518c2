"""Every notebook re-executes top to bottom in its quick setting (``JLOCALCONV_QUICK=1``).

A failing cell fails the test. Notebook 03 only reads the bench's JSON reports: it runs on
the newest committed report, on a fresh ``--smoke`` report when none is committed, and once
more with no report at all (it must then say so and stop cleanly).
"""

import os
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


def execute(name: str, **env: str) -> nbformat.NotebookNode:
    """Runs ``notebooks/<name>`` in a fresh kernel from notebooks/ and returns it."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    old = {k: os.environ.get(k) for k in ["JLOCALCONV_QUICK", "MPLBACKEND", *env]}
    os.environ.update({"JLOCALCONV_QUICK": "1", "MPLBACKEND": "Agg", **env})
    try:
        client = nbclient.NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": NOTEBOOKS}}
        )
        client.execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return nb


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
def test_notebook_runs(name, expected):
    out = text_output(execute(name))  # raises CellExecutionError on a failing cell
    for text in expected:
        assert text in out


def test_committed_notebooks_have_outputs():
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.get("outputs") for c in code[:2]), f"{path.name} committed without outputs"


def test_performance_notebook_plots_a_report(tmp_path):
    reports = sorted((ROOT / "bench" / "results").glob("*.json"))
    env = {}
    if not reports:  # nothing committed yet: make a real, tiny report to read
        cmd = [sys.executable, "-m", "bench", "--smoke", "--only", "auto,jax.lax"]
        proc = subprocess.run(
            [*cmd, "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        env = {"JLOCALCONV_BENCH_RESULTS": str(tmp_path)}
    nb = execute("03_performance.ipynb", **env)
    out = text_output(nb)
    assert "using " in out and "No benchmark results" not in out
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert len(images) >= 3  # speed-ups, memory, roofline


def test_performance_notebook_without_reports(tmp_path):
    out = text_output(execute("03_performance.ipynb", JLOCALCONV_BENCH_RESULTS=str(tmp_path)))
    assert "No benchmark results found" in out and "nothing to plot" in out
