"""Every ```python block of README.md runs on its own, from the repository root.

"On its own": each block is executed in a fresh namespace (no names from the blocks
before it), in one Python process for all of them, in README order. A process per block
cost ~4 s of interpreter and JAX start-up each (14 blocks: ~55 s of the suite); what a
separate process would add is only process-wide state (JAX's config, Keras's backend),
which no block changes but Keras's (``KERAS_BACKEND``, set to "jax" by every block that
imports Keras) and autotune's cache file (set by the one block that uses it).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)

# Runs the blocks of a JSON file ``[[line, source], ...]`` and writes ``{line: traceback
# or null}`` to a second file: every block runs, whichever failed before it.
_RUNNER = """
import json, sys, traceback
outcomes = {}
for line, source in json.load(open(sys.argv[1])):
    try:
        exec(compile(source, f"README.md:{line}", "exec"), {"__name__": "__main__"})
        outcomes[line] = None
    except BaseException:
        outcomes[line] = traceback.format_exc()[-3000:]
json.dump(outcomes, open(sys.argv[2], "w"))
"""


def _run_blocks(blocks: list, tmp: Path, timeout: float) -> dict[str, str | None]:
    """:data:`_RUNNER`'s outcomes for ``blocks`` (``[(line, source), ...]``), run in ``tmp``'s
    files from the repository root."""
    source, results = tmp / "blocks.json", tmp / "outcomes.json"
    source.write_text(json.dumps(blocks))
    env = {**os.environ, "MPLBACKEND": "Agg"}  # plt.show() in an example must not block
    cmd = [sys.executable, "-c", _RUNNER, str(source), str(results)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"the README blocks' process failed:\n{proc.stderr[-3000:]}"
    return json.loads(results.read_text())


def python_blocks() -> list[tuple[int, str]]:
    """``(line number, source)`` of each ```python block, in order."""
    text = (ROOT / "README.md").read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in BLOCK.finditer(text)]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[int, str | None]:
    """Each block's traceback (None where it ran), from one run of all of them."""
    got = _run_blocks(python_blocks(), tmp_path_factory.mktemp("readme"), timeout=900)
    return {int(line): tb for line, tb in got.items()}


def test_readme_has_python_examples():
    assert len(python_blocks()) >= 2


@pytest.mark.parametrize(
    "line, source", python_blocks(), ids=lambda v: f"line{v}" if isinstance(v, int) else ""
)
def test_readme_block_runs(line, source, outcomes):
    assert outcomes[line] is None, f"README.md line {line} failed:\n{outcomes[line]}"


def test_a_failing_block_is_reported_with_its_line(tmp_path):
    """The runner reports a block's own error and still runs the blocks after it."""
    got = _run_blocks([(3, "x = 1\n"), (7, "print(x)\n"), (9, "y = 2\n")], tmp_path, timeout=60)
    assert got["3"] is None and got["9"] is None  # each in a fresh namespace:
    assert "README.md:7" in got["7"] and "NameError" in got["7"]  # x is not defined there
