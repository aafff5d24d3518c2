"""``implementation="autotune"``: time the implementations on the call's problem, once.

"auto" picks an implementation from static shapes with a cost model, which can be wrong
on a shape or a machine it was not tuned on. "autotune" measures instead: the first time a
static problem is traced (shapes, dtypes, geometry, options, backend and device kind), it
compiles every implementation's forward pass and every derivative route's
``value_and_grad`` (w.r.t. inputs and kernel) on random operands of the call's shapes,
times them on the default device and keeps the fastest of each: the choice is a pair
``"values/derivatives"`` (``implementations.composed``), so an inference call runs the
fastest forward pass and a training step the fastest derivatives, whichever
implementations they come from (a differentiated call computes its values by the
derivative route too). Later traces of the same problem reuse the choice without
measuring.

Each of the two is the fastest among the candidates whose temp memory (XLA's own memory
analysis of the forward, resp. ``value_and_grad``, program) is at most ``MEMORY_FACTOR``
times the leanest candidate's plus ``MEMORY_SLACK_BYTES``, or at most
``MEMORY_FLOOR_BYTES``: autotune does not buy speed with a window tensor many times the
layer's working set, unless that is small in absolute terms.

Measuring costs a few compilations and timed calls per candidate (a second on small
layers, up to a minute on the largest real layers): pay it once per process, or once per
machine with a cache file (:func:`set_cache_file` or the ``JLOCALCONV_AUTOTUNE_CACHE``
environment variable; a JSON file keyed by the problem, the device kind and the jax and
jlocalconv versions). Given a choice, results are deterministic; two processes that
measured differently may run different implementations, whose results agree to rounding.

May import: ``_errors``, ``geometry``, ``implementations``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import os
import pathlib
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jlocalconv._errors import fail
from jlocalconv.geometry import Geometry
from jlocalconv.implementations import (
    DERIVATIVE_ROUTES,
    IMPLEMENTATIONS,
    derivatives_by_products,
    resolve,
    shifts_unrolls_few,
)

# A candidate may use this many times the leanest candidate's temp memory, plus the slack,
# or up to the floor: below it, memory does not decide (32 MiB is where the performance
# issue starts asking for half of lax's memory; below it, lax's own amount is accepted).
MEMORY_FACTOR = 2.0
MEMORY_SLACK_BYTES = 1 << 20
MEMORY_FLOOR_BYTES = 32 << 20
# Candidates are timed in rounds (each compiled call once per round): MIN_ROUNDS, then
# more while BUDGET_S per call lasts, up to MAX_ROUNDS (sub-millisecond problems need
# many samples to see through noise). A call whose first timed run is PRUNE_FACTOR times
# slower than the fastest keeps that one time: it cannot win, and is not run again. Not
# its warm-up (the run before), which pays first-call work (buffers, pages, threads):
# sweep s61-0's "slices" derivatives warmed up in 28 ms and then ran in 0.85, while the
# loop's took 8.3 and 2.0, so pruning on warm-ups picked the loop, 2.1x slower in the
# sweep's timing. Only a warm-up WARMUP_PRUNE_FACTOR times the fastest is not timed.
BUDGET_S = 0.3
MIN_ROUNDS = 3
MAX_ROUNDS = 25
PRUNE_FACTOR = 3.0
WARMUP_PRUNE_FACTOR = 30.0
CACHE_ENV = "JLOCALCONV_AUTOTUNE_CACHE"

_lock = threading.Lock()
_choices: dict[str, str] = {}
_cache_file: pathlib.Path | None = None
_cache_file_set = False


@dataclasses.dataclass(frozen=True)
class Problem:
    """The static problem a choice is made for (hashable; ``key`` names it in a cache)."""

    geom: Geometry
    batch: int
    filters: int
    dtype: str
    kernel_dtype: str
    precision: Any
    preferred_element_type: str | None

    def key(self) -> str:
        return " | ".join(
            map(
                str,
                (
                    _environment(),
                    self.geom,
                    f"batch {self.batch}",
                    f"filters {self.filters}",
                    self.dtype,
                    self.kernel_dtype,
                    f"precision {self.precision}",
                    f"preferred {self.preferred_element_type}",
                ),
            )
        )


@functools.cache  # fixed for the process; key() runs at every trace of an autotuned call
def _environment() -> str:
    """The device kind and the jax and jlocalconv versions a choice was measured with."""
    device = jax.devices()[0]
    try:
        version = importlib.metadata.version("jlocalconv")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        version = "unknown"
    return f"{device.platform}:{device.device_kind} | jax {jax.__version__} | jlocalconv {version}"


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One candidate program's fastest call (seconds) and its temp bytes."""

    seconds: float
    temp_bytes: int


