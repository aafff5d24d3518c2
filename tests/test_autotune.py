"""implementation="autotune": a measured choice, cached per process and on disk."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlocalconv
from jlocalconv import autotune, implementations
from jlocalconv.geometry import make_geometry
from jlocalconv.implementations import IMPLEMENTATIONS
from tests.reference import local_conv_ref

M = autotune.Measurement
EVEN = {n: 1.0 for n in IMPLEMENTATIONS}  # fake times: every candidate alike
# What autotune times on this backend: not "patches" on CPU (see autotune.candidates)
TIMED = set(IMPLEMENTATIONS) - ({"patches"} if jax.default_backend() == "cpu" else set())
ROUTES = autotune.derivative_candidates(jax.default_backend())


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    """Each test starts with no choices and no cache file (environment ignored)."""
    monkeypatch.delenv(autotune.CACHE_ENV, raising=False)
    autotune.clear()
    autotune.set_cache_file(None)
    yield
    autotune.clear()
    monkeypatch.setattr(autotune, "_cache_file_set", False)


def _fake(values: dict[str, float], calls: list[str], derivatives: dict[str, float] = EVEN):
    """A stand-in for the measurement: the given seconds for autotune's candidates."""

    def measure_all(problem):
        names = autotune.candidates(problem.geom, jax.default_backend())
        calls.extend(names)
        return (
            {name: M(values[name], 0) for name in names},
            {route: M(derivatives[route], 0) for route in ROUTES},
        )

    return measure_all


def _operands(shape=(3, 9, 8, 2), filters=4, window=3, dtype=np.float32):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    k = rng.standard_normal(jlocalconv.kernel_shape(shape, filters, window)).astype(dtype)
    return x, k


def test_decide_pairs_the_fastest_values_with_the_fastest_derivatives():
    values = {"a": M(1.0, 10), "b": M(1.2, 10), "c": M(3.0, 10)}
    derivatives = {"a": M(4.0, 10), "b": M(1.3, 10), "c": M(1.0, 10)}
    assert autotune.decide(values, derivatives) == "a/c"
    assert autotune.decide(values, {"b": M(1.0, 10), "c": M(1.0, 10)}) == "a/b"  # first tie


def test_decide_leaves_out_memory_hungry_candidates():
    lean, hungry = 20 << 20, 100 << 20
    measured = {"lean": M(2.0, lean), "hungry": M(1.0, hungry)}
    assert autotune.decide(measured, measured) == "lean/lean"
    # each kind by its own memory: a lean forward may pair with lean derivatives
    assert autotune.decide(measured | {"hungry": M(1.0, lean)}, measured) == "hungry/lean"
    # within MEMORY_FACTOR * leanest + slack, speed decides
    close = {"lean": M(2.0, lean), "close": M(1.0, int(autotune.MEMORY_FACTOR * lean))}
    assert autotune.decide(close, close) == "close/close"
    # and below the floor, whatever the ratio
    tiny, small = 1 << 20, autotune.MEMORY_FLOOR_BYTES
    floor = {"tiny": M(2.0, tiny), "small": M(1.0, small)}
    assert autotune.decide(floor, floor) == "small/small"
    over = {"tiny": M(2.0, tiny), "big": M(1, small + 1)}
    assert autotune.decide(over, over) == "tiny/tiny"


def test_decide_refuses_an_empty_measurement():
    with pytest.raises(ValueError, match=r"autotune.*measured values"):
        autotune.decide({}, {"a": M(1.0, 0)})
    with pytest.raises(ValueError, match=r"autotune.*measured derivatives"):
        autotune.decide({"a": M(1.0, 0)}, {})


def test_spec_accepts_autotune_and_lists_it_in_errors():
    spec = jlocalconv.LocalConvSpec.create(2, 3, implementation="autotune")
    assert spec.implementation == "autotune"
    with pytest.raises(ValueError, match="autotune"):
        jlocalconv.LocalConvSpec.create(2, 3, implementation="autotuned")


def test_fake_timings_decide_and_the_choice_is_measured_once(monkeypatch):
    calls: list[str] = []
    faster = {"shifts": 0.5}, {"tiles": 0.5}
    values, derivatives = (EVEN | fast for fast in faster)
    monkeypatch.setattr(autotune, "_measure_all", _fake(values, calls, derivatives))
    x, k = _operands()
    f = jax.jit(lambda x, k: jlocalconv.local_conv2d(x, k, 3, 1, implementation="autotune"))
    y = f(x, k)
    assert sorted(calls) == sorted(TIMED)  # 2 channels: "shifts" is a candidate
    assert list(autotune.choices().values()) == ["shifts/tiles"]
    # the chosen value route ran: its result, bit for bit
    expected = jlocalconv.local_conv2d(x, k, 3, 1, implementation="shifts")
    np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))
    # and the chosen derivative route differentiated it: the loop's gradient, bit for bit
    loop = implementations.lookup("slices/tiles")  # any value route: it is not differentiated
    geom = make_geometry(x.shape, 3)
    by_loop = lambda x: (loop(x, k, geom, precision=None, preferred_element_type=None) ** 2).sum()
    tuned = lambda x: (jlocalconv.local_conv2d(x, k, 3, 1, implementation="autotune") ** 2).sum()
    np.testing.assert_array_equal(jax.grad(tuned)(x), jax.grad(by_loop)(x))
    # retraced (another jit, grad, eager): no new measurement for the same problem
    jlocalconv.local_conv2d(x, k, 3, 1, implementation="autotune")
    assert len(calls) == len(TIMED)


