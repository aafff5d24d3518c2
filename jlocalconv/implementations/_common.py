"""Layout helpers shared by every implementation (static permutations only)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jlocalconv.geometry import Geometry


def kernel_channels_major(kernel: jax.Array, geom: Geometry) -> jax.Array:
    """Returns the kernel with feature_dim ordered ``(C, k1, ..., kN)``.

    Keras flattens a channels_last window as ``(k..., C)`` and a channels_first one as
    ``(C, k...)``; XLA's patch extraction always yields ``(C, k...)``. Reordering the
    kernel (a parameter, usually smaller than the patch tensor) is the cheap side.
    """
    if not geom.channels_last:
        return kernel
    n, (items, _, filters) = geom.ndim, kernel.shape
    k = kernel.reshape(items, *geom.kernel_size, geom.channels, filters)
    k = k.transpose(0, n + 1, *range(1, n + 1), n + 2)
    return k.reshape(items, geom.feature_dim, filters)


def patches_keras_order(patches: jax.Array, geom: Geometry) -> jax.Array:
    """``(..., feature_dim)`` patches with features ``(C, k...)`` -> Keras's order for ``geom``.

    The other side of :func:`kernel_channels_major`: when the kernel is larger than the
    patch tensor (more filters than batch rows), reordering the patches avoids a second
    kernel-sized buffer.
    """
    if not geom.channels_last:
        return patches
    lead = patches.shape[:-1]
    p = patches.reshape(*lead, geom.channels, geom.window_items)
    return jnp.swapaxes(p, -1, -2).reshape(*lead, geom.feature_dim)


def positions_to_result(out: jax.Array, geom: Geometry) -> jax.Array:
    """``(output_items, batch, filters)`` -> the result in ``geom``'s data format."""
    _, batch, filters = out.shape
    if geom.channels_last:
        out = lax.transpose(out, (1, 0, 2))
        return out.reshape(batch, *geom.output_shape, filters)
    out = lax.transpose(out, (1, 2, 0))
    return out.reshape(batch, filters, *geom.output_shape)


def dimension_numbers(geom: Geometry) -> lax.ConvDimensionNumbers:
    """Dimension numbers for XLA convolutions: input in ``geom``'s format, output NHWC-like.

    Spelled out once: lhs is ``(N, C, spatial...)`` by axis index, the (implicit) rhs is
    ``OI`` + spatial, and the output is channels-last so patches land as
    ``(batch, *output_shape, features)``.
    """
    n = geom.ndim
    spatial = tuple(range(1, n + 1)) if geom.channels_last else tuple(range(2, n + 2))
    channel = n + 1 if geom.channels_last else 1
    return lax.ConvDimensionNumbers(
        lhs_spec=(0, channel, *spatial),
        rhs_spec=tuple(range(n + 2)),
        out_spec=(0, n + 1, *range(1, n + 1)),
    )


def contract(
    patches: jax.Array,
    kernel: jax.Array,
    precision: lax.PrecisionLike,
    preferred_element_type: jax.typing.DTypeLike | None,
) -> jax.Array:
    """``(P, B, features) x (P, features, F) -> (P, B, F)`` with P the output positions.

    Output positions are the dot's batch dimension, so each position multiplies its
    own filter bank; both operands are already in the canonical (batch, rows,
    contracted) order, so XLA inserts no transposes. A narrower kernel (16-bit filters
    with widened windows: see ``implementations.widened``) is widened here, where it is
    read: a tile loop then converts one block at a time.

    A single position is one plain matmul: XLA drops a batch dimension of one, and the
    kernel's gradient then came out filters-major, transposed through a kernel-sized
    buffer (sweep s30-38, 7416 features x 120 filters: 0.62 against 0.10 ms and 3.4 MiB
    of temporaries against none, for that gradient alone).
    """
    kernel = kernel.astype(patches.dtype)
    if patches.shape[0] == 1:
        plain = (((1,), (0,)), ((), ()))
        out = lax.dot_general(patches[0], kernel[0], plain, precision=precision,
                              preferred_element_type=preferred_element_type)  # fmt: skip
        return out[None]
    return lax.dot_general(
        patches,
        kernel,
        dimension_numbers=(((2,), (1,)), ((0,), (0,))),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def contract_kernel_major(
    patches: jax.Array,
    kernel: jax.Array,
    precision: lax.PrecisionLike,
    preferred_element_type: jax.typing.DTypeLike | None,
) -> jax.Array:
    """:func:`contract` as ``(P, F, B)`` kernel first, for a tangent that reverse mode
    transposes into the windows' cotangent.

    That transpose is then the kernel ``(P, features, F)`` contracted on its last axis with
    the cotangent as second operand, a form XLA's CPU backend runs fast (see
    ``slices.KERNEL_MAJOR_MIN_FILTERS_PER_ROW``), and a ``(P, features, B)`` result that
    is then transposed. The optimization barrier keeps XLA from folding that transpose
    back into the dot (which gives the slow form again); it is linear, so ``jvp``,
    ``vmap`` and transposition go through it. Same values as :func:`contract`.
    """
    if patches.shape[0] == 1:  # one plain matmul (see contract)
        return contract(patches, kernel, precision, preferred_element_type)
    kernel = kernel.astype(patches.dtype)  # as in contract
    batch_minor = lax.optimization_barrier(jnp.swapaxes(patches, 1, 2))
    out = lax.dot_general(
        kernel,
        batch_minor,
        dimension_numbers=(((1,), (1,)), ((0,), (0,))),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return jnp.swapaxes(out, 1, 2)


def contract_per_position(
    patches: jax.Array,
    kernel: jax.Array,
    precision: lax.PrecisionLike,
    preferred_element_type: jax.typing.DTypeLike | None,
) -> jax.Array:
    """:func:`contract` as one ``(B, features) x (features, F)`` dot per position.

    For a few positions (the program holds one dot per position) of a few batch rows:
    XLA's CPU backend runs a batched dot of such thin matrices on one core, while
    independent dots run concurrently (see ``tiles.PER_POSITION_MAX_BATCH``).
    """
    kernel = kernel.astype(patches.dtype)  # as in contract
    dots = [
        lax.dot(patches[p], kernel[p], precision=precision,
                preferred_element_type=preferred_element_type)
        for p in range(patches.shape[0])
    ]  # fmt: skip
    return jnp.stack(dots)


def result_dtype(
    inputs: jax.Array | np.ndarray, preferred_element_type: jax.typing.DTypeLike | None
) -> np.dtype:
    """The dtype :func:`contract` returns for ``inputs`` (and a kernel of the same dtype)."""
    return np.dtype(inputs.dtype if preferred_element_type is None else preferred_element_type)
