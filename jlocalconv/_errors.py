"""User-facing error helpers: one message format for every bad argument.

Every check that a user can trip raises ``ValueError`` or ``TypeError`` with a
message of the form ``"<function>: <argument> must be <expected>; got <received>."``
so that the argument, the expectation and the received value are always named.
Internal invariants use ``chex`` assertions instead (they raise ``AssertionError``).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import NoReturn


def describe(value: object) -> str:
    """A short, unambiguous description of ``value`` for error messages."""
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        kind = "traced array" if _is_tracer(value) else type(value).__name__
        return f"{kind} of shape {tuple(shape)} and dtype {dtype}"
    return repr(value)


def _is_tracer(value: object) -> bool:
    import jax

    return isinstance(value, jax.core.Tracer)


def fail(
    fn: str, arg: str, expected: str, got: object, *, hint: str = "", exc: type = ValueError
) -> NoReturn:
    """Raises ``exc`` naming ``fn``, ``arg``, what was expected and what was received.

    ``got`` is either the offending value (described by :func:`describe`) or, when it is a
    ``str``, an already formatted description; pass ``repr(value)`` for user strings.
    """
    received = got if isinstance(got, str) else describe(got)
    message = f"{fn}: `{arg}` must be {expected}; got {received}."
    if hint:
        message += f" {hint}"
    raise exc(message)


def import_optional(module: str, extra: str, user: str) -> ModuleType:
    """Imports ``module`` or raises an ImportError that says which extra to install.

    Example:
      >>> from jlocalconv._errors import import_optional
      >>> import_optional("json", "none", "this example").__name__
      'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{user} needs {extra}: pip install 'jlocalconv[{extra}]'") from err
