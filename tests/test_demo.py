"""The demo (``python -m jlocalconv``) and the training helpers it shares with notebook 02."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import local_conv_ref

import jlocalconv
from jlocalconv import __main__ as demo_main
from jlocalconv import _demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bundled_digits_equal_scikit_learn():
    datasets = pytest.importorskip("sklearn.datasets")
    images, labels = _demo.load_digits()
    upstream = datasets.load_digits()
    np.testing.assert_array_equal(images, upstream.images)
    np.testing.assert_array_equal(labels, upstream.target)


def test_split_is_a_seeded_partition():
    a, b, c = _demo.digits_split(seed=1), _demo.digits_split(seed=1), _demo.digits_split(seed=2)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_test, c.y_test)
    images, labels = _demo.load_digits()
    x = np.concatenate([a.x_train, a.x_test])[..., 0]
    # Every image appears exactly once, scaled to [0, 1].
    order = np.lexsort(x.reshape(len(x), -1).T)
    ref = np.lexsort((images / 16.0).reshape(len(x), -1).T)
    np.testing.assert_allclose(x[order], images[ref] / 16.0, rtol=1e-6)
    assert (
        np.bincount(np.concatenate([a.y_train, a.y_test])).tolist() == np.bincount(labels).tolist()
    )


def test_adam_matches_optax():
    optax = pytest.importorskip("optax")
    params = {"w": jnp.array([[0.5, -1.0], [2.0, 0.1]]), "b": jnp.array([0.3])}
    ours, theirs = _demo.adam(3e-2), optax.adam(3e-2)
    s_ours, s_theirs, p_ours, p_theirs = ours.init(params), theirs.init(params), params, params
    for i in range(5):
        grads = jax.tree.map(lambda p, i=i: jnp.sin(p * (i + 1)) + 0.1 * i, p_ours)
        u_ours, s_ours = ours.update(grads, s_ours, p_ours)
        u_theirs, s_theirs = theirs.update(grads, s_theirs, p_theirs)
        p_ours = jax.tree.map(jnp.add, p_ours, u_ours)
        p_theirs = optax.apply_updates(p_theirs, u_theirs)
        for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_theirs)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # a few float32 ulps


def test_local_net_is_local_conv_relu_dense():
    model = _demo.local_net(filters=3)
    params = model.init(jax.random.key(1))
    x = np.random.default_rng(0).random((2, 8, 8, 1)).astype(np.float32)
    bias = np.asarray(params["bias"], np.float64)
    hidden = np.maximum(local_conv_ref(x, params["kernel"], (3, 3), (1, 1)) + bias, 0)
    head = params["head"]
    want = hidden.reshape(2, -1) @ np.asarray(head["w"], np.float64) + np.asarray(head["b"])
    np.testing.assert_allclose(model.apply(params, x), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make", [_demo.local_net, _demo.cnn_net, _demo.mlp_net])
def test_models_have_a_similar_budget_and_learn(make):
    model = make()
    n = _demo.param_count(model.init(jax.random.key(0)))
    assert 5500 < n < 6000, n
    data = _demo.digits_split()
    result = _demo.train(
        model, _demo.adam(1e-2), data, steps=120, eval_every=40, show_progress=False
    )
    assert result.losses.shape == (120,) and result.test_losses.shape == (3,)
    assert result.losses[-20:].mean() < 0.5 * result.losses[:5].mean()
    assert result.test_losses[-1] < result.test_losses[0]
    assert result.test_accuracy > 0.85  # chance is 0.1


def test_text_progress_bar_without_tty(capsys):
    items = list(_demo._text_bar(range(7), "demo"))
    assert items == list(range(7))
    err = capsys.readouterr().err
    assert err.strip() == "demo [" + "#" * 30 + "] 7/7 " + err.split()[-1]
    assert err.count("\n") == 1


def test_numpy_check_in_demo_agrees_with_the_test_reference():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 9, 9, 2))
    kernel = rng.standard_normal(jlocalconv.kernel_shape(x.shape, 4, (3, 3), strides=2))
    np.testing.assert_allclose(
        demo_main._numpy_local_conv2d(x, kernel, 3, 2),
        local_conv_ref(x, kernel, (3, 3), (2, 2)),
        rtol=1e-12,
    )


def test_help_lists_the_flags():
    with pytest.raises(SystemExit) as exit_info:
        demo_main.main(["--help"])
    assert exit_info.value.code == 0


def test_python_m_jlocalconv_quick_runs_end_to_end():
    proc = subprocess.run(
        [sys.executable, "-m", "jlocalconv", "--quick", "--steps", "40"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "OK" in out and "MISMATCH" not in out
    assert "test accuracy" in out and "after 40 steps" in out
    assert "speed-up" in out and "notebooks/02_training.ipynb" in out
