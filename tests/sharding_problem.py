"""A small training problem shared by the sharded and multi-process checks: a locally
connected layer (per-position bias), ReLU, global average pooling, a linear head, softmax
cross-entropy and one optax step. No JAX configuration happens on import."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from cases import Case

LEARNING_RATE = 1e-2
# float32 results summed in another order (per device, then across devices) differ by a few
# ulps. Adam's first step is about lr * g / |g|, so a gradient element near zero turns
# those ulps into up to 1e-3 * lr in the parameter; a wrong or missing term moves the
# gradients by O(1) relative and the parameters by O(lr).
GRAD_TOL = dict(rtol=1e-4, atol=1e-6)
PARAM_TOL = dict(rtol=0, atol=1e-3 * LEARNING_RATE)

CASE = Case((16, 8), 2, 4, (3, 3), (1, 1), "same", batch=8, bias="positions")


def train_problem():
    """``(case, x, params, labels)`` in float32, the same arrays on every call."""
    x, k, b = CASE.arrays(seed=3)
    rng = np.random.default_rng(4)
    params = {"kernel": k, "bias": b, "head": rng.standard_normal((4, 3)).astype(np.float32)}
    labels = rng.integers(0, 3, CASE.batch)
    return CASE, jnp.asarray(x), jax.tree.map(jnp.asarray, params), jnp.asarray(labels)


def train_step(conv, case: Case, optimizer: optax.GradientTransformation):
    """A jitted ``step(params, state, x, labels) -> (params, state, loss, grads)`` using
    ``conv`` (``local_conv`` or a sharded version of it) for the layer; use ``optimizer()``."""

    def loss_fn(params, x, labels):
        h = conv(x, params["kernel"], case.kernel_size, case.strides, padding=case.padding,
                 bias=params["bias"])  # fmt: skip
        logits = jax.nn.relu(h).mean(axis=(1, 2)) @ params["head"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(params, state, x, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, labels)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss, grads

    return step


def optimizer() -> optax.GradientTransformation:
    return optax.adamw(LEARNING_RATE)
