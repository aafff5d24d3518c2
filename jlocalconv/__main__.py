"""``python -m jlocalconv``: check, train and time locally connected convolution here.

Runs in a few seconds with only the core dependencies installed:

1. one call of :func:`jlocalconv.local_conv2d` against a slow NumPy loop;
2. a small locally connected network trained on the bundled 8x8 digits, with a
   progress bar and its test accuracy;
3. the speed of the operation on this machine against
   ``jax.lax.conv_general_dilated_local``, forward and forward+backward.

``--quick`` shrinks the training and the timed shapes for CI.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import jlocalconv
from jlocalconv import _demo

_NEXT_STEPS = """\
Where next:
  notebooks/01_quickstart.ipynb   the operation in pictures, kernel layout, jit/vmap/grad
  notebooks/02_training.ipynb     this model with optax, against a CNN and an MLP, with plots
  notebooks/03_performance.ipynb  the benchmark against every peer (python -m bench)
  README.md                       API, kernel layout, layers (Flax NNX/Linen, Equinox),
                                  coming from tf.keras, scaling, FAQ"""


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jlocalconv",
        description="Check jlocalconv against NumPy, train a locally connected network on "
        "8x8 digits and time the operation against jax.lax.conv_general_dilated_local.",
    )
    parser.add_argument("--quick", action="store_true", help="a second of training (for CI)")
    parser.add_argument("--steps", type=int, help="training steps (default 1500, quick 150)")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, init and batches")
    return parser.parse_args(argv)


def _numpy_local_conv2d(x: np.ndarray, kernel: np.ndarray, window: int, stride: int):
    """Keras's definition, one output position at a time (channels_last, valid padding)."""
    n, rows, cols, _ = x.shape
    out_shape = ((rows - window) // stride + 1, (cols - window) // stride + 1)
    out = np.zeros((n, *out_shape, kernel.shape[-1]))
    for p, (i, j) in enumerate(np.ndindex(*out_shape)):
        patch = x[:, i * stride : i * stride + window, j * stride : j * stride + window, :]
        out[:, i, j] = patch.reshape(n, -1) @ kernel[p]  # window flattened as (k1, k2, C)
    return out


def check_against_numpy(seed: int) -> float:
    """Prints and returns the largest error of one strided call against the NumPy loop."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 11, 11, 3)).astype(np.float32)
    kshape = jlocalconv.kernel_shape(x.shape, 5, (3, 3), strides=2)
    kernel = (rng.standard_normal(kshape) / np.sqrt(kshape[1])).astype(np.float32)
    y = jax.jit(lambda x, k: jlocalconv.local_conv2d(x, k, (3, 3), (2, 2)))(x, kernel)
    err = float(np.max(np.abs(np.asarray(y) - _numpy_local_conv2d(x, kernel, 3, 2))))
    verdict = "OK" if err < 1e-4 else "MISMATCH"
    print(f"inputs {x.shape}, kernel {kernel.shape}, strides 2 -> {tuple(y.shape)}")
    print(f"max |jlocalconv - NumPy loop| = {err:.1e}  {verdict}")
    return err


def train_digits(steps: int, seed: int) -> _demo.TrainResult:
    """Trains the locally connected digits network with plain-JAX Adam and reports it."""
    data = _demo.digits_split(seed=seed)
    model = _demo.local_net()
    n_params = _demo.param_count(model.init(jax.random.key(seed)))
    print(
        f"local_conv2d(3x3, 8 filters) -> ReLU -> dense(10): {n_params:,} parameters; "
        f"{len(data.y_train)} training / {len(data.y_test)} test images"
    )
    result = _demo.train(model, _demo.adam(1e-2), data, steps=steps, seed=seed)
    print(
        f"test accuracy {result.test_accuracy:.1%} after {steps} steps of batch 64 "
        f"({result.seconds_per_step * 1e3:.2f} ms/step; final loss {result.losses[-1]:.2g})"
    )
    return result


def compare_speed(quick: bool) -> dict[str, float]:
    """Times jlocalconv and lax on one shape; returns the forward and fwd+bwd speed-ups."""
    n, size, c, f, window = (8, 16, 8, 8, 3) if quick else (32, 32, 16, 16, 3)
    kx, kk, kl = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (n, size, size, c))
    kernel = jax.random.normal(kk, jlocalconv.kernel_shape(x.shape, f, window))
    out = size - window + 1
    rhs = jax.random.normal(kl, (out, out, c * window * window, f))  # lax's "HWIO" layout
    ours = lambda x, k: jlocalconv.local_conv2d(x, k, window, 1)
    theirs = lambda x, k: jax.lax.conv_general_dilated_local(
        x, k, (1, 1), "VALID", (window, window), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    print(
        f"float32, jit, median of 5; batch {n}, {size}x{size}x{c} -> {f} filters, {window}x{window}"
    )
    print(f"{'':34s}{'forward':>12s}{'fwd+bwd':>12s}")
    times = {}
    for name, fn, k in [
        ("jlocalconv", ours, kernel),
        ("lax.conv_general_dilated_local", theirs, rhs),
    ]:
        fwd = jax.jit(fn)
        both = jax.jit(jax.value_and_grad(lambda x, k, fn=fn: jnp.sum(fn(x, k) ** 2), (0, 1)))
        times[name] = (_demo.median_seconds(fwd, x, k), _demo.median_seconds(both, x, k))
        print(f"{name:34s}{times[name][0] * 1e3:10.2f}ms{times[name][1] * 1e3:10.2f}ms")
    (f0, b0), (f1, b1) = times["jlocalconv"], times["lax.conv_general_dilated_local"]
    print(f"{'speed-up':34s}{f1 / f0:11.1f}x{b1 / b0:11.1f}x")
    return {"forward": f1 / f0, "forward+backward": b1 / b0}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the demo; returns a non-zero exit status when the NumPy check fails."""
    args = _parse(argv)
    steps = args.steps or (150 if args.quick else 1500)
    print(f"jlocalconv {jlocalconv.__version__} | jax {jax.__version__} | devices {jax.devices()}")
    print("\n[1/3] One call against a slow NumPy reference")
    err = check_against_numpy(args.seed)
    print("\n[2/3] Training a locally connected network on 8x8 digits")
    train_digits(steps, args.seed)
    print("\n[3/3] Speed of local convolution on this machine")
    compare_speed(args.quick)
    print("\n" + _NEXT_STEPS)
    return 0 if err < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
