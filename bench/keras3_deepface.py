"""DeepFace in Keras 3 (jlocalconv's layers, JAX) against DeepFace in tf_keras (TensorFlow).

``python -m bench --keras3-deepface`` (or ``python -m bench.keras3_deepface``) builds
DeepFace (Taigman et al., CVPR 2014, as the ``deepface`` package builds it: C1 conv
11x11x32, M2 max-pool 3/2, C3 conv 9x9x16, the locally connected L4 9x9x16 on 63x63x16, L5
7x7x16 stride 2 on 55x55x16 and L6 5x5x16 on 25x25x16, F7 dense 4096, F8 softmax over 8631
identities; 152x152x3 input) twice:

* in tf_keras, in a worker subprocess run with ``--tf-python`` (a Python with TensorFlow and
  tf_keras; the main process never imports TensorFlow), which draws the weights and writes
  them with ``model.save_weights`` as a tf.keras 2 ``.h5`` file, as DeepFace's weights ship;
* in Keras 3 on JAX with :mod:`jlocalconv.keras`, which reads that file with
  ``model.load_weights``.

It checks that both predict the same on the same inputs, then times ``predict`` (and
``predict_on_batch``) and one SGD ``train_on_batch`` step in rounds that alternate the two
processes (one works while the other waits, so a busy shared machine slows both alike), and
writes ``bench/results/keras3-deepface-<date>.md`` and ``.json``. ``--smoke`` runs a
miniature of the same architecture in seconds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench import environment

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
DEFAULT_TF_PYTHON = "/work/tfvenv/bin/python"

# name -> (input side, C1 window, C3 window, L4, L5, L6 windows, F7 units, F8 classes).
SIZES = {
    "deepface": (152, 11, 9, 9, 7, 5, 4096, 8631),
    "smoke": (48, 5, 3, 3, 3, 3, 64, 10),
}


PARTS = ("full", "convs", "locally_connected")


def build(keras: Any, locally_connected: type, size: str, part: str = "full") -> Any:
    """DeepFace with ``keras``'s layers and ``locally_connected`` for L4, L5 and L6.

    The same code builds the tf_keras model (``keras=tf_keras``) and the Keras 3 one.
    ``part`` ``"convs"`` is C1-C3 alone and ``"locally_connected"`` L4-L6 alone (on C3's
    output shape), to tell where the time goes.
    """
    _, c1, c3, l4, l5, l6, f7, f8 = SIZES[size]
    layers = keras.layers
    stack = [
        layers.Conv2D(32, c1, activation="relu", name="C1"),
        layers.MaxPooling2D(3, strides=2, padding="same", name="M2"),
        layers.Conv2D(16, c3, activation="relu", name="C3"),
        locally_connected(16, l4, activation="relu", name="L4"),
        locally_connected(16, l5, strides=2, activation="relu", name="L5"),
        locally_connected(16, l6, activation="relu", name="L6"),
        layers.Flatten(name="F0"),
        layers.Dense(f7, activation="relu", name="F7"),
        layers.Dropout(0.5, name="D0"),
        layers.Dense(f8, activation="softmax", name="F8"),
    ]
    if part == "convs":
        stack = stack[:3]
    elif part == "locally_connected":
        stack = stack[3:6]
    return keras.Sequential([keras.Input(input_shape(size, part)), *stack], name=f"DeepFace_{part}")


def input_shape(size: str, part: str) -> tuple[int, int, int]:
    """The input of ``part``: images, or C3's output for the locally connected part."""
    side, c1, c3 = SIZES[size][:3]
    if part != "locally_connected":
        return (side, side, 3)
    c3_side = -(-(side - c1 + 1) // 2) - c3 + 1  # C1 valid, M2 "same" stride 2, C3 valid
    return (c3_side, c3_side, 16)


def batch(size: str, n: int, part: str = "full") -> tuple[np.ndarray, np.ndarray]:
    """The same seeded inputs (of ``part``) and labels in both processes."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (n, *input_shape(size, part))).astype(np.float32)
    return x, rng.integers(0, SIZES[size][-1], n).astype(np.int32)


def part_models(keras: Any, locally_connected: type, size: str, n: int, sync: Callable) -> dict:
    """The convolutional and the locally connected parts, fresh weights (only timed)."""
    found = {}
    for part in PARTS[1:]:
        model = build(keras, locally_connected, size, part)
        found[part] = Model(model, *batch(size, n, part), sync)
        found[part].timed("predict_on_batch", 1)  # compiles
    return found


class Model:
    """One side's model and the three timed calls, each returning seconds per call."""

    def __init__(self, model: Any, x: np.ndarray, y: np.ndarray, sync: Callable) -> None:
        self.model, self.x, self.y, self.sync = model, x, y, sync

    def predict(self) -> None:
        self.model.predict(self.x, batch_size=len(self.x), verbose=0)

    def predict_on_batch(self) -> None:
        self.sync(self.model.predict_on_batch(self.x))

    def train_step(self) -> None:
        self.sync(self.model.train_on_batch(self.x, self.y))

    def timed(self, what: str, reps: int) -> list[float]:
        call = getattr(self, what)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        return times

    def first_calls(self) -> dict[str, float]:
        """Seconds of the first call of each (tracing and compilation included)."""
        return {what: self.timed(what, 1)[0] for what in ("predict", "predict_on_batch")}


def features(keras: Any, model: Any) -> Any:
    """The model up to L6, the last locally connected layer (before the softmax flattens)."""
    return keras.Model(model.inputs, model.get_layer("L6").output)


def compile_for_training(keras: Any, model: Any) -> None:
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="sparse_categorical_crossentropy")