def test_shifts_is_not_timed_beyond_a_few_channels(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(autotune, "_measure_all", _fake(EVEN, calls))
    x, k = _operands(shape=(2, 6, 6, implementations.SHIFTS_MAX_CHANNELS + 1))
    jlocalconv.local_conv2d(x, k, 3, 1, implementation="autotune")
    assert sorted(calls) == sorted(TIMED - {"shifts"})
    # ... and, from 5 channels on, beyond SHIFTS_TRIAL_MAX_FEATURES features (9x9 x 16)
    calls.clear()
    x, k = _operands(shape=(2, 10, 10, 16), window=9)
    jlocalconv.local_conv2d(x, k, 9, 1, implementation="autotune")
    assert sorted(calls) == sorted(TIMED - {"shifts"})


def test_patches_is_timed_off_cpu_only():
    """On CPU "patches" (XLA convolutions, whose 3-D value_and_grad takes minutes) is left
    out; elsewhere every implementation competes."""
    geom = make_geometry((1, 6, 6, 6, 2), 3)
    assert "patches" not in autotune.candidates(geom, "cpu")
    assert set(autotune.candidates(geom, "gpu")) == set(IMPLEMENTATIONS)
    assert set(autotune.candidates(geom, "cpu")) == set(IMPLEMENTATIONS) - {"patches"}


def test_another_problem_is_measured_again(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(autotune, "_measure_all", _fake(EVEN, calls))
    x, k = _operands()
    jlocalconv.local_conv2d(x, k, 3, 1, implementation="autotune")
    jlocalconv.local_conv2d(x[:2], k, 3, 1, implementation="autotune")  # another batch
    assert len(calls) == 2 * len(TIMED) and len(autotune.choices()) == 2


def test_real_measurement_matches_the_numpy_reference_under_jit_grad_and_vmap():
    x, k = _operands()
    conv = lambda x, k: jlocalconv.local_conv2d(x, k, 3, 1, implementation="autotune")
    y = jax.jit(conv)(x, k)
    np.testing.assert_allclose(np.asarray(y), local_conv_ref(x, k, (3, 3), (1, 1)), atol=1e-4)
    (choice,) = autotune.choices().values()
    values, derivatives = choice.split("/")
    assert values in TIMED and derivatives in ROUTES
    gx, gk = jax.grad(lambda x, k: (conv(x, k) ** 2).sum(), argnums=(0, 1))(x, k)
    rx, rk = jax.grad(
        lambda x, k: (jlocalconv.local_conv2d(x, k, 3, 1, implementation=derivatives) ** 2).sum(),
        argnums=(0, 1),
    )(x, k)
    np.testing.assert_allclose(gx, rx, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(gk, rk, rtol=1e-6, atol=1e-5)
    per_example = jax.vmap(lambda xi: conv(xi[None], k)[0])(x)
    np.testing.assert_allclose(per_example, y, atol=1e-5)


def test_bfloat16_is_widened_as_auto_does(monkeypatch):
    monkeypatch.setattr(autotune, "_measure_all", _fake(EVEN, []))
    x, k = (jnp.asarray(a, jnp.bfloat16) for a in _operands())
    y = jlocalconv.local_conv2d(x, k, 3, 1, implementation="autotune")
    assert y.dtype == jnp.bfloat16
    values = next(iter(autotune.choices().values())).split("/")[0]
    expected = jlocalconv.local_conv2d(
        x.astype(jnp.float32), k.astype(jnp.float32), 3, 1, implementation=values
    ).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(expected, np.float32))


def test_cache_file_keeps_choices_across_processes(monkeypatch, tmp_path):
    path = tmp_path / "sub" / "autotune.json"
    autotune.set_cache_file(path)
    faster = EVEN | {"tiles": 0.1}
    monkeypatch.setattr(autotune, "_measure_all", _fake(faster, [], faster))
    x, k = _operands()
    jlocalconv.local_conv2d(x, k, 3, 1, implementation="autotune")
    stored = json.loads(path.read_text())["choices"]
    assert list(stored.values()) == ["tiles/tiles"]
    autotune.clear()  # a new process: nothing in memory, the file remains

    def refuse(*args):
        raise AssertionError("measured although the cache file has the choice")

    monkeypatch.setattr(autotune, "_measure_all", refuse)
    jlocalconv.local_conv2d(x, k, 3, 1, implementation="autotune")
    assert list(autotune.choices().values()) == ["tiles/tiles"]


def test_cache_file_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setattr(autotune, "_cache_file_set", False)
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path / "env.json"))
    monkeypatch.setattr(autotune, "_measure_all", _fake(EVEN, []))
    x, k = _operands()
    jlocalconv.local_conv2d(x, k, 3, 1, implementation="autotune")
    assert (tmp_path / "env.json").exists()


