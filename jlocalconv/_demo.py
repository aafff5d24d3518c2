"""Small training utilities shared by ``python -m jlocalconv`` and the training notebook.

Everything here needs only the core dependencies (jax, numpy): the digits data ship
inside the package (``jlocalconv/data/digits.npz``), :func:`adam` is a few lines of
plain JAX with optax's ``init``/``update`` interface (so ``optax.adam`` drops in), and
:func:`progress` falls back to a text bar when tqdm is not installed.

Models are ``(init, apply)`` pairs of pure functions over a dict of arrays, so the
locally connected network, a CNN and an MLP with about the same number of parameters
train through the same :func:`train` loop.
"""

from __future__ import annotations

import importlib.resources
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jlocalconv

Params = dict[str, Any]  # a pytree of arrays (nested dicts)

# Each output unit of a locally connected layer sees `feature_dim` inputs: the position
# axis is a batch axis for the fan-in computation, not part of the fan-in.
_local_kernel_init = jax.nn.initializers.he_normal(in_axis=1, out_axis=2, batch_axis=0)
_conv_kernel_init = jax.nn.initializers.he_normal(in_axis=(0, 1, 2), out_axis=3)
_dense_kernel_init = jax.nn.initializers.he_normal()


class Digits(NamedTuple):
    """The 8x8 digits, split and scaled: images ``(n, 8, 8, 1)`` float32 in [0, 1]."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


class Model(NamedTuple):
    """A network as two pure functions: ``init(key) -> params``, ``apply(params, x) -> logits``."""

    name: str
    init: Callable[[jax.Array], Params]
    apply: Callable[[Params, jax.Array], jax.Array]


class Optimizer(NamedTuple):
    """optax's ``GradientTransformation`` interface: ``update(grads, state, params)``."""

    init: Callable[[Any], Any]
    update: Callable[..., tuple[Any, Any]]


