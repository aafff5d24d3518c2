"""Environment variables that change what the benchmarks measure, written into each report.

A report's command must reproduce its figures, and some settings live outside the
arguments: XLA's flags, and glibc's malloc tunables. The latter matter on CPU because
XLA allocates every output afresh: a kernel-sized gradient (251 MB for DeepFace L4) is a
new ``mmap`` per call whose 4 KiB pages the kernel faults in and zeroes one by one, which
took most of the kernel gradient's time here (L4: 120 ms, of it 150 ms of CPU in the
kernel across both cores). ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` has glibc ask for
transparent huge pages on such mappings (the kernel's ``madvise`` mode, Debian's default):
512 times fewer faults, the same gradient in 44 ms.
"""

from __future__ import annotations

import os
import shlex

# Read at process start-up by XLA or glibc; tunables set later have no effect.
PERFORMANCE_VARIABLES = (
    "XLA_FLAGS",
    "GLIBC_TUNABLES",
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
)


def settings() -> dict[str, str]:
    """The :data:`PERFORMANCE_VARIABLES` set (non-empty) in this process, in that order.

    >>> set(settings()) <= set(PERFORMANCE_VARIABLES)
    True
    """
    return {name: os.environ[name] for name in PERFORMANCE_VARIABLES if os.environ.get(name)}


def command(arguments: str, values: dict[str, str] | None = None) -> str:
    """``python -m bench ARGUMENTS`` with the performance ``values`` (default: this
    process's :func:`settings`) prefixed as a shell would take them.

    >>> command("--sweep --seed 3", {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
    'GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python -m bench --sweep --seed 3'
    >>> command("--smoke", {"XLA_FLAGS": "--a=1 --b=2"})
    "XLA_FLAGS='--a=1 --b=2' python -m bench --smoke"
    """
    values = settings() if values is None else values
    prefix = [f"{name}={shlex.quote(value)}" for name, value in values.items()]
    return " ".join([*prefix, "python -m bench", arguments]).strip()
