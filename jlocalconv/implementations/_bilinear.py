"""A bilinear op whose value and whose derivatives come from two implementations.

Local convolution ``f(x, k)`` is bilinear, so its JVP is ``f(dx, k) + f(x, dk)``:
the derivative is the op itself. :func:`split_bilinear` evaluates values with one
implementation (the fastest forward pass) and, whenever it is differentiated, values
and tangents with another (one whose transpose is lean), through ``jax.custom_jvp``.
Differentiated values come from the tangent implementation too because a program
that mixes both kept both working sets alive: on a 32x28x28x1 input with 5x5
windows, ``value_and_grad`` of ``sum(f * g)`` needed 5.5 MiB of XLA temporaries with
"shifts" values and tiled tangents, 2.4 MiB with tiled values and tangents.
Reverse mode transposes the tangent implementation, so ``grad``, ``jvp``,
``linear_transpose`` and higher orders all work (``custom_vjp`` would have broken forward mode).
:func:`differentiated_as` is the variant whose derivatives come from JAX differentiating
the second implementation as one program.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

Bilinear = Callable[[jax.Array, jax.Array], jax.Array]


def split_bilinear(
    value: Bilinear,
    tangent: Bilinear,
    kernel_tangent: Bilinear | None = None,
    *,
    tangent_value: Bilinear | None = None,
) -> Bilinear:
    """``value`` for values, ``tangent`` under differentiation; both the same op.

    Args:
      value: ``(x, k) -> y``, bilinear.
      tangent: the same bilinear map by another route (differentiable, transposable),
        written in plain ``lax``: not itself a ``custom_jvp`` function, which reverse
        mode would transpose through its value route.
      kernel_tangent: the same map again, for the kernel's tangent term ``f(x, dk)``
        only (reverse mode transposes it into the kernel gradient); ``tangent`` if None.
      tangent_value: the same map again, for the differentiated value ``f(x, k)``
        only (never transposed); ``tangent`` if None.

    Returns:
      A function equal to both, differentiable to any order in either argument.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> f = split_bilinear(jnp.multiply, lambda x, k: k * x)
      >>> jax.grad(lambda x: f(x, 3.0))(2.0)
      Array(3., dtype=float32, weak_type=True)
    """

    @jax.custom_jvp
    def op(x: jax.Array, k: jax.Array) -> jax.Array:
        return value(x, k)

    def jvp(primals, tangents):
        (x, k), (dx, dk) = primals, tangents
        y = (tangent_value or tangent)(x, k)
        # Symbolic zeros skip a whole contraction, e.g. the kernel term in grad wrt x.
        parts = [tangent(dx, k)] if not isinstance(dx, SymbolicZero) else []
        if not isinstance(dk, SymbolicZero):
            parts.append((kernel_tangent or tangent)(x, dk))
        return y, sum(parts[1:], parts[0]) if parts else jnp.zeros_like(y)

    op.defjvp(jvp, symbolic_zeros=True)
    return op


def differentiated_as(value: Bilinear, differentiable: Bilinear) -> Bilinear:
    """``value`` for values; under differentiation ``differentiable`` (the same bilinear
    map), differentiated by JAX as it is: values, tangents and their transposes together.

    Unlike :func:`split_bilinear`, whose tangent terms are separate calls (each its own
    program to transpose), reverse mode transposes one program for both gradients.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> f = differentiated_as(jnp.multiply, lambda x, k: k * x)
      >>> jax.grad(f, argnums=(0, 1))(2.0, 3.0)
      (Array(3., dtype=float32, weak_type=True), Array(2., dtype=float32, weak_type=True))
    """

    @jax.custom_jvp
    def op(x: jax.Array, k: jax.Array) -> jax.Array:
        return value(x, k)

    def jvp(primals, tangents):
        (x, k), (dx, dk) = primals, tangents
        # Only the nonzero tangents: a zero one would still be carried through the program.
        zero_x, zero_k = isinstance(dx, SymbolicZero), isinstance(dk, SymbolicZero)
        if zero_x and zero_k:
            y = differentiable(x, k)
            return y, jnp.zeros_like(y)
        if zero_k:
            return jax.jvp(lambda x: differentiable(x, k), (x,), (dx,))
        if zero_x:
            return jax.jvp(lambda k: differentiable(x, k), (k,), (dk,))
        return jax.jvp(differentiable, (x, k), (dx, dk))

    op.defjvp(jvp, symbolic_zeros=True)
    return op
