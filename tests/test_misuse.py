"""Misuse gets a clear error naming the argument, the expectation and what was received.

``MISUSES`` is also the source of the table in docs/errors.md: a test checks the file holds
exactly the table rendered from it. After changing ``MISUSES``, regenerate the table with
``python tests/test_misuse.py``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlocalconv

X = np.zeros((2, 6, 5, 3), np.float32)  # channels_last; a 3x3 window gives 4x3 outputs
K = np.zeros((12, 27, 4), np.float32)  # (output_items, feature_dim, filters)
Y = np.zeros((2, 4, 3, 4), np.float32)  # the result: (batch, *output_shape, filters)
DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "errors.md"
BEGIN, END = "<!-- errors-table:begin -->", "<!-- errors-table:end -->"


def conv2d(inputs=X, kernel=K, kernel_size=3, strides=1, **kwargs):
    return jlocalconv.local_conv2d(inputs, kernel, kernel_size, strides, **kwargs)


def transpose2d(outputs=None, kernel=K, input_shape=(6, 5)):
    outputs = Y if outputs is None else outputs
    return jlocalconv.local_conv2d_transpose(outputs, kernel, 3, 1, input_shape)


def traced(**static):
    """Passes the keyword argument ``static`` to ``conv2d`` as a jit argument (traced)."""
    ((name, value),) = static.items()
    return jax.jit(lambda v: conv2d(**{name: v}))(value)


@dataclasses.dataclass(frozen=True)
class Misuse:
    situation: str
    call: Callable[[], object]
    exc: type[Exception]
    arg: str
    excerpt: tuple[str, ...]  # the expected and the received parts, in message order


MISUSES = [
    # Operands: type, dtype, rank and shape.
    Misuse("`inputs` is a Python list", lambda: conv2d(X.tolist()), TypeError, "inputs",
           ("a jax.Array or numpy.ndarray", "got list", "jnp.asarray(inputs)")),
    Misuse("`kernel` is a Python list", lambda: conv2d(kernel=K.tolist()), TypeError, "kernel",
           ("a jax.Array or numpy.ndarray", "got list", "jnp.asarray(kernel)")),
    Misuse("`bias` is a Python list", lambda: conv2d(bias=[0.0] * 4), TypeError, "bias",
           ("a jax.Array or numpy.ndarray", "got list")),
    Misuse("`inputs` is a scalar", lambda: conv2d(np.float32(1)), TypeError, "inputs",
           ("a jax.Array or numpy.ndarray", "got float32")),
    Misuse("integer `inputs`", lambda: conv2d(X.astype(np.int32)), TypeError, "inputs",
           ("a real floating array", "dtype int32", "Cast it first")),
    Misuse("bool `kernel`", lambda: conv2d(kernel=K.astype(bool)), TypeError, "kernel",
           ("a real floating array", "dtype bool")),
    Misuse("complex `inputs`", lambda: conv2d(X.astype(np.complex64)), TypeError, "inputs",
           ("a real floating array", "dtype complex64")),
    Misuse("`kernel` dtype differs from `inputs`", lambda: conv2d(kernel=K.astype(np.float16)),
           TypeError, "kernel",
           ("of the same dtype as `inputs` (float32)", "dtype float16", "preferred_element_type")),
    Misuse("`inputs` of the wrong rank for `local_conv2d`", lambda: conv2d(X[0]), ValueError,
           "inputs", ("of rank 4", "shape (6, 5, 3)")),
    Misuse("`inputs` of rank < 3 for `local_conv`",
           lambda: jlocalconv.local_conv(X[0, 0], K, 3, 1), ValueError, "inputs",
           ("of rank >= 3", "shape (5, 3)")),
    Misuse("`kernel` not of rank 3", lambda: conv2d(kernel=K[0]), ValueError, "kernel",
           ("of rank 3 (output_items, feature_dim, filters)", "shape (27, 4)")),
    Misuse("`kernel` feature_dim does not match `kernel_size` and channels",
           lambda: conv2d(kernel=K[:, :26]), ValueError, "kernel",
           ("of feature_dim (axis 1)", "= 27", "got kernel.shape=(12, 26, 4)")),
    Misuse("channels_first `inputs` without `data_format`",
           lambda: conv2d(np.moveaxis(X, -1, 1)), ValueError, "kernel",
           ("channels_in=5 = 45", "got kernel.shape=(12, 27, 4)")),
    Misuse("`kernel` output_items does not match the output positions",
           lambda: conv2d(kernel=K[:11]), ValueError, "kernel",
           ("of output_items (axis 0)", "= 12", "got kernel.shape=(11, 27, 4)")),
    Misuse("`kernel` with zero filters", lambda: conv2d(kernel=K[..., :0]), ValueError,
           "kernel", ("at least one filter", "shape (12, 27, 0)")),
    Misuse("`local_conv1d` kernel rows differ from the output length",
           lambda: jlocalconv.local_conv1d(X[:, 0], K[:2, :9], 3, 1), ValueError, "kernel",
           ("of output_items (axis 0)", "= 3", "got kernel.shape=(2, 9, 4)")),
    Misuse("`bias` of the wrong shape", lambda: conv2d(bias=np.zeros(3, np.float32)),
           ValueError, "bias", ("of shape (4,) or (4, 3, 4)", "shape (3,)")),
    Misuse("`inputs` with zero channels",
           lambda: conv2d(X[..., :0], K[:, :0]), ValueError, "inputs",
           ("at least one channel", "shape (2, 6, 5, 0)")),
    Misuse("`inputs` with an empty spatial dimension", lambda: conv2d(X[:, :0]), ValueError,
           "inputs", ("a non-empty spatial shape", "(0, 5)")),
    # Static arguments: traced, non-integer, out of range, wrong length.
    Misuse("`kernel_size` traced (a jit argument)", lambda: traced(kernel_size=3), TypeError,
           "kernel_size", ("an int >= 1", "got traced array", "static_argnames")),
    Misuse("`kernel_size` holding a traced value", lambda: traced(kernel_size=(3, 3))
           , TypeError, "kernel_size", ("an int >= 1", "Tracer", "static_argnames")),
    Misuse("`strides` traced", lambda: traced(strides=1), TypeError, "strides",
           ("an int >= 1", "got traced array", "static_argnames")),
    Misuse("`dilation` traced", lambda: traced(dilation=1), TypeError, "dilation",
           ("an int >= 1", "got traced array", "static_argnames")),
    Misuse("`padding` traced", lambda: traced(padding=0), TypeError, "padding",
           ("a non-negative int", "got traced array", "static_argnames")),
    Misuse("`output_shape` traced", lambda: traced(output_shape=jnp.array([4, 3])), TypeError,
           "output_shape", ("None or a tuple of 2 ints", "got traced array", "static_argnames")),
    Misuse("`kernel_size` zero", lambda: conv2d(kernel_size=(0, 3)), ValueError, "kernel_size",
           ("an int >= 1", "got (0, 3)")),
    Misuse("`strides` negative", lambda: conv2d(strides=-1), ValueError, "strides",
           ("an int >= 1", "got (-1, -1)")),
    Misuse("`dilation` zero", lambda: conv2d(dilation=0), ValueError, "dilation",
           ("an int >= 1", "got (0, 0)")),
    Misuse("`kernel_size` not an int", lambda: conv2d(kernel_size=2.5), TypeError, "kernel_size",
           ("an int >= 1", "got 2.5")),
    Misuse("`kernel_size` of the wrong length", lambda: conv2d(kernel_size=(3, 3, 3)),
           ValueError, "kernel_size", ("a tuple of 2 such ints", "(length 3)")),
    Misuse("`strides` of the wrong length", lambda: conv2d(strides=(1,)), ValueError, "strides",
           ("a tuple of 2 such ints", "(length 1)")),
    Misuse("window larger than the padded input", lambda: conv2d(kernel_size=(7, 3)),
           ValueError, "kernel_size",
           ("no larger than the padded input (6, 5)", "kernel_size=(7, 3)")),
    Misuse("`padding` negative", lambda: conv2d(padding=-1), ValueError, "padding",
           ("a non-negative int", "got -1")),
    Misuse("`padding` with the wrong number of pairs", lambda: conv2d(padding=((1, 1),) * 3),
           TypeError, "padding", ("2 (low, high) pairs", "got ((1, 1), (1, 1), (1, 1))")),
    Misuse("`padding` an unknown mode", lambda: conv2d(padding="full"), ValueError, "padding",
           ("one of ('valid', 'same', 'causal')", "got 'full'")),
    Misuse("`padding='causal'` with 2 spatial dims", lambda: conv2d(padding="causal"),
           ValueError, "padding", ("'causal' only with 1 spatial dimension", "2 dimensions")),
    Misuse("`data_format` unknown", lambda: conv2d(data_format="NHWC"), ValueError,
           "data_format", ("None or one of ('channels_last', 'channels_first')", "got 'NHWC'")),
    Misuse("`output_shape` off by one", lambda: conv2d(output_shape=(5, 3)), ValueError,
           "output_shape", ("the shape implied by the input and the geometry, (4, 3)",
                            "got (5, 3)")),
    Misuse("`output_shape` of the wrong length", lambda: conv2d(output_shape=(4,)), ValueError,
           "output_shape", ("(4, 3)", "got (4,)")),
    Misuse("`output_shape` not integers", lambda: conv2d(output_shape=(4.5, 3)), TypeError,
           "output_shape", ("None or a tuple of 2 ints", "got (4.5, 3)")),
    Misuse("`data_format` passed where `output_shape` goes",
           lambda: jlocalconv.local_conv2d(X, K, 3, 1, "channels_first"), TypeError,
           "output_shape", ("None or a tuple of 2 ints", "got 'channels_first'")),
    Misuse("`implementation` unknown", lambda: conv2d(implementation="fastest"), ValueError,
           "implementation", ("one of ('auto'", "got 'fastest'")),
    Misuse("`preferred_element_type` not floating",
           lambda: conv2d(preferred_element_type=jnp.int32), TypeError,
           "preferred_element_type", ("None or a real floating dtype", "got int32")),
    # Shape helpers.
    Misuse("`kernel_shape` with zero filters", lambda: jlocalconv.kernel_shape(X.shape, 0, 3),
           ValueError, "filters", ("a positive int", "got 0")),
    Misuse("`conv_output_shape` with a negative size",
           lambda: jlocalconv.conv_output_shape((5, -1), 2), ValueError, "input_spatial_shape",
           ("non-negative ints", "got (5, -1)")),
    # The transposed convolution (its outputs are the forward result, (2, 4, 3, 4) here) and
    # the layout converters.
    Misuse("`local_conv_transpose`: `outputs` not the forward result's shape",
           lambda: transpose2d(Y[..., :3]), ValueError, "outputs",
           ("of shape (2, 4, 3, 4)", "input_shape=(6, 5)", "shape (2, 4, 3, 3)")),
    Misuse("`local_conv_transpose`: `input_shape` that does not give the kernel's positions",
           lambda: transpose2d(input_shape=(7, 5)), ValueError, "kernel",
           ("of output_items (axis 0)", "= 15", "got kernel.shape=(12, 27, 4)")),
    Misuse("`local_conv_transpose`: `kernel` dtype differs from `outputs`",
           lambda: transpose2d(kernel=K.astype(np.float16)), TypeError, "kernel",
           ("of the same dtype as `outputs` (float32)", "dtype float16")),
    Misuse("`layout.to_lax` with the wrong `channels_in`",
           lambda: jlocalconv.layout.to_lax(K, (4, 3), 3, 2), ValueError, "kernel",
           ("of feature_dim (axis 1)", "= 18", "got kernel.shape=(12, 27, 4)")),
]  # fmt: skip


def check_misuse(misuse: Misuse) -> None:
    """Runs ``misuse.call`` and checks the exception, the argument and the excerpts' order."""
    with pytest.raises(misuse.exc) as info:
        misuse.call()
    message = str(info.value)
    assert f"`{misuse.arg}` must be " in message, message
    positions = [message.find(part) for part in misuse.excerpt]
    assert -1 not in positions, f"missing {misuse.excerpt[positions.index(-1)]!r} in {message}"
    assert positions == sorted(positions), f"excerpt out of order in {message}"