class TrainResult(NamedTuple):
    """What :func:`train` returns; ``seconds_per_step`` excludes the compiling first step."""

    params: Params
    losses: np.ndarray
    test_losses: np.ndarray
    test_accuracy: float
    seconds_per_step: float


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Loads the 1797 bundled 8x8 digits, the data of ``sklearn.datasets.load_digits``.

    Returns:
      ``(images, labels)``: ``(1797, 8, 8)`` uint8 pixel counts in ``0..16`` and
      ``(1797,)`` uint8 digits.

    Example:
      >>> images, labels = load_digits()
      >>> images.shape, int(images.max()), sorted(set(labels.tolist())) == list(range(10))
      ((1797, 8, 8), 16, True)
    """
    path = importlib.resources.files("jlocalconv") / "data" / "digits.npz"
    with path.open("rb") as f, np.load(f) as data:
        return data["images"], data["labels"]


def digits_split(test_fraction: float = 0.25, seed: int = 0) -> Digits:
    """Shuffles the digits with ``seed`` and holds out ``test_fraction`` of them.

    Example:
      >>> data = digits_split()
      >>> data.x_train.shape, data.x_test.shape, data.y_test.dtype
      ((1348, 8, 8, 1), (449, 8, 8, 1), dtype('int32'))
    """
    images, labels = load_digits()
    order = np.random.default_rng(seed).permutation(len(labels))
    x = (images[order, :, :, None] / 16.0).astype(np.float32)
    y = labels[order].astype(np.int32)
    n_test = round(test_fraction * len(y))
    return Digits(x[n_test:], y[n_test:], x[:n_test], y[:n_test])


def _dense(key: jax.Array, n_in: int, n_out: int) -> Params:
    return {"w": _dense_kernel_init(key, (n_in, n_out)), "b": jnp.zeros(n_out)}


def local_net(filters: int = 8, window: int = 3, image: int = 8) -> Model:
    """A locally connected layer (``window`` x ``window``, valid), ReLU, then a dense layer.

    Example:
      >>> model = local_net()
      >>> params = model.init(jax.random.key(0))
      >>> params["kernel"].shape, model.apply(params, jnp.zeros((2, 8, 8, 1))).shape
      ((36, 9, 8), (2, 10))
    """
    kernel_size = (window, window)
    out = jlocalconv.conv_output_shape((image, image), kernel_size)

    def init(key: jax.Array) -> Params:
        k1, k2 = jax.random.split(key)
        kshape = jlocalconv.kernel_shape((1, image, image, 1), filters, kernel_size)
        params = {"kernel": _local_kernel_init(k1, kshape), "bias": jnp.zeros((*out, filters))}
        return params | {"head": _dense(k2, math.prod(out) * filters, 10)}

    def apply(params: Params, x: jax.Array) -> jax.Array:
        h = jlocalconv.local_conv2d(x, params["kernel"], kernel_size, 1, bias=params["bias"])
        return _head(params["head"], jax.nn.relu(h))

    return Model("locally connected", init, apply)


def cnn_net(filters: int = 16, window: int = 3, image: int = 8) -> Model:
    """The same network with a shared-weight convolution (more filters, similar size)."""
    out = image - window + 1

    def init(key: jax.Array) -> Params:
        k1, k2 = jax.random.split(key)
        kernel = _conv_kernel_init(k1, (window, window, 1, filters))
        params = {"kernel": kernel, "bias": jnp.zeros(filters)}
        return params | {"head": _dense(k2, out * out * filters, 10)}

    def apply(params: Params, x: jax.Array) -> jax.Array:
        dims = ("NHWC", "HWIO", "NHWC")
        h = jax.lax.conv_general_dilated(
            x, params["kernel"], (1, 1), "VALID", dimension_numbers=dims
        )
        return _head(params["head"], jax.nn.relu(h + params["bias"]))

    return Model("CNN", init, apply)


def mlp_net(hidden: int = 77, image: int = 8) -> Model:
    """A one-hidden-layer perceptron on the flattened image (similar size again)."""

    def init(key: jax.Array) -> Params:
        k1, k2 = jax.random.split(key)
        return {"hidden": _dense(k1, image * image, hidden), "head": _dense(k2, hidden, 10)}

    def apply(params: Params, x: jax.Array) -> jax.Array:
        h = x.reshape(x.shape[0], -1) @ params["hidden"]["w"] + params["hidden"]["b"]
        return _head(params["head"], jax.nn.relu(h))

    return Model("MLP", init, apply)


def _head(params: Params, h: jax.Array) -> jax.Array:
    return h.reshape(h.shape[0], -1) @ params["w"] + params["b"]


def param_count(params: Any) -> int:
    """The number of scalars in a pytree of arrays.

    Example:
      >>> param_count(local_net().init(jax.random.key(0)))
      5770
    """
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def adam(learning_rate: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Optimizer:
    """Adam (Kingma & Ba, 2015) with bias correction, numerically as ``optax.adam``.

    Example:
      >>> opt = adam(0.1)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = opt.update({"w": jnp.array([3.0, -0.5])}, opt.init(params), params)
      >>> [round(float(u), 4) for u in updates["w"]]  # first step: -lr * sign(grad)
      [-0.1, 0.1]
    """

    def init(params: Any) -> tuple[jax.Array, Any, Any]:
        zeros = jax.tree.map(jnp.zeros_like, params)
        return jnp.zeros((), jnp.int32), zeros, zeros

    def update(grads: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        del params  # part of optax's interface; Adam does not need it
        count, mu, nu = state
        count = count + 1
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, nu, grads)
        scale_mu, scale_nu = 1 - b1**count, 1 - b2**count
        step = lambda m, v: -learning_rate * (m / scale_mu) / (jnp.sqrt(v / scale_nu) + eps)
        return jax.tree.map(step, mu, nu), (count, mu, nu)

    return Optimizer(init, update)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The mean softmax cross-entropy of integer ``labels``."""
    log_p = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(log_p, labels[:, None], axis=1).mean()


