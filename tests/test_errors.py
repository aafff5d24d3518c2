"""Every bad-input case of the core raises at trace time, naming the argument."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlocalconv

X = np.zeros((2, 6, 5, 3), np.float32)  # channels_last, out 4x3 for a 3x3 window
K = np.zeros((12, 27, 4), np.float32)


def _call(**overrides):
    args = dict(inputs=X, kernel=K, kernel_size=(3, 3), strides=(1, 1))
    args.update(overrides)
    fn = args.pop("fn", jlocalconv.local_conv2d)
    return fn(args.pop("inputs"), args.pop("kernel"), args.pop("kernel_size"),
              args.pop("strides"), **args)  # fmt: skip


BAD = [
    # (id, overrides, exception, argument named, text that must appear)
    ("input-rank", dict(inputs=X[0]), ValueError, "inputs", "rank 4"),
    ("input-rank-generic", dict(fn=jlocalconv.local_conv, inputs=X[0, 0]), ValueError,
     "inputs", "rank >= 3"),
    ("kernel-not-3d", dict(kernel=K[0]), ValueError, "kernel", "rank 3"),
    ("feature-dim", dict(kernel=K[:, :26]), ValueError, "kernel", "= 27"),
    ("output-items", dict(kernel=K[:11]), ValueError, "kernel", "= 12"),
    ("kernel-size-zero", dict(kernel_size=(0, 3)), ValueError, "kernel_size", "got (0, 3)"),
    ("kernel-size-length", dict(kernel_size=(3, 3, 3)), ValueError, "kernel_size", "length 3"),
    ("kernel-size-float", dict(kernel_size=2.5), TypeError, "kernel_size", "got 2.5"),
    ("strides-negative", dict(strides=-1), ValueError, "strides", "got (-1, -1)"),
    ("strides-bool", dict(strides=True), TypeError, "strides", "got True"),
    ("dilation-zero", dict(dilation=0), ValueError, "dilation", "int >= 1"),
    ("window-too-large", dict(kernel_size=(7, 3)), ValueError, "kernel_size", "padded input"),
    ("empty-input", dict(inputs=np.zeros((2, 0, 5, 3), np.float32)), ValueError, "inputs",
     "non-empty spatial"),
    ("data-format", dict(data_format="NHWC"), ValueError, "data_format", "'NHWC'"),
    ("padding-mode", dict(padding="full"), ValueError, "padding", "'full'"),
    ("padding-negative", dict(padding=-1), ValueError, "padding", "non-negative"),
    ("padding-pairs", dict(padding=((1, 1),)), TypeError, "padding", "pairs"),
    ("causal-2d", dict(padding="causal"), ValueError, "padding", "2 dimensions"),
    ("bias-shape", dict(bias=np.zeros((3,), np.float32)), ValueError, "bias", "(4,)"),
    ("bias-positions", dict(bias=np.zeros((3, 4, 4), np.float32)), ValueError, "bias",
     "(4, 3, 4)"),
    ("int-inputs", dict(inputs=X.astype(np.int32)), TypeError, "inputs", "int32"),
    ("bool-kernel", dict(kernel=K.astype(bool)), TypeError, "kernel", "bool"),
    ("complex-inputs", dict(inputs=X.astype(np.complex64)), TypeError, "inputs", "complex64"),
    ("mixed-dtypes", dict(kernel=K.astype(np.float16)), TypeError, "kernel", "float16"),
    ("output-shape", dict(output_shape=(4, 4)), ValueError, "output_shape", "(4, 3)"),
    ("implementation", dict(implementation="fastest"), ValueError, "implementation",
     "'fastest'"),
    ("list-inputs", dict(inputs=X.tolist()), TypeError, "inputs", "list"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "exc", "arg", "text"),
                         [b[1:] for b in BAD], ids=[b[0] for b in BAD])  # fmt: skip
def test_bad_input_names_argument(overrides, exc, arg, text):
    with pytest.raises(exc) as info:
        _call(**overrides)
    message = str(info.value)
    assert f"`{arg}`" in message, message
    assert text in message, message
    assert "must be" in message and "got" in message, message


def test_errors_are_raised_while_tracing():
    """Errors come from static shapes, so jit raises before any computation."""
    with pytest.raises(ValueError, match="`kernel`"):
        jax.jit(lambda x, k: jlocalconv.local_conv2d(x, k, 3, 1)).lower(X, K[:11])


def test_traced_kernel_size_gets_a_static_hint():
    def f(x, k, size):
        return jlocalconv.local_conv2d(x, k, size, 1)

    with pytest.raises(TypeError, match=re.escape("static_argnames")):
        jax.jit(f)(X, K, 3)


def test_local_conv1d_output_length_from_kernel():
    x = np.zeros((2, 10, 3), np.float32)
    k = np.zeros((7, 9, 4), np.float32)  # valid would give 8 outputs
    with pytest.raises(ValueError, match=r"`kernel` must be of output_items .* = 8"):
        jlocalconv.local_conv1d(x, k, 3, 1)


@pytest.mark.parametrize(
    ("fn", "args", "arg"),
    [
        (jlocalconv.conv_output_shape, ((5, 5), 6), "kernel_size"),
        (jlocalconv.conv_output_shape, ((5, -1), 2), "input_spatial_shape"),
        (jlocalconv.conv_output_shape, ((9,), 2, 1, "causal", 0), "dilation"),
        (jlocalconv.kernel_shape, ((2, 5, 5, 3), 0, 3), "filters"),
        (jlocalconv.kernel_shape, ((2, 5, 5, 3), 4, 3, 1, "valid", 1, "nchw"), "data_format"),
    ],
)
def test_shape_helpers_validate(fn, args, arg):
    with pytest.raises((ValueError, TypeError), match=f"`{arg}`"):
        fn(*args)


def test_nothing_is_broadcast_silently():
    """A (filters,) bias for the wrong filter count and a batch-1 kernel are rejected."""
    with pytest.raises(ValueError, match="`bias`"):
        _call(bias=np.zeros((1,), np.float32))
    with pytest.raises(ValueError, match="`kernel`"):
        _call(kernel=jnp.zeros((1, 27, 4)))