@pytest.mark.parametrize("misuse", MISUSES, ids=lambda m: m.situation.replace("`", ""))
def test_misuse_raises_naming_argument_expected_and_received(misuse):
    check_misuse(misuse)


def _cell(text: str) -> str:
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def render_table(misuses: list[Misuse] = MISUSES) -> str:
    """The markdown table of ``misuses``, as docs/errors.md holds it."""
    lines = ["| situation | exception | argument | message excerpt |", "|---|---|---|---|"]
    for m in misuses:
        excerpt = " … ".join(_cell(part) for part in m.excerpt)
        lines.append(f"| {m.situation} | `{m.exc.__name__}` | `{m.arg}` | {excerpt} |")
    return "\n".join(lines)


def docs_table(begin: str = BEGIN, end: str = END) -> str:
    """The table between the ``begin`` and ``end`` markers of docs/errors.md."""
    text = DOCS.read_text()
    return text[text.index(begin) + len(begin) : text.index(end)].strip()


def test_docs_error_table_matches_the_tested_misuses():
    assert docs_table() == render_table(), "regenerate: python tests/test_misuse.py"


def test_every_documented_situation_is_tested():
    """Redundant with the equality above, but names the row that drifted."""
    situations = {m.situation for m in MISUSES}
    for row in docs_table().splitlines()[2:]:
        assert row.split(" | ")[0].removeprefix("| ") in situations, row