# --- the tf_keras worker (run with a Python that has TensorFlow) ---------------------------


def worker(size: str, n: int, weights: str, outputs: str) -> None:
    """Answers the main process's JSON commands on stdin with one JSON line each."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    model = build(tf_keras, tf_keras.layers.LocallyConnected2D, size)
    compile_for_training(tf_keras, model)
    model.save_weights(weights)  # tf.keras 2's HDF5 weights file
    x, y = batch(size, n)
    side = Model(model, x, y, lambda result: np.asarray(result))
    first = side.first_calls()
    np.save(outputs, model.predict_on_batch(x))
    np.save(f"{outputs}_L6", features(tf_keras, model).predict_on_batch(x))
    info = {"tensorflow": tf.__version__, "tf_keras": tf_keras.__version__, "params": 0}
    info["params"] = int(model.count_params())
    sides = {
        "full": side,
        **part_models(tf_keras, tf_keras.layers.LocallyConnected2D, size, n, np.asarray),
    }
    _answer({"ready": True, "first_calls": first, **info})
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            return
        times = sides[command["part"]].timed(command["cmd"], command["reps"])
        _answer({"times": times})


def _answer(message: dict) -> None:
    print(json.dumps(message), flush=True)


# --- the main process (Keras 3 on JAX) ------------------------------------------------------


def _progress(message: str) -> None:
    print(f"[keras3_deepface {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Worker:
    """The tf_keras subprocess."""

    def __init__(self, python: str, size: str, n: int, tmp: str) -> None:
        self.weights, self.outputs = f"{tmp}/deepface_weights.h5", f"{tmp}/tf_outputs.npy"
        args = ["--worker", "--size", size, "--batch", str(n), "--tmp", tmp]
        root = pathlib.Path(__file__).resolve().parents[1]
        self.proc = subprocess.Popen(
            [python, "-m", "bench.keras3_deepface", *args],
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the tf_keras worker exited with {self.proc.wait()}")
        return json.loads(line)

    def timed(self, what: str, reps: int, part: str = "full") -> list[float]:
        self.proc.stdin.write(json.dumps({"cmd": what, "reps": reps, "part": part}) + "\n")
        self.proc.stdin.flush()
        return self._read()["times"]

    def close(self) -> None:
        self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def measure(args: argparse.Namespace) -> dict:
    """Both models, their agreement and the alternating timings."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import jax
    import keras

    import jlocalconv
    from jlocalconv.keras import LocallyConnected2D

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        tf_side = Worker(args.tf_python, args.size, args.batch, tmp)
        setup_tf = time.perf_counter() - t0
        _progress("tf_keras model ready; building the Keras 3 one")
        model = build(keras, LocallyConnected2D, args.size)
        compile_for_training(keras, model)
        t0 = time.perf_counter()
        model.load_weights(tf_side.weights)  # the tf.keras 2 file, through Keras 3's loader
        load_s = time.perf_counter() - t0
        x, y = batch(args.size, args.batch)
        ours = Model(model, x, y, jax.block_until_ready)
        first = ours.first_calls()
        ours_out = np.asarray(model.predict_on_batch(x))
        tf_out = np.load(tf_side.outputs)
        ours_l6 = np.asarray(features(keras, model).predict_on_batch(x))
        tf_l6 = np.load(tf_side.outputs.replace(".npy", "_L6.npy"))
        rounds = {}
        calls = ["predict", "predict_on_batch", "train_step"]
        for what in calls:
            # tf_keras's training step on the full model needs more memory than a shared
            # machine may have (its worker was OOM-killed at 8.4 GB): opt in with --tf-train.
            sides = [ours, tf_side] if what != "train_step" or args.tf_train else [ours]
            _progress(f"timing {what} ({len(sides)} sides)")
            for side in sides:
                side.timed(what, 1)  # warm-up (compiles the train step)
            times: list[list[float]] = [[] for _ in sides]
            for _ in range(args.rounds):  # alternate: one process works, the other waits
                for side, found in zip(sides, times):
                    found += side.timed(what, args.reps)
            rounds[what] = dict(zip(("jlocalconv_keras3", "tf_keras"), times))
        _progress("timing the parts")
        parts = part_models(keras, LocallyConnected2D, args.size, args.batch, jax.block_until_ready)
        for part, model_part in parts.items():
            mine, theirs = [], []
            for _ in range(args.rounds):
                mine += model_part.timed("predict_on_batch", args.reps)
                theirs += tf_side.timed("predict_on_batch", args.reps, part)
            rounds[f"{part} only: predict_on_batch"] = {
                "jlocalconv_keras3": mine,
                "tf_keras": theirs,
            }
        tf_side.close()
    return {
        "versions": {
            "jax": jax.__version__,
            "keras": keras.__version__,
            "jlocalconv": jlocalconv.__version__,
            **{k: tf_side.ready[k] for k in ("tensorflow", "tf_keras")},
        },
        "params": int(model.count_params()),
        "params_tf_keras": tf_side.ready["params"],
        "max_abs_diff_predict": float(np.abs(ours_out - tf_out).max()),
        "max_abs_output": float(np.abs(tf_out).max()),
        "max_abs_diff_L6": float(np.abs(ours_l6 - tf_l6).max()),
        "max_abs_L6": float(np.abs(tf_l6).max()),
        "first_calls_s": {"jlocalconv_keras3": first, "tf_keras": tf_side.ready["first_calls"]},
        "load_weights_s": load_s,
        "tf_setup_s": setup_tf,
        "times_s": rounds,
    }


