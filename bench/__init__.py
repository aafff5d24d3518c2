"""Benchmarks of jlocalconv against every peer: ``python -m bench`` (or ``python bench/run.py``).

The file list is the architecture:

- ``suite.py``: the benchmark shapes (:class:`~bench.suite.Shape`) and the default, smoke and
  GPU suites.
- ``candidate.py``: what every measured variant provides (:class:`~bench.candidate.Candidate`,
  :class:`~bench.candidate.Built`) and the shared problem arrays.
- ``ours.py``: every jlocalconv implementation and "auto", found at run time through
  ``jlocalconv.implementations.names()``.
- ``peers/``: one module per peer (``jax.lax``, flax, tf_keras, PyTorch); each is used only
  when importable and otherwise skipped with a note.
- ``jax_measure.py``, ``timing.py``: compile time, XLA temp memory and median wall time.
- ``roofline.py``: the machine's measured peak and bandwidth and each problem's bound.
- ``summary.py``: the ratios the performance issue sets targets for.
- ``report.py``, ``chart.py``: markdown, JSON and PNG under ``bench/results/``.
- ``sharded_hook.py``: runs ``bench/sharded.py`` in a subprocess with 8 simulated devices.
- ``run.py``: the command line.
- ``accelerator.py`` (``python -m bench --accelerator-check``, ``gpu_check.sh``): the check
  for a lent GPU/TPU: ``accel_check.py`` (every implementation against
  ``numpy_reference.py``, a float64 NumPy reference with its vjp), timing on GPU-sized
  shapes, ``accel_report.py``.
"""
