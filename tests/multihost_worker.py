"""One of two processes of a data-parallel training step over ``jax.distributed`` (CPU, gloo).

Started by ``tests/test_sharding.py``::

    python tests/multihost_worker.py PORT PROCESS_ID OUT.npz

Each process owns one CPU device and half of the batch; the mesh spans both processes'
devices. Process 0 writes the loss, the gradients and the updated parameters (replicated,
so its local copy is the global value) to ``OUT.npz``.
"""

from __future__ import annotations

import os
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes

import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# the repository root, so that this checkout's jlocalconv is the one imported
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sharding_problem import optimizer, train_problem, train_step  # noqa: E402

from jlocalconv.sharding import sharded_local_conv  # noqa: E402


def main(port: int, process_id: int, out: str) -> None:
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id
    )
    assert jax.process_count() == 2 and jax.device_count() == 2, jax.devices()
    mesh = jax.make_mesh((2,), ("data",), axis_types=(AxisType.Auto,))
    case, x, params, labels = train_problem()

    def global_array(value, spec):  # every process holds the whole host array
        value = np.asarray(value)
        sharding = NamedSharding(mesh, spec)
        return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])

    params = jax.tree.map(lambda v: global_array(v, P()), params)
    x, labels = global_array(x, P("data")), global_array(labels, P("data"))
    assert x.addressable_shards[0].data.shape[0] == case.batch // 2  # half the batch here
    opt = optimizer()
    conv = sharded_local_conv(mesh, batch_axis="data")
    new_params, _, loss, grads = train_step(conv, case, opt)(params, opt.init(params), x, labels)
    local = lambda a: np.asarray(a.addressable_data(0))  # replicated: the global value
    if process_id == 0:
        flat = {f"params/{k}": local(v) for k, v in new_params.items()}
        flat |= {f"grads/{k}": local(v) for k, v in grads.items()}
        np.savez(out, loss=local(loss), **flat)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