def summarize(result: dict) -> dict[str, dict[str, float]]:
    """Median seconds per call of each side and the speed-up (tf_keras / jlocalconv)."""
    table = {}
    for what, sides in result["times_s"].items():
        medians = {f"{k}_s": statistics.median(v) for k, v in sides.items()}
        if len(medians) == 2:
            medians["speedup"] = medians["tf_keras_s"] / medians["jlocalconv_keras3_s"]
        table[what] = medians
    return table


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "environment": environment.settings(),
    }


def markdown(result: dict, args: argparse.Namespace) -> str:
    rows = [
        f"| `{what}` | {r['jlocalconv_keras3_s'] * 1e3:.1f} | "
        + (f"{r['tf_keras_s'] * 1e3:.1f} | {r['speedup']:.2f}x |" if "speedup" in r else "- | - |")
        for what, r in result["summary"].items()
    ]
    first = result["first_calls_s"]
    m = result["machine_before"]
    n = args.rounds * args.reps
    return "\n".join(
        [
            f"# DeepFace: Keras 3 + jlocalconv (JAX) vs tf_keras, {result['date']}",
            "",
            f"Command: `{_command(args, m['environment'])}` "
            f"(batch {args.batch}, {args.rounds} alternating rounds of {args.reps} calls per "
            f"side: median of {n} calls).",
            f"Machine: {m['cpu']}, {m['cores']} cores (load average "
            f"{m['load_average'][0]:.1f} before, "
            f"{result['machine_after']['load_average'][0]:.1f} after); the two processes "
            "alternate, so drift hits both alike.",
            f"Versions: {', '.join(f'{k} {v}' for k, v in result['versions'].items())}.",
            f"Model: `{args.size}` ({result['params']:,} parameters in both; L4, L5, L6 "
            "LocallyConnected2D implementation 1), weights drawn by tf_keras, written with "
            "`save_weights` (.h5) and read by Keras 3's `model.load_weights` "
            f"({result['load_weights_s']:.1f} s).",
            f"Agreement, max |Keras 3 - tf_keras|: L6's features "
            f"{result['max_abs_diff_L6']:.2e} (values up to {result['max_abs_L6']:.2e}: "
            f"{result['max_abs_diff_L6'] / result['max_abs_L6']:.1e} of the largest), "
            f"the softmax outputs {result['max_abs_diff_predict']:.2e} (values up to "
            f"{result['max_abs_output']:.2e}).",
            "",
            "| call (batch of the same images) | jlocalconv + Keras 3 (ms) | tf_keras (ms) | "
            "speed-up |",
            "|---|---|---|---|",
            *rows,
            "",
            f"First calls (tracing and compilation): Keras 3 `predict` "
            f"{first['jlocalconv_keras3']['predict']:.1f} s, tf_keras "
            f"{first['tf_keras']['predict']:.1f} s.",
            "",
        ]
    )


def _command(args: argparse.Namespace, values: dict[str, str]) -> str:
    return environment.command(shlex.join(["--keras3-deepface", *args.argv]), values)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a miniature, in seconds")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--tf-train", action="store_true", help="time tf_keras's train step too")
    parser.add_argument("--tf-python", default=DEFAULT_TF_PYTHON)
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    parser.add_argument("--tag", default="", help="appended to the report's file name")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the report's command
    args.size = args.size or ("smoke" if args.smoke else "deepface")
    if args.worker:
        worker(args.size, args.batch, f"{args.tmp}/deepface_weights.h5", f"{args.tmp}/tf_outputs")
        return
    before = machine()
    result = measure(args)
    date = datetime.date.today().isoformat()
    result.update(date=date, machine_before=before, machine_after=machine())
    result["summary"] = summarize(result)
    stem = f"keras3-deepface{'-smoke' if args.smoke else ''}{args.tag}-{date}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    text = markdown(result, args)
    (args.out / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
