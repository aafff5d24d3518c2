"""Sharded local convolution on 8 simulated CPU devices against the unsharded op.

``python -m bench.studies.sharded [--json OUT] [--smoke]``. For each shape it compiles the operation
unsharded on one device and through :func:`jlocalconv.sharding.sharded_local_conv` on meshes
``data=8``, ``space=8`` and ``data=2 x space=4``, then records per row: forward and
forward+backward (inputs and kernel) median ms, XLA temp bytes per device
(``compile().memory_analysis()`` of the partitioned program), kernel (parameter) bytes per
device, and the halo traffic: bytes each device sends through collective-permutes per call,
summed over the compiled program's ``collective-permute`` ops (forward and forward+backward).

The 8 devices are simulated (``--xla_force_host_platform_device_count=8``, set here before
JAX starts) and share this machine's cores, so the times measure overhead, not speed-up;
the memory and traffic figures are what a real mesh would see per device.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

import jax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jlocalconv
from bench import jax_measure
from bench.candidate import Problem
from bench.suite import Shape
from bench.timing import Policy, time_call
from jlocalconv.sharding import kernel_sharding, sharded_local_conv

DEVICE_FLAG = "--xla_force_host_platform_device_count=8"

SHAPES = [
    # same padding: output rows = input rows, one halo row from each neighbour
    Shape("same", 16, (32, 32), 16, 16, (3, 3), (1, 1), "same"),
    # the layer: 32x32 outputs, 3x3x64 windows, 64 filters (37.7 M parameters), valid
    Shape("issue", 8, (34, 34), 64, 64, (3, 3), (1, 1), "valid"),
]
SMOKE = [Shape("smoke", 8, (10, 6), 2, 3, (3, 3), (1, 1), "valid")]
# name -> (mesh shape, axis names, batch_axis, spatial_axis); None: one device, no mesh
MESHES = {
    "1 device": None,
    "data 8": ((8,), ("data",), "data", None),
    "space 8": ((8,), ("space",), None, "space"),
    "data 2 x space 4": ((2, 4), ("data", "space"), "data", "space"),
}
_PERMUTE = re.compile(r"= (\(?[a-z0-9]+\[[^=]*?) collective-permute(?:-start)?\((.*)$", re.M)
_ARRAY = re.compile(r"([a-z]+[0-9]*)\[([0-9,]*)\]")
_ITEMSIZE = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1}


def permute_bytes(hlo: str) -> dict[str, int]:
    """Bytes one device sends per call through the ``collective-permute`` ops of ``hlo``.

    ``"halo"`` counts the ops that come from ``lax.ppermute`` (the halo exchange, found by
    their ``op_name`` metadata); ``"reshard"`` the ones XLA's partitioner adds to move
    input rows into the per-device blocks (e.g. when slicing a replicated input).

    Example:
      >>> permute_bytes('%p = f32[4,2,7]{2,1,0} collective-permute(%x), '
      ...               'metadata={op_name="jit(f)/shard_map/ppermute"}')
      {'halo': 224, 'reshard': 0}
    """
    total = {"halo": 0, "reshard": 0}
    for match in _PERMUTE.finditer(hlo):
        # An async start op returns (operand, result, contexts): count one array, the first.
        dtype, dims = _ARRAY.search(match.group(1)).groups()
        size = math.prod(int(d) for d in dims.split(",") if d) * _ITEMSIZE[dtype]
        total["halo" if "ppermute" in match.group(2) else "reshard"] += size
    return total


def _conv(shape: Shape, mesh_spec):
    """``fn(x, k)`` for ``shape`` and the operands placed for ``mesh_spec``."""
    problem = Problem.make(shape)
    x, k, g = jax_measure.operands(problem)
    kwargs = dict(padding=shape.padding)
    if mesh_spec is None:
        conv = jlocalconv.local_conv
        return (lambda x, k: conv(x, k, shape.kernel_size, shape.strides, **kwargs)), (x, k, g)
    dims, names, batch_axis, spatial_axis = mesh_spec
    mesh = jax.make_mesh(dims, names, axis_types=(AxisType.Auto,) * len(dims))
    conv = sharded_local_conv(mesh, batch_axis=batch_axis, spatial_axis=spatial_axis)
    rows = NamedSharding(mesh, P(batch_axis, spatial_axis))
    placed = (
        jax.device_put(x, NamedSharding(mesh, P(batch_axis))),
        jax.device_put(k, kernel_sharding(mesh, spatial_axis)),
        jax.device_put(g, rows),
    )
    return (lambda x, k: conv(x, k, shape.kernel_size, shape.strides, **kwargs)), placed


def measure(shape: Shape, name: str, policy: Policy) -> dict:
    """One row: ``shape`` on mesh ``name``."""
    fn, (x, k, g) = _conv(shape, MESHES[name])
    built = jax_measure.build(fn, x, k, g)
    loss = lambda x, k: (fn(x, k) * g).sum()
    hlo_fwd = jax.jit(fn).lower(x, k).compile().as_text()
    hlo_both = jax.jit(jax.value_and_grad(loss, (0, 1))).lower(x, k).compile().as_text()
    geom = shape.geometry()
    fwd, both = permute_bytes(hlo_fwd), permute_bytes(hlo_both)
    return {
        "name": f"{shape.key}: {name}",
        "shape": f"{shape.batch}, {'x'.join(map(str, shape.spatial))}, "
        f"{shape.channels}->{shape.filters}, {'x'.join(map(str, shape.kernel_size))}, "
        f"{shape.padding}",
        "mesh": name,
        "fwd_ms": time_call(built.forward, policy).median_s * 1e3,
        "fwd_bwd_ms": time_call(built.forward_backward, policy).median_s * 1e3,
        "temp_bytes_per_device": built.temp_bytes[1],
        "temp_fwd_bytes_per_device": built.temp_bytes[0],
        "param_bytes_per_device": int(k.addressable_shards[0].data.nbytes),
        "param_bytes_total": math.prod(geom.kernel_shape(shape.filters)) * 4,
        "halo_bytes_fwd_per_device": fwd["halo"],
        "halo_bytes_fwd_bwd_per_device": both["halo"],
        "reshard_bytes_fwd_per_device": fwd["reshard"],
        "reshard_bytes_fwd_bwd_per_device": both["reshard"],
        "all_gathers_fwd": hlo_fwd.count(" all-gather("),
    }


def run(smoke: bool = False) -> dict:
    """Every shape on every mesh; ``{"rows": [...], "note": ...}`` (bench/sharded_hook's form)."""
    assert jax.device_count() == 8, f"needs 8 devices; got {jax.devices()}"
    policy = Policy(min_repeats=2, max_repeats=2) if smoke else Policy(max_repeats=10)
    rows = []
    for shape in SMOKE if smoke else SHAPES:
        for name in MESHES:
            rows.append(measure(shape, name, policy))
            print(_line(rows[-1]), flush=True)
    note = (
        "8 devices simulated on one CPU (they share its cores: times show overhead, not "
        "speed-up). temp, parameter and halo bytes are per device; halo = bytes sent "
        "through the halo exchange's collective-permutes per call, reshard = rows XLA moves "
        "into the per-device blocks before it (collective-permutes), both from the compiled HLO. "
        "The forward holds no collective but the halo's collective-permutes (none when the "
        "input rows do not divide by 'space': each device slices its rows); fwd+bwd combines "
        "d(inputs) over 'space' because the inputs are replicated over it here (as from a "
        "data loader; training drops d(inputs))."
    )
    return {"rows": rows, "note": note}


def _line(row: dict) -> str:
    return (
        f"{row['name']:<28} fwd {row['fwd_ms']:8.2f} ms  fwd+bwd {row['fwd_bwd_ms']:8.2f} ms  "
        f"temp {row['temp_bytes_per_device'] / 2**20:7.2f} MiB  "
        f"params {row['param_bytes_per_device'] / 2**20:7.2f} MiB  "
        f"halo {row['halo_bytes_fwd_per_device'] / 2**10:7.1f} KiB fwd, "
        f"{row['halo_bytes_fwd_bwd_per_device'] / 2**10:7.1f} KiB fwd+bwd  "
        f"reshard {row['reshard_bytes_fwd_per_device'] / 2**10:7.1f} KiB fwd"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.studies.sharded", description=__doc__.split("\n")[0]
    )
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument("--smoke", action="store_true", help="one tiny shape, 2 repeats (seconds)")
    args = p.parse_args(argv)
    # Read when JAX starts its backend (first device use), so here, not on import: importing
    # this module must not change the device count of the importing process.
    if DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DEVICE_FLAG}".strip()
    result = run(args.smoke)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
