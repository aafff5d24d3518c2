"""Data- and spatially-parallel training of a locally connected layer on a TPU pod slice.

Run the same command on every host of the slice at once; ``jax.distributed.initialize()``
finds the other hosts by itself on Cloud TPU::

    gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all \\
        --command="cd jlocalconv && python -m bench.studies.tpu_pod --space 4 --steps 20"

The mesh is ``(data, space)`` over every device of the slice (``data = devices / space``):
the batch is split over ``data`` and the output rows of the layer, with its kernel, over
``space`` (:func:`jlocalconv.sharding.sharded_local_conv`, halo exchange by
``lax.ppermute``). The default layer is the scaling issue's: 32x32 outputs, 3x3 windows,
64 -> 64 channels, 37.7 M kernel parameters (151 MB in float32), which each device holds
only ``1 / space`` of. Every host builds the same arrays from the same seed and feeds its
own devices' part (``jax.make_array_from_callback``).

The first step is checked against the same step on one device of this host (plain
``jax.jit`` of ``jlocalconv.local_conv``, no mesh): loss, and the largest parameter
difference, printed by process 0. Then ``--steps`` steps are timed.

``--dry-run`` runs the same code without ``jax.distributed`` on the devices this process
has (one CPU device: a 1x1 mesh) with a tiny layer: a check that the script works, used by
the tests; it is not a measurement.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jlocalconv
from jlocalconv.sharding import kernel_sharding, sharded_local_conv


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.studies.tpu_pod", description=__doc__.split("\n")[0]
    )
    p.add_argument("--space", type=int, default=4, help="devices splitting the output rows")
    p.add_argument("--per-device-batch", type=int, default=8, help="examples per data shard")
    p.add_argument("--rows", type=int, default=32, help="output rows = cols ('same' padding)")
    p.add_argument("--channels", type=int, default=64, help="input channels = filters")
    p.add_argument("--steps", type=int, default=10, help="timed steps after the check")
    p.add_argument("--dry-run", action="store_true", help="tiny layer, no jax.distributed")
    args = p.parse_args(argv)
    if args.dry_run:
        args.space, args.per_device_batch, args.rows, args.channels, args.steps = 1, 2, 8, 2, 2
    return args


def make_problem(batch: int, rows: int, channels: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Host arrays, identical on every host: inputs, targets and the layer's parameters."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, rows, rows, channels), np.float32)
    shape = jlocalconv.kernel_shape(x.shape, channels, 3, padding="same")
    kernel = rng.standard_normal(shape, np.float32) / np.float32(np.sqrt(shape[1]))
    return {"x": x, "y": np.tanh(x), "kernel": kernel, "bias": np.zeros(channels, np.float32)}


def make_step(conv, optimizer: optax.GradientTransformation):
    """``step(params, state, x, y) -> (params, state, loss)``: a residual layer regressing y."""

    def loss_fn(params, x, y):
        h = conv(x, params["kernel"], 3, 1, padding="same", bias=params["bias"])
        return jnp.mean((x + jax.nn.gelu(h) - y) ** 2)

    @jax.jit
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    return step


def _global(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def _first_step_on_one_device(problem, optimizer):
    device = jax.local_devices()[0]
    params = jax.device_put({k: problem[k] for k in ("kernel", "bias")}, device)
    x, y = jax.device_put((problem["x"], problem["y"]), device)
    step = make_step(jlocalconv.local_conv, optimizer)
    new_params, _, loss = step(params, optimizer.init(params), x, y)
    return new_params, loss


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.dry_run:
        jax.distributed.initialize()  # on Cloud TPU: no arguments needed
    n = jax.device_count()
    if n % args.space:
        raise SystemExit(f"--space {args.space} must divide the {n} devices")
    mesh = jax.make_mesh((n // args.space, args.space), ("data", "space"), (AxisType.Auto,) * 2)
    batch = args.per_device_batch * (n // args.space)
    problem = make_problem(batch, args.rows, args.channels)
    batch_split = NamedSharding(mesh, P("data"))
    params = {
        "kernel": _global(problem["kernel"], kernel_sharding(mesh, "space")),
        "bias": _global(problem["bias"], NamedSharding(mesh, P())),
    }
    x, y = (_global(problem[k], batch_split) for k in ("x", "y"))
    optimizer = optax.adam(1e-3)
    step = make_step(sharded_local_conv(mesh, batch_axis="data", spatial_axis="space"), optimizer)
    state = optimizer.init(params)
    params, state, loss = step(params, state, x, y)
    want_params, want_loss = _first_step_on_one_device(problem, optimizer)
    local = lambda a: np.asarray(a.addressable_data(0))
    shard = params["kernel"].addressable_shards[0]  # this device's output rows
    kernel_diff = np.abs(np.asarray(shard.data) - np.asarray(want_params["kernel"])[shard.index])
    report = {
        "devices": n,
        "processes": jax.process_count(),
        "mesh": dict(mesh.shape),
        "kernel MB total / per device": (problem["kernel"].nbytes / 1e6, shard.data.nbytes / 1e6),
        "first-step loss (mesh, one device)": (float(local(loss)), float(want_loss)),
        "bias max |diff|": float(np.abs(local(params["bias"]) - want_params["bias"]).max()),
        "kernel shard max |diff|": float(kernel_diff.max()),
    }
    start = time.perf_counter()
    for _ in range(args.steps):
        params, state, loss = step(params, state, x, y)
    jax.block_until_ready(loss)
    report[f"ms per step ({args.steps} steps)"] = (time.perf_counter() - start) * 1e3 / args.steps
    if jax.process_index() == 0:
        for key, value in report.items():
            print(f"{key}: {value}")
    np.testing.assert_allclose(report["first-step loss (mesh, one device)"][0], want_loss, 1e-4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