def accuracy(model: Model, params: Params, x: np.ndarray, y: np.ndarray) -> float:
    """The fraction of ``x`` that ``model`` classifies as ``y``."""
    return float((jnp.argmax(model.apply(params, jnp.asarray(x)), axis=1) == y).mean())


def train(
    model: Model,
    optimizer: Optimizer,
    data: Digits,
    *,
    steps: int,
    batch_size: int = 64,
    seed: int = 0,
    eval_every: int = 0,
    show_progress: bool = True,
) -> TrainResult:
    """Trains ``model`` on ``data`` with minibatches drawn without replacement per step.

    Args:
      model: the network to train.
      optimizer: :func:`adam` or any optax ``GradientTransformation``.
      data: the train/test split from :func:`digits_split`.
      steps: the number of optimizer steps.
      batch_size: images per step.
      seed: seeds the initial parameters and the batch order.
      eval_every: when positive, also record the loss on the whole test set after every
        ``eval_every`` steps (a small cost, included in the time per step).
      show_progress: draw a progress bar (see :func:`progress`).

    Returns:
      The trained parameters, the loss of every step, the recorded test losses, the test
      accuracy and the mean wall time of a step after the first (which compiles).

    Example:
      >>> data = digits_split()
      >>> result = train(mlp_net(), adam(1e-2), data, steps=50, eval_every=10, show_progress=False)
      >>> result.losses.shape, result.test_losses.shape, result.test_accuracy > 0.5
      ((50,), (5,), True)
    """
    params = model.init(jax.random.key(seed))
    step = _make_step(model, optimizer)
    x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    test_loss = jax.jit(lambda p: cross_entropy(model.apply(p, x_test), y_test))
    state, rng = optimizer.init(params), np.random.default_rng(seed)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    losses, test_losses, start = [], [], 0.0
    for i in progress(range(steps), desc=f"training {model.name}", enabled=show_progress):
        idx = rng.choice(len(data.y_train), batch_size, replace=False)
        params, state, loss = step(params, state, x, y, idx)
        losses.append(loss)
        if eval_every > 0 and (i + 1) % eval_every == 0:
            test_losses.append(test_loss(params))
        if i == 0:
            start = time.perf_counter()
    jax.block_until_ready(params)
    per_step = (time.perf_counter() - start) / max(steps - 1, 1)
    test = accuracy(model, params, data.x_test, data.y_test)
    return TrainResult(params, np.asarray(losses), np.asarray(test_losses), test, per_step)


def _make_step(model: Model, optimizer: Optimizer) -> Callable:
    @jax.jit
    def step(params, state, x, y, idx):
        loss_fn = lambda p: cross_entropy(model.apply(p, x[idx]), y[idx])
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = optimizer.update(grads, state, params)
        return jax.tree.map(jnp.add, params, updates), state, loss

    return step


def progress(iterable: range, *, desc: str = "", enabled: bool = True) -> Iterator[int]:
    """Iterates ``iterable`` behind a tqdm bar, or a plain text bar without tqdm.

    The text bar redraws in place on a terminal and prints one final line otherwise,
    so logs stay short.
    """
    if not enabled:
        return iter(iterable)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _text_bar(iterable, desc)
    return iter(tqdm(iterable, desc=desc, leave=True))


def _text_bar(iterable: range, desc: str, width: int = 30) -> Iterator[int]:
    total, tty = len(iterable), sys.stderr.isatty()
    start = time.perf_counter()
    for i, item in enumerate(iterable):
        yield item
        if (tty and (i % max(total // 100, 1) == 0)) or i == total - 1:
            filled = width * (i + 1) // total
            bar = "#" * filled + "-" * (width - filled)
            line = f"{desc} [{bar}] {i + 1}/{total} {time.perf_counter() - start:.1f}s"
            end = "\n" if i == total - 1 else ""
            print(f"\r{line}" if tty else line, end=end, file=sys.stderr, flush=True)


def median_seconds(f: Callable[..., Any], *args: Any, repeats: int = 5) -> float:
    """The median wall time of ``f(*args)`` over ``repeats`` calls after one warm-up call."""
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))
