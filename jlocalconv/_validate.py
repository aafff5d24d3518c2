"""Argument normalisation and checks shared by every public function.

Static arguments (shapes, windows, formats, counts) are plain Python, so each check here
runs once per trace and raises, through :func:`jlocalconv._errors.fail`, a ``ValueError`` or
``TypeError`` naming the function, the argument, the expectation and the received value.
Checks of array operands against a geometry live beside the geometry
(:mod:`jlocalconv._checks`); the implementation name is checked where the static description
of a call is built (:mod:`jlocalconv.spec`).

May import: ``_errors`` (and ``jax`` lazily, to recognise tracers).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any, Literal

from jlocalconv._errors import fail

DataFormat = Literal["channels_last", "channels_first"]
IntOrTuple = int | Sequence[int]

DATA_FORMATS = ("channels_last", "channels_first")


def as_int(value: Any) -> int | None:
    """``value`` as a Python int if it is a static integer (not bool), else None.

    Example:
      >>> from jlocalconv._validate import as_int
      >>> as_int(3), as_int(True), as_int(2.0)
      (3, None, None)
    """
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # int, np.integer; rejects floats and tracers
    except TypeError:
        return None


def static_hint(value: object) -> str:
    """The hint to add when ``value`` holds a tracer (a shape argument passed through ``jit``)."""
    import jax  # lazily: the rest of this module is plain Python

    # Tracers may hide inside tuples (e.g. kernel_size=(n, 3) or padding=((n, n), ...)).
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(value)):
        return (
            "Shape arguments must be static Python ints: mark them static "
            "(jax.jit(..., static_argnames=...)) or close over them."
        )
    return ""


def normalize_tuple(
    value: IntOrTuple, n: int, fn: str, arg: str, *, minimum: int = 1
) -> tuple[int, ...]:
    """Normalises an int or a sequence of ``n`` ints to a tuple of ``n`` ints >= ``minimum``.

    Raises:
      TypeError: if ``value`` is not an int or a sequence of ints (e.g. a traced value).
      ValueError: if the length is not ``n`` or an entry is below ``minimum``.

    Example:
      >>> from jlocalconv._validate import normalize_tuple
      >>> normalize_tuple(3, 2, "f", "kernel_size")
      (3, 3)
    """
    if minimum == 0:
        expected = f"a non-negative int or a tuple of {n} non-negative ints"
    else:
        expected = f"an int >= {minimum} or a tuple of {n} such ints"
    single = as_int(value)
    if single is not None:
        items: tuple[int | None, ...] = (single,) * n
    elif isinstance(value, Sequence) and not isinstance(value, str):
        items = tuple(as_int(v) for v in value)
        if any(v is None for v in items):
            fail(fn, arg, expected, value, exc=TypeError, hint=static_hint(value))
        if len(items) != n:
            fail(fn, arg, expected, f"{tuple(value)!r} (length {len(items)})")
    else:
        fail(fn, arg, expected, value, exc=TypeError, hint=static_hint(value))
    ints = tuple(v for v in items if v is not None)
    if len(ints) != len(items) or any(v < minimum for v in ints):
        fail(fn, arg, expected, tuple(items))
    return ints


def shape_tuple(
    value: Any,
    fn: str,
    arg: str,
    *,
    ndim: int | None = None,
    minimum: int = 1,
    what: str = "",
    hint: str = "",
) -> tuple[int, ...]:
    """A shape argument as a tuple of ints >= ``minimum``: the one shape validator.

    Args:
      value: a non-empty sequence of ints; a single int too when ``ndim`` is given.
      fn, arg: the function and argument to name in errors.
      ndim: the required length, or None for any non-zero length.
      minimum: the smallest size allowed (0 for shapes that may be empty).
      what: what the shape is (e.g. "the input's spatial shape"), for the message.
      hint: added to the message of a shape of the wrong length.

    Returns:
      The shape as a tuple of Python ints.

    Raises:
      TypeError: if ``value`` is not a sequence of static ints.
      ValueError: for a wrong length or a size below ``minimum``.

    Example:
      >>> from jlocalconv._validate import shape_tuple
      >>> shape_tuple([28, 28], "f", "input_shape")
      (28, 28)
    """
    if ndim is not None and as_int(value) is not None:
        return normalize_tuple(value, ndim, fn, arg, minimum=minimum)
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        kind = "positive" if minimum == 1 else "non-negative"
        expected = f"{what + ', ' if what else ''}a non-empty tuple of {kind} ints"
        fail(fn, arg, expected, value, exc=TypeError, hint=static_hint(value))
    if ndim is not None and len(value) != ndim and hint:
        expected = f"{what or 'a shape'} of {ndim} ints"
        fail(fn, arg, expected, f"{tuple(value)!r} (length {len(value)})", hint=hint)
    return normalize_tuple(tuple(value), ndim or len(value), fn, arg, minimum=minimum)


def positive_int(value: object, fn: str, arg: str) -> int:
    """``value`` as an int >= 1: the one count check (filters, channels).

    Raises:
      TypeError: if ``value`` is not an integer (bool and floats included).
      ValueError: if it is below 1.

    Example:
      >>> from jlocalconv._validate import positive_int
      >>> positive_int(4, "f", "filters")
      4
    """
    count = as_int(value)
    if count is None:
        fail(fn, arg, "a positive int", value, exc=TypeError)
    if count < 1:
        fail(fn, arg, "a positive int", value)
    return count


def normalize_data_format(data_format: str | None, fn: str = "jlocalconv") -> DataFormat:
    """``None`` -> ``"channels_last"``; validates and lower-cases the string.

    Example:
      >>> from jlocalconv._validate import normalize_data_format
      >>> normalize_data_format("Channels_First")
      'channels_first'
    """
    if data_format is None:
        return "channels_last"
    if not isinstance(data_format, str) or data_format.lower() not in DATA_FORMATS:
        fail(fn, "data_format", f"None or one of {DATA_FORMATS}", repr(data_format))
    return "channels_first" if data_format.lower() == "channels_first" else "channels_last"


def channels_from_kernel(kernel: Any, window_items: int, fn: str, *, expected: str = "") -> int:
    """``C`` from a kernel's ``feature_dim = window_items * C``: the one such derivation.

    ``kernel`` must already be known to be rank 3 (``(output_items, feature_dim, filters)``).
    ``expected`` replaces the default wording of the error (the Keras converters keep theirs).

    Raises:
      ValueError: if ``feature_dim`` is not a positive multiple of ``window_items``.

    Example:
      >>> import numpy as np
      >>> from jlocalconv._validate import channels_from_kernel
      >>> channels_from_kernel(np.zeros((4, 27, 8)), 9, "f")
      3
    """
    features = kernel.shape[1]  # rank 3 checked by the caller
    if features % window_items or features == 0:
        default = "of feature_dim (axis 1) a positive multiple of prod(kernel_size)"
        expected = f"{expected or default} = {window_items}"
        fail(fn, "kernel", expected, f"kernel.shape={tuple(kernel.shape)}")
    return int(features // window_items)


def window_items(kernel_size: IntOrTuple, ndim: int, fn: str) -> int:
    """``prod(kernel_size)`` for ``ndim`` spatial dims, validating ``kernel_size``."""
    return math.prod(normalize_tuple(kernel_size, ndim, fn, "kernel_size"))
