"""tf_keras: ``backend.local_conv1d/2d`` (N-D ``local_conv`` for 3-D) and
``LocallyConnected1D/2D`` with ``implementation=1, 2, 3``, each under ``tf.function``."""

from __future__ import annotations

import contextlib
import functools
import time

import numpy as np

from bench.candidate import Built, Candidate, Problem, Skip
from bench.peers import Options, require


def candidates(options: Options) -> list[Candidate]:
    tf = require("tensorflow")
    tf_keras = require("tf_keras")
    _set_threads(tf, options.threads)
    layers = [
        Candidate(
            f"tf_keras.LC{impl}", "tf_keras", functools.partial(_layer, tf, tf_keras, impl, options)
        )
        for impl in (1, 2, 3)
    ]
    backend = functools.partial(_backend, tf, options)
    return [Candidate("tf_keras.local_conv", "tf_keras", backend), *layers]


def _set_threads(tf, threads: int) -> None:
    # Raises once TF has initialised (e.g. set by an earlier call): keep that setting.
    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(threads)


def _backend(tf, options: Options, problem: Problem) -> Built:
    """``tf_keras.backend.local_conv1d/2d``, the N-D ``local_conv`` for 3-D; valid only."""
    from tf_keras.src import backend

    s, geom = problem.shape, problem.geom
    if any(geom.padding[d] != (0, 0) for d in range(geom.ndim)):
        raise Skip("backend local_conv is valid-padding only")
    _check_positions(options, problem)
    dtype = tf.as_dtype(s.dtype)
    x = tf.cast(problem.inputs, dtype)
    kernel = tf.Variable(tf.cast(problem.kernel, dtype))
    args = (s.kernel_size, s.strides)
    if geom.ndim == 1:
        fn = lambda x: backend.local_conv1d(x, kernel, *args, "channels_last")
    elif geom.ndim == 2:
        fn = lambda x: backend.local_conv2d(x, kernel, *args, geom.output_shape, "channels_last")
    else:
        fn = lambda x: backend.local_conv(x, kernel, *args, geom.output_shape, "channels_last")
    return _build(tf, fn, x, [kernel], problem.cotangent)


def _layer(tf, tf_keras, impl: int, options: Options, problem: Problem) -> Built:
    """``LocallyConnected{1,2}D(implementation=impl)`` with the problem's kernel loaded."""
    s = problem.shape
    _check_layer_supports(impl, options, problem)
    layer_cls = {1: tf_keras.layers.LocallyConnected1D, 2: tf_keras.layers.LocallyConnected2D}
    layer = layer_cls[s.ndim](
        s.filters,
        s.kernel_size,
        strides=s.strides,
        padding=s.padding,
        implementation=impl,
        use_bias=False,
        dtype=s.dtype,
    )
    layer.build(problem.inputs.shape)
    layer.kernel.assign(tf.cast(_layer_kernel(impl, problem, layer), layer.kernel.dtype))
    x = tf.cast(problem.inputs, tf.as_dtype(s.dtype))
    return _build(tf, layer, x, [layer.kernel], problem.cotangent)


def _check_layer_supports(impl: int, options: Options, problem: Problem) -> None:
    s, geom = problem.shape, problem.geom
    if s.ndim not in (1, 2):
        raise Skip(f"tf_keras has LocallyConnected1D/2D only (shape is {s.ndim}-D)")
    if impl == 1 and s.padding != "valid":
        raise Skip("LocallyConnected implementation=1 is valid-padding only")
    if impl == 1:
        _check_positions(options, problem)
    itemsize = np.dtype(np.float32).itemsize if s.dtype == "float32" else 2
    dense = np.prod(s.spatial) * s.channels * geom.output_items * s.filters * itemsize
    if impl == 2 and dense > options.dense_budget_bytes:
        raise Skip(
            f"implementation=2's dense kernel would be {dense / 2**30:.1f} GiB "
            f"(budget {options.dense_budget_bytes / 2**30:.1f} GiB)"
        )
    if impl == 3 and s.kernel_items() > options.sparse_budget_nnz:
        raise Skip(
            f"implementation=3 enumerates {s.kernel_items() / 1e6:.1f}M kernel indices in a "
            f"Python loop when built (budget {options.sparse_budget_nnz / 1e6:.0f}M)"
        )


