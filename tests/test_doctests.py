"""The ``>>>`` examples in the docstrings of every jlocalconv module run and print what they say.

Modules whose optional dependency is missing (flax, equinox, h5py, ...) are skipped, not failed.
"""

import doctest
import importlib
import pkgutil

import pytest

import jlocalconv


def module_names() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.walk_packages(jlocalconv.__path__, prefix="jlocalconv.")
        if info.name != "jlocalconv.__main__"  # runs the demo on import
    )


def test_the_core_modules_are_collected():
    assert {"jlocalconv.ops", "jlocalconv.geometry", "jlocalconv._demo"} <= set(module_names())


@pytest.mark.parametrize("name", ["jlocalconv", *module_names()])
def test_docstring_examples(name):
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        pytest.skip(f"{name}: optional dependency missing ({err})")
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):  # globals: the module's own, as pytest does
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