# What each candidate is timed as: forward passes of the value routes, value_and_grad of
# the derivative routes.
VALUES, DERIVATIVES = "values", "derivatives"
# Derivative routes that differentiate their value route's own values, with the value
# route they are timed and chosen with (the other routes' own values never run).
_TIMED_WITH = {"products": "shifts"}


def pick(
    geom: Geometry,
    inputs: Any,
    kernel: Any,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> str:
    """The implementation autotune runs for this call (measured once per problem).

    Safe to call while tracing (under ``jit``, ``grad``, ``vmap``): only the static shapes
    and dtypes of ``inputs`` and ``kernel`` are used (arrays, tracers or
    ``jax.ShapeDtypeStruct``s); the candidates run on fresh random operands, outside the
    trace.

    Args:
      geom: the call's geometry.
      inputs, kernel: the operands, or anything with their ``shape`` and ``dtype``.
      precision, preferred_element_type: the call's contraction options.

    Returns:
      ``"values/derivatives"``: a key of ``jlocalconv.implementations.IMPLEMENTATIONS``
      and one of ``DERIVATIVE_ROUTES`` (``implementations.lookup`` runs it).

    Example:
      >>> import jax, jlocalconv
      >>> from jlocalconv.geometry import make_geometry
      >>> geom = make_geometry((2, 6, 3), 3)
      >>> x = jax.ShapeDtypeStruct((2, 6, 3), "float32")
      >>> k = jax.ShapeDtypeStruct(geom.kernel_shape(4), "float32")
      >>> values, derivatives = pick(geom, x, k).split("/")
      >>> values in jlocalconv.implementations.IMPLEMENTATIONS
      True
    """
    pet = None if preferred_element_type is None else jnp.dtype(preferred_element_type).name
    problem = Problem(
        geom,
        int(inputs.shape[0]),
        int(kernel.shape[-1]),
        jnp.dtype(inputs.dtype).name,
        jnp.dtype(kernel.dtype).name,
        precision,
        pet,
    )
    return choose(problem)


def choose(problem: Problem) -> str:
    """The cached choice for ``problem``, measuring and storing it the first time."""
    key = problem.key()
    with _lock:
        if key not in _choices:
            _choices.update(_read_cache_file())
        if key not in _choices:
            _choices[key] = decide(*_measure_all(problem))
            _write_cache_file(key, _choices[key])
        return _choices[key]


def candidates(geom: Geometry, backend: str) -> tuple[str, ...]:
    """The implementations autotune times forward (value routes) for ``geom`` on ``backend``.

    All of them, but "shifts" only where it unrolls few terms
    (:func:`~jlocalconv.implementations.shifts_unrolls_few`): one per window offset and
    channel, so beyond that it compiles for many seconds and is slower than the
    contractions it competes with. And not
    "patches" on CPU: autotune never picked it on the 240 problems of sweep seeds 2 and
    5-7.

    >>> from jlocalconv.geometry import make_geometry
    >>> candidates(make_geometry((1, 8, 8, 32), 3), "cpu")
    ('slices', 'tiles')
    >>> candidates(make_geometry((1, 8, 8, 16), 3), "cpu")
    ('slices', 'tiles', 'shifts')
    >>> candidates(make_geometry((1, 8, 8, 2), 3), "gpu")
    ('patches', 'slices', 'tiles', 'shifts')
    """
    few = shifts_unrolls_few(geom)
    skip = {"patches"} if backend == "cpu" else set()
    return tuple(n for n in IMPLEMENTATIONS if (n != "shifts" or few) and n not in skip)


def derivative_candidates(backend: str, problem: Problem | None = None) -> tuple[str, ...]:
    """The derivative routes autotune times (``value_and_grad``) on ``backend``.

    Not "patches" on CPU: its ``value_and_grad`` (XLA convolutions, as lax's) on 3-D
    windows took minutes per call, which the warm-up call would pay in full (over 20
    minutes on a 6x21x8 bf16 problem of sweep seed 8). "products" only on CPU for a
    ``problem`` where "shifts" takes it (``products.derivatives_by_products``): it was
    tuned there, and elsewhere it is slower or unrolls too many batch rows to be worth
    compiling.

    >>> derivative_candidates("cpu"), derivative_candidates("gpu")
    (('slices', 'tiles'), ('patches', 'slices', 'tiles'))
    """
    routes = [r for r in DERIVATIVE_ROUTES if r != "products"]
    if backend == "cpu":
        routes.remove("patches")
        if problem is not None and _products_apply(problem):
            routes.append("products")
    return tuple(routes)


def _products_apply(problem: Problem) -> bool:
    geom, batch, filters = problem.geom, problem.batch, problem.filters
    return derivatives_by_products(geom, batch, filters, problem.kernel_dtype)


def decide(values: dict[str, Measurement], derivatives: dict[str, Measurement]) -> str:
    """``"values/derivatives"``: the fastest of each among those lean enough.

    Ties go to the first in each dict's order. "products" differentiates its value
    route's own values, so it comes with the "shifts" values it was timed with.

    >>> m = Measurement
    >>> decide({"a": m(1.0, 10), "b": m(0.1, 10**9)}, {"c": m(2.0, 10), "d": m(1.0, 10)})
    'a/d'
    >>> decide({"slices": m(1.0, 10), "shifts": m(2.0, 10)}, {"products": m(1.0, 10)})
    'shifts/products'
    """
    derivative_route = _fastest_lean(DERIVATIVES, derivatives)
    value_route = _TIMED_WITH.get(derivative_route) or _fastest_lean(VALUES, values)
    return f"{value_route}/{derivative_route}"


def _fastest_lean(kind: str, measured: dict[str, Measurement]) -> str:
    if not measured:
        fail("autotune", f"measured {kind}", "at least one candidate", "none")
    leanest = min(m.temp_bytes for m in measured.values())
    limit = max(MEMORY_FACTOR * leanest + MEMORY_SLACK_BYTES, MEMORY_FLOOR_BYTES)
    lean = [name for name, m in measured.items() if m.temp_bytes <= limit]
    return min(lean, key=lambda name: measured[name].seconds)


def _known(name: str) -> bool:
    """Whether a cached choice names what this version can run (older caches: one name)."""
    values, _, derivatives = name.partition("/")
    return values in IMPLEMENTATIONS and derivatives in ("", *DERIVATIVE_ROUTES)


def choices() -> dict[str, str]:
    """The choices made (or read from the cache file) in this process: key -> name."""
    with _lock:
        return dict(_choices)


def clear() -> None:
    """Forget this process's choices (the cache file, if any, is kept)."""
    with _lock:
        _choices.clear()


def set_cache_file(path: str | os.PathLike | None) -> None:
    """Keep choices in a JSON file at ``path`` (None: in memory only).

    Overrides the ``JLOCALCONV_AUTOTUNE_CACHE`` environment variable. The file is read
    when a problem is not yet known and rewritten atomically after each new choice.
    """
    global _cache_file, _cache_file_set
    if path is not None and not isinstance(path, (str, os.PathLike)):
        fail("set_cache_file", "path", "a str, os.PathLike or None", path, exc=TypeError)
    with _lock:
        _cache_file = None if path is None else pathlib.Path(path)
        _cache_file_set = True


def _current_cache_file() -> pathlib.Path | None:
    if _cache_file_set:
        return _cache_file
    env = os.environ.get(CACHE_ENV)
    return pathlib.Path(env) if env else None


def _read_cache_file() -> dict[str, str]:
    path = _current_cache_file()
    if path is None or not path.exists():
        return {}
    try:
        found = json.loads(path.read_text())["choices"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"autotune: the cache file {str(path)!r} is not a jlocalconv autotune cache "
            f"({error}); delete it or set another with set_cache_file / {CACHE_ENV}."
        ) from error
    return {k: v for k, v in found.items() if isinstance(v, str) and _known(v)}


def _write_cache_file(key: str, name: str) -> None:
    path = _current_cache_file()
    if path is None:
        return
    found = _read_cache_file()
    found[key] = name
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename: a reader never sees half a file, concurrent writers lose at most
    # a choice (measured again next time), never the file.
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump({"version": 1, "choices": found}, f, indent=1, sort_keys=True)
    os.replace(f.name, path)


def _operands(problem: Problem) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Random inputs, kernel and output cotangent (float32 draws: no float64 kernel copy)."""
    geom = problem.geom
    rng = np.random.default_rng(0)
    x = rng.standard_normal(geom.input_shape(problem.batch), np.float32)
    k = rng.standard_normal(geom.kernel_shape(problem.filters), np.float32)
    g = rng.standard_normal(geom.result_shape(problem.batch, problem.filters), np.float32)
    return (
        jnp.asarray(x, problem.dtype),
        jnp.asarray(k, problem.kernel_dtype),
        jnp.asarray(g, problem.preferred_element_type or problem.dtype),
    )


def _measure_all(problem: Problem) -> tuple[dict[str, Measurement], dict[str, Measurement]]:
    """Compiles every candidate and times them all (:func:`_fastest_calls`).

    Returns:
      The value routes' forward measurements and the derivative routes'
      ``value_and_grad`` ones.
    """
    with jax.ensure_compile_time_eval():  # run now, even while an outer jit traces
        x, k, g = _operands(problem)
        backend = jax.default_backend()
        compiled = {
            (VALUES, name): _compile(name, problem, x, k, None)
            for name in candidates(problem.geom, backend)
        }
        for route in derivative_candidates(backend, problem):
            name = f"{_TIMED_WITH.get(route, route)}/{route}"
            compiled[(DERIVATIVES, route)] = _compile(name, problem, x, k, g)
        seconds = _fastest_calls({key: call for key, (call, _) in compiled.items()}, x, k)
    measured = {key: Measurement(seconds[key], temp) for key, (_, temp) in compiled.items()}
    values = {name: m for (kind, name), m in measured.items() if kind == VALUES}
    derivatives = {name: m for (kind, name), m in measured.items() if kind == DERIVATIVES}
    return values, derivatives


def _fastest_calls(
    calls: dict[tuple[str, str], Callable], *args: Any
) -> dict[tuple[str, str], float]:
    """Each call's fastest time, the calls run in alternation (drift hits all alike).

    Each is run once (warm-up, not a sample); one more than ``WARMUP_PRUNE_FACTOR`` times
    slower than the fastest warm-up of its kind keeps that time. The others are timed
    once; one more than ``PRUNE_FACTOR`` times slower than the fastest of its kind keeps
    that time. The rest are called in rounds, ``MIN_ROUNDS`` in all at least and then
    while ``BUDGET_S`` per call lasts, up to ``MAX_ROUNDS``, and keep their fastest call:
    noise only ever adds time.
    """
    times = {key: [_seconds(call, *args)] for key, call in calls.items()}
    for key in _hopeful(times, WARMUP_PRUNE_FACTOR):
        times[key] = [_seconds(calls[key], *args)]  # the first sample
    live = _hopeful(times, PRUNE_FACTOR)
    deadline = time.perf_counter() + BUDGET_S * len(live)
    rounds = 1
    while rounds < MIN_ROUNDS or (rounds < MAX_ROUNDS and time.perf_counter() < deadline):
        for key in live:
            times[key].append(_seconds(calls[key], *args))
        rounds += 1
    return {key: min(t) for key, t in times.items()}


def _hopeful(times: dict[tuple[str, str], list[float]], factor: float) -> list[tuple[str, str]]:
    """The keys whose first time is within ``factor`` of the fastest first time of their
    kind (values or derivatives)."""
    best: dict[str, float] = {}
    for (kind, _), t in times.items():
        best[kind] = min(best.get(kind, t[0]), t[0])
    return [key for key, t in times.items() if t[0] <= factor * best[key[0]]]


def _compile(
    name: str, problem: Problem, x: jax.Array, k: jax.Array, g: jax.Array | None
) -> tuple[Callable, int]:
    """``name``'s compiled forward (``g`` None) or value_and_grad, and its temp bytes."""
    impl = resolve(name, x, k, problem.preferred_element_type, jax.default_backend())

    def forward(x, k):
        return impl(
            x,
            k,
            problem.geom,
            precision=problem.precision,
            preferred_element_type=problem.preferred_element_type,
        )

    def loss(x, k):
        return jnp.vdot(forward(x, k).astype(g.dtype), g).real

    program = forward if g is None else jax.value_and_grad(loss, argnums=(0, 1))
    compiled = jax.jit(program).lower(x, k).compile()
    memory = compiled.memory_analysis()  # None where a backend does not report it
    return compiled, 0 if memory is None else int(memory.temp_size_in_bytes)


def _seconds(call: Callable, *args: Any) -> float:
    """Wall seconds of one ``call(*args)``, results ready."""
    start = time.perf_counter()
    jax.block_until_ready(call(*args))
    return time.perf_counter() - start


__all__ = [
    "Measurement",
    "Problem",
    "candidates",
    "choices",
    "choose",
    "clear",
    "decide",
    "derivative_candidates",
    "pick",
    "set_cache_file",
]
