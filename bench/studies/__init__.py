"""One-off studies, each its own command; not part of ``python -m bench``'s suite.

- ``batched_dot.py`` (``python -m bench.studies.batched_dot``): the batched-dot ceiling of the
  contraction (every operand layout, a scan of matmuls, tiles) next to a 2048^3 matmul.
- ``sharded.py`` (``python -m bench.studies.sharded``): sharded local conv on 8 simulated CPU
  devices; ``python -m bench`` runs it through ``bench/sharded_hook.py``.
- ``tpu_pod.py`` (``python -m bench.studies.tpu_pod``): a training loop for a TPU pod slice
  (``--dry-run`` on one device).
"""
