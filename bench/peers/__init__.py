"""Peer implementations, one module each; a peer whose framework is missing is skipped.

Every module exposes ``candidates(options) -> list[Candidate]`` and raises
:class:`Unavailable` (with the reason) when its framework cannot be imported. Heavy
frameworks are imported inside ``candidates``, never at module import.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from types import ModuleType

from bench.candidate import Candidate

_MODULES = ("lax_local", "flax_local", "keras_local", "torch_unfold")


class Unavailable(Exception):
    """A peer's framework is not importable here."""


@dataclasses.dataclass(frozen=True)
class Options:
    """Settings peers need.

    Attributes:
      threads: CPU threads for TF and torch (XLA uses every core by default).
      dense_budget_bytes: tf_keras ``LocallyConnected`` implementation 2 materialises a
        dense ``(inputs, outputs)`` kernel; shapes whose dense kernel exceeds this are
        skipped (it ran out of memory at 3.7 GB on the 24 GiB machine).
      sparse_budget_nnz: implementation 3 enumerates its nonzeros in a Python loop when the
        layer is built (about 4 s per million); larger shapes are skipped.
      loop_budget_positions: ``backend.local_conv`` (and implementation 1) adds one slice
        per output position to the graph; tracing fwd+bwd at 3600 positions took minutes,
        so shapes with more positions are skipped.
    """

    threads: int = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    dense_budget_bytes: int = 1 << 30
    sparse_budget_nnz: int = 4_000_000
    loop_budget_positions: int = 2000


def load(options: Options, notes: list[str]) -> list[Candidate]:
    """The candidates of every importable peer; a note in ``notes`` for each missing one."""
    found: list[Candidate] = []
    for name in _MODULES:
        module = importlib.import_module(f"bench.peers.{name}")
        try:
            found += module.candidates(options)
        except Unavailable as e:
            notes.append(f"peer {name} skipped: {e}")
    return found


def require(module: str) -> ModuleType:
    """Imports ``module`` or raises :class:`Unavailable` saying why."""
    try:
        return importlib.import_module(module)
    except Exception as e:  # a broken install is as unavailable as a missing one
        raise Unavailable(f"cannot import {module} ({type(e).__name__}: {e})") from None
