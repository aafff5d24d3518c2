"""``python -m jlocalconv``: a first run that checks the library on this machine."""

from __future__ import annotations

import time

import jax
import numpy as np

import jlocalconv


def _reference(x, k, kernel_size, out_shape):
    """A slow NumPy loop over output positions (channels_last, stride 1, valid)."""
    kh, kw = kernel_size
    out = np.zeros((x.shape[0], *out_shape, k.shape[-1]))
    for p, (i, j) in enumerate(np.ndindex(*out_shape)):
        window = x[:, i : i + kh, j : j + kw, :].reshape(x.shape[0], -1)
        out[:, i, j] = window @ k[p]
    return out


def main() -> None:
    print(f"jlocalconv {jlocalconv.__version__} | jax {jax.__version__} | devices {jax.devices()}")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 28, 28, 3)).astype(np.float32)
    k_shape = jlocalconv.kernel_shape(x.shape, 16, (3, 3))
    k = rng.standard_normal(k_shape).astype(np.float32) / np.sqrt(k_shape[1])
    f = jax.jit(lambda x, k: jlocalconv.local_conv2d(x, k, (3, 3), (1, 1)))
    y = f(x, k).block_until_ready()
    err = np.max(np.abs(np.asarray(y) - _reference(x, k, (3, 3), y.shape[1:3])))
    t0 = time.perf_counter()
    for _ in range(20):
        f(x, k).block_until_ready()
    ms = (time.perf_counter() - t0) / 20 * 1e3
    print(f"inputs {x.shape} kernel {k.shape} -> outputs {y.shape}")
    print(f"max |error| vs NumPy loop: {err:.2e}   time per call: {ms:.2f} ms")
    if err > 1e-4:
        raise SystemExit("mismatch against the reference")


if __name__ == "__main__":
    main()