def test_a_corrupt_cache_file_is_named_in_the_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    autotune.set_cache_file(path)
    x, k = _operands()
    with pytest.raises(ValueError, match=r"bad\.json.*not a jlocalconv autotune cache"):
        jlocalconv.local_conv2d(x, k, 3, 1, implementation="autotune")


def test_set_cache_file_checks_its_argument():
    with pytest.raises(TypeError, match="path"):
        autotune.set_cache_file(3)


def test_pick_takes_shape_dtype_structs():
    geom = make_geometry((2, 6, 3), 3)
    x = jax.ShapeDtypeStruct((2, 6, 3), jnp.float32)
    k = jax.ShapeDtypeStruct(geom.kernel_shape(4), jnp.float32)
    values, derivatives = autotune.pick(geom, x, k).split("/")
    assert values in IMPLEMENTATIONS and derivatives in implementations.DERIVATIVE_ROUTES


def test_measurement_alternates_candidates_prunes_the_hopeless_and_keeps_the_fastest_call(
    monkeypatch,
):
    """The timing loop, with a fake clock: no real timing asserted. Warm-ups are no
    samples: "slices" warms up 4x slower than "patches" (sweep s61-0's kind) and still
    wins; "tiles" is pruned on its first sample, "shifts" already on its warm-up."""
    speeds = {"patches": 1.0, "slices": 0.9, "tiles": 10.0, "shifts": 50.0}
    warm_ups = {"patches": 1.0, "slices": 4.0, "tiles": 10.0, "shifts": 50.0}
    monkeypatch.setattr(autotune, "candidates", lambda geom, backend: tuple(speeds))
    monkeypatch.setattr(autotune, "derivative_candidates", lambda backend, problem: tuple(speeds))

    def fake_compile(name, problem, x, k, g):
        return ("fwd" if g is None else "grad", name.split("/")[0]), len(name)

    monkeypatch.setattr(autotune, "_compile", fake_compile)
    order: list[tuple[str, str]] = []

    def fake_seconds(call, *args):
        order.append(call)
        count = order.count(call)
        jitter = 0.5 if count == 3 else 0.0  # one noisy sample, added time
        seconds = (warm_ups if count == 1 else speeds)[call[1]] + jitter
        return seconds * (2 if call[0] == "grad" else 1)

    monkeypatch.setattr(autotune, "_seconds", fake_seconds)
    monkeypatch.setattr(autotune, "BUDGET_S", 0.0)  # MIN_ROUNDS rounds exactly
    geom = make_geometry((2, 6, 6, 8), 3)
    problem = autotune.Problem(geom, 2, 4, "float32", "float32", None, None)
    values, derivatives = autotune._measure_all(problem)
    assert values["slices"] == M(0.9, len("slices"))  # the fastest call, not noise
    assert derivatives["slices"] == M(1.8, len("slices/slices"))  # its own program
    assert values["patches"] == M(1.0, len("patches"))
    assert values["tiles"] == M(10.0, len("tiles"))  # its first sample, kept
    assert derivatives["tiles"] == M(20.0, len("tiles/tiles"))
    assert values["shifts"] == M(50.0, len("shifts"))  # 50x the fastest warm-up: kept
    assert order.count(("fwd", "tiles")) == 2 and order.count(("grad", "tiles")) == 2
    assert order.count(("fwd", "shifts")) == 1 and order.count(("grad", "shifts")) == 1
    assert order.count(("fwd", "slices")) == 1 + autotune.MIN_ROUNDS
    # warm-ups, then first samples of all but "shifts", then rounds alternate the live calls
    firsts = [("fwd", n) for n in ("patches", "slices", "tiles")]
    firsts += [("grad", n) for n in ("patches", "slices", "tiles")]
    assert order[2 * len(speeds) : 2 * len(speeds) + 6] == firsts
    rounds = order[2 * len(speeds) + 6 :]
    live = [("fwd", "patches"), ("fwd", "slices"), ("grad", "patches"), ("grad", "slices")]
    assert rounds == live * (autotune.MIN_ROUNDS - 1)
    assert autotune.decide(values, derivatives) == "slices/slices"
