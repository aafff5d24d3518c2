"""The package's structure: the README's module list, its imports, what `import jlocalconv` loads.

The README's "Architecture" section lists every module with the jlocalconv modules it may
import; these tests hold the files to it (read from their source with ``ast``, so they cost
no imports), keep the import graph acyclic, forbid importing another module's private names,
and check in a fresh interpreter that a plain ``import jlocalconv`` loads no Keras code and
reaches every documented module as an attribute.
"""

from __future__ import annotations

import ast
import json
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jlocalconv"
ENTRY = re.compile(r"^(jlocalconv/\S+\.py)\s+.*\[imports: (.*)\]\s*$")


def documented() -> dict[str, set[str]]:
    """``{module: allowed imports}`` from the README's architecture block."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- architecture:begin -->")[1].split("<!-- architecture:end -->")[0]
    table = {}
    for line in block.splitlines():
        if match := ENTRY.match(line):
            allowed = re.sub(r"\([^)]*\)", "", match.group(2))  # "(lazily, ...)" notes
            names = {n.strip() for n in allowed.split(",")} - {"-", ""}
            table[_module_name(match.group(1))] = {_absolute(n) for n in names}
    return table


def _module_name(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def _absolute(name: str) -> str:
    return name if name == "jlocalconv" else f"jlocalconv.{name}"


def modules() -> dict[str, pathlib.Path]:
    return {_module_name(str(p.relative_to(ROOT))): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_module(name: str) -> bool:
    return name in modules()


def imports(path: pathlib.Path, *, eager_only: bool) -> list[tuple[str, str | None]]:
    """``(module, imported name or None)`` for every jlocalconv import in ``path``.

    ``eager_only`` leaves out imports inside functions and ``if TYPE_CHECKING`` blocks.
    """
    found = []

    def visit(node: ast.AST, eager: bool) -> None:
        for child in ast.iter_child_nodes(node):
            lazy = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) or (
                isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
            )
            if isinstance(child, ast.Import):
                found.extend((a.name, None) for a in child.names if eager or not eager_only)
            elif isinstance(child, ast.ImportFrom) and (eager or not eager_only):
                found.extend((child.module or "", a.name) for a in child.names)
            visit(child, eager and not lazy)

    visit(ast.parse(path.read_text()), True)
    return [(m, n) for m, n in found if m == "jlocalconv" or m.startswith("jlocalconv.")]


def _target(module: str, name: str | None) -> str:
    """The module an import loads: ``from jlocalconv import _checks`` loads ``_checks``."""
    if name is not None and _is_module(f"{module}.{name}"):
        return f"{module}.{name}"
    return module


def _allowed(target: str, allowed: set[str]) -> bool:
    return any(target == a or (a.endswith(".*") and target.startswith(a[:-1])) for a in allowed)


def test_the_readme_lists_every_module_and_no_other():
    assert set(documented()) == set(modules())


def test_every_module_imports_only_what_the_readme_allows():
    table = documented()
    wrong = {
        module: sorted({_target(m, n) for m, n in imports(path, eager_only=False)} - {module})
        for module, path in modules().items()
    }
    wrong = {
        module: [t for t in targets if not _allowed(t, table.get(module, set()))]
        for module, targets in wrong.items()
    }
    assert not {m: t for m, t in wrong.items() if t}


def test_no_module_imports_a_private_name_of_another_module():
    private = [
        f"{module}: from {m} import {n}"
        for module, path in modules().items()
        for m, n in imports(path, eager_only=False)
        if n is not None and n.startswith("_") and not _is_module(f"{m}.{n}")
    ]
    assert not private


def test_the_import_graph_is_acyclic():
    graph = {
        module: {_target(m, n) for m, n in imports(path, eager_only=True)} - {module}
        for module, path in modules().items()
    }
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", f"import cycle: {' -> '.join([*trail, node])}"
        state[node] = "open"
        for child in sorted(graph.get(node, ())):
            # Importing a submodule runs its package's __init__ first: not an edge back.
            if not node.startswith(child + "."):
                visit(child, [*trail, node])
        state[node] = "done"

    for module in sorted(graph):
        visit(module, [])


PROBE = """
import functools, json, sys
import jlocalconv
loaded = sorted(m for m in sys.modules if m.startswith(("jlocalconv", "h5py", "keras", "tf_keras",
    "tensorflow", "flax", "equinox")))
reached = {}
for name in json.loads(sys.argv[1]):
    value = functools.reduce(getattr, name.split(".")[1:], jlocalconv)
    reached[name] = getattr(value, "__name__", None)
print(json.dumps({"loaded": loaded, "reached": reached}))
"""


def test_plain_import_loads_no_keras_code_and_reaches_every_documented_module():
    for extra in ("flax", "equinox", "h5py"):
        pytest.importorskip(extra)
    public = sorted(
        m
        for m in documented()
        if m != "jlocalconv" and not any(part.startswith("_") for part in m.split("."))
    )
    run = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(public)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    keras_code = [m for m in result["loaded"] if "keras" in m or m.startswith(("h5py", "flax"))]
    assert not keras_code, result["loaded"]
    assert "jlocalconv.layout" not in result["loaded"]
    assert result["reached"] == {m: m for m in public}


def test_importing_the_keras_subpackage_imports_neither_keras_nor_h5py():
    probe = "import json, sys, jlocalconv.keras; print(json.dumps(sorted(sys.modules)))"
    run = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    loaded = json.loads(run.stdout)
    heavy = [m for m in loaded if m.split(".")[0] in ("h5py", "keras", "tf_keras", "tensorflow")]
    assert not heavy and "jlocalconv.keras.reader" not in loaded
