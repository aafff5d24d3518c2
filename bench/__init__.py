"""Benchmarks of jlocalconv against every peer: ``python -m bench`` (or ``python bench/run.py``).

The harness (what ``python -m bench`` runs), one module per job:

- ``suite.py``: the benchmark shapes (:class:`~bench.suite.Shape`): the issue-3 suite, the
  real model layers (``REAL_LAYERS``, each with its source), smoke and GPU variants.
- ``candidate.py``: what every measured variant provides (:class:`~bench.candidate.Candidate`,
  :class:`~bench.candidate.Built`) and the shared problem arrays.
- ``ours.py``: every jlocalconv implementation and "auto", found at run time through
  ``jlocalconv.implementations.names()``.
- ``peers/``: one module per peer (``jax.lax``, flax, tf_keras, PyTorch); each is used only
  when importable and otherwise skipped with a note.
- ``jax_measure.py``, ``timing.py``: compile time, XLA temp memory and median wall time.
- ``measure.py``: one candidate on one problem, built, checked and timed: the row reports read.
- ``roofline.py``: the machine's measured matmul peak and STREAM bandwidth, each problem's bound.
- ``summary.py``: the ratios the performance issues set targets for.
- ``report.py``, ``chart.py``: markdown, JSON and PNG under ``bench/results/``.
- ``sweep.py``, ``sweep_report.py``: ``python -m bench --sweep``, random problems the cost
  model was not tuned on (regret of "auto", speed-up over lax, temp memory).
- ``sharded_hook.py``: runs ``bench/studies/sharded.py`` in a subprocess with 8 simulated devices.
- ``progress.py``: the progress bar.
- ``run.py``: the command line.
- ``accelerator.py`` (``python -m bench --accelerator-check``, ``gpu_check.sh``): the check
  for a lent GPU/TPU: ``accel_check.py`` (every implementation against
  ``numpy_reference.py``, a float64 NumPy reference with its vjp), timing on GPU-sized
  shapes, ``accel_report.py``.

``studies/``: one-off measurements, each its own command (see ``bench/studies/__init__.py``):
the batched-dot ceiling, the sharded benchmark, the TPU-pod training script.
"""
