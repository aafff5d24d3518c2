"""Runs ``bench/studies/sharded.py`` (sharded local conv, 8 simulated CPU devices) in a subprocess.

The simulated devices need ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX
starts, which is why this is a separate process. Interface: ``python -m bench.studies.sharded --json
PATH`` writes either a list of row dicts or ``{"rows": [...], "note": "..."}``; the rows are
shown as given in the report's "Sharded" table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_HERE = Path(__file__).resolve().parent
DEVICE_FLAG = "--xla_force_host_platform_device_count=8"


def available() -> bool:
    """Whether ``bench/studies/sharded.py`` exists."""
    return (_HERE / "studies" / "sharded.py").exists()


def run(timeout_s: float = 600) -> dict:
    """``{"rows": [...], "note": str}`` from the sharded benchmark, or a note saying why not."""
    if not available():
        return {"rows": [], "note": "bench/studies/sharded.py is missing: no sharded rows."}
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {DEVICE_FLAG}".strip())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sharded.json"
        cmd = [sys.executable, "-m", "bench.studies.sharded", "--json", str(path)]
        try:
            proc = subprocess.run(
                cmd, cwd=_HERE.parent, env=env, capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            return {"rows": [], "note": f"bench.studies.sharded timed out after {timeout_s:.0f} s."}
        if proc.returncode != 0 or not path.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return {"rows": [], "note": f"bench.studies.sharded failed ({proc.returncode}): {tail}"}
        data = json.loads(path.read_text())
    if isinstance(data, list):
        return {"rows": data, "note": ""}
    return {"rows": list(data.get("rows", [])), "note": str(data.get("note", ""))}