def test_numpy_jax_and_list_operands():
    """NumPy and JAX operands are equivalent (bit for bit); lists are rejected above."""
    rng = np.random.default_rng(0)
    x, k = rng.standard_normal(X.shape, np.float32), rng.standard_normal(K.shape, np.float32)
    want = np.asarray(conv2d(jnp.asarray(x), jnp.asarray(k)))
    np.testing.assert_array_equal(conv2d(x, k), want)
    np.testing.assert_array_equal(conv2d(x, jnp.asarray(k)), want)


def _to_other_format(kernel, kernel_size, channels, from_format):
    """Reorders feature_dim between (k..., C) (channels_last) and (C, k...) (channels_first)."""
    p, _, f = kernel.shape
    n = len(kernel_size)
    if from_format == "channels_last":
        k = kernel.reshape(p, *kernel_size, channels, f)
        return np.moveaxis(k, n + 1, 1).reshape(p, -1, f)
    k = kernel.reshape(p, channels, *kernel_size, f)
    return np.moveaxis(k, 1, n + 1).reshape(p, -1, f)


@pytest.mark.parametrize("from_format", ["channels_last", "channels_first"])
def test_a_kernel_from_the_other_data_format_is_not_detectable_but_converts(from_format):
    """feature_dim = prod(kernel_size) * C in both formats: only the order differs, so a
    kernel trained in the other format passes every shape check and gives wrong numbers.
    Reordering feature_dim (docs/errors.md, README "Kernel layout") makes it exact."""
    rng = np.random.default_rng(1)
    x_cl = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
    x = {"channels_last": x_cl, "channels_first": np.moveaxis(x_cl, -1, 1)}
    k = rng.standard_normal((9, 2 * 3 * 3, 2)).astype(np.float32)  # window (3, 2), C = 3
    to_format = "channels_first" if from_format == "channels_last" else "channels_last"
    as_cl = lambda y, fmt: np.moveaxis(np.asarray(y), 1, -1) if fmt == "channels_first" else y
    run = lambda k, fmt: as_cl(jlocalconv.local_conv(x[fmt], k, (3, 2), 1, None, fmt), fmt)
    want = run(k, from_format)
    wrong = run(k, to_format)  # accepted: same shape
    assert not np.allclose(wrong, want)
    converted = _to_other_format(k, (3, 2), 3, from_format)
    np.testing.assert_allclose(run(converted, to_format), want, rtol=1e-5, atol=1e-6)
    if importlib.util.find_spec("jlocalconv.layout") is not None:  # the interop converter
        by_library = jlocalconv.layout.convert_data_format(k, (3, 2), 3, from_format, to_format)
        np.testing.assert_array_equal(by_library, converted)


def write_docs(begin: str = BEGIN, end: str = END, misuses: list[Misuse] = MISUSES) -> None:
    """Replaces the table between ``begin`` and ``end`` in docs/errors.md by ``misuses``'."""
    text = DOCS.read_text()
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    DOCS.write_text(f"{head}{begin}\n{render_table(misuses)}\n{end}{tail}")


if __name__ == "__main__":
    sys.exit(write_docs())