def _check_positions(options: Options, problem: Problem) -> None:
    positions = problem.geom.output_items
    if positions > options.loop_budget_positions:
        raise Skip(
            f"backend local_conv traces one slice per output position ({positions}, budget "
            f"{options.loop_budget_positions}): fwd+bwd tracing alone took minutes at 3600"
        )


def _layer_kernel(impl: int, problem: Problem, layer) -> np.ndarray:
    if impl == 1:
        return problem.kernel
    if impl == 2:
        return _dense_kernel(problem)
    return _sparse_values(problem, np.asarray(layer.kernel_idxs))


def _window_offsets(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension strides and low pads as column vectors (for index arithmetic)."""
    geom = problem.geom
    strides = np.asarray(geom.strides)[:, None]
    low = np.asarray([lo for lo, _ in geom.padding])[:, None]
    return strides, low


def _dense_kernel(problem: Problem) -> np.ndarray:
    """The Keras kernel as implementation 2's ``(*spatial, C, *output_shape, F)`` matrix."""
    geom, k = problem.geom, problem.kernel
    spatial, c = np.asarray(problem.shape.spatial)[:, None], geom.channels
    strides, low = _window_offsets(problem)
    positions = np.indices(geom.output_shape).reshape(geom.ndim, -1)
    dense = np.zeros((int(np.prod(spatial)), c, geom.output_items, k.shape[-1]), k.dtype)
    for w, offset in enumerate(np.ndindex(*geom.kernel_size)):
        source = positions * strides + np.asarray(offset)[:, None] - low
        inside = np.all((source >= 0) & (source < spatial), axis=0)
        flat = np.ravel_multi_index(tuple(source[:, inside]), problem.shape.spatial)
        dense[flat, :, inside.nonzero()[0], :] = k[inside, w * c : (w + 1) * c, :]
    return dense.reshape(*problem.shape.spatial, c, *geom.output_shape, k.shape[-1])


def _sparse_values(problem: Problem, idxs: np.ndarray) -> np.ndarray:
    """The Keras kernel's entries in the order of implementation 3's ``kernel_idxs``.

    Each index pair is (flat ``(*output_shape, F)`` position, flat ``(*spatial, C)`` position).
    Pairs outside our window (tf_keras centres "same" windows differently from XLA when the
    total padding is odd) get 0, so the reference check reports the difference.
    """
    geom, k = problem.geom, problem.kernel
    item, f = np.divmod(idxs[:, 0], k.shape[-1])
    source, c = np.divmod(idxs[:, 1], geom.channels)
    strides, low = _window_offsets(problem)
    out = np.stack(np.unravel_index(item, geom.output_shape))
    src = np.stack(np.unravel_index(source, problem.shape.spatial))
    offset = src - out * strides + low
    inside = np.all((offset >= 0) & (offset < np.asarray(geom.kernel_size)[:, None]), axis=0)
    window = np.ravel_multi_index(tuple(offset), geom.kernel_size, mode="clip")
    return np.where(inside, k[item, window * geom.channels + c, f], 0).astype(k.dtype)


def _build(tf, fn, x, variables, cotangent: np.ndarray) -> Built:
    """``tf.function`` forward and value-and-gradient (input and ``variables``).

    TF has no separate compile step: ``compile_s`` is each function's first call (trace,
    graph optimisation and one run).
    """
    g = tf.constant(cotangent)
    forward = tf.function(fn)

    @tf.function
    def forward_backward(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.cast(fn(x), tf.float32) * g)
        return loss, tape.gradient(loss, [x, *variables])

    start = time.perf_counter()
    y = forward(x)
    fwd_s = time.perf_counter() - start
    start = time.perf_counter()
    forward_backward(x)
    vag_s = time.perf_counter() - start
    return Built(
        forward=lambda: forward(x),
        forward_backward=lambda: forward_backward(x),
        result=tf.cast(y, tf.float32).numpy(),
        compile_s=(fwd_s, vag_s),
    )
