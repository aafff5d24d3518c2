"""A progress bar: tqdm when installed, otherwise one line per step on stderr."""

from __future__ import annotations

import sys


class _Plain:
    """The fallback bar: ``[i/total] description`` lines."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n = total, desc, 0

    def set_postfix_str(self, text: str) -> None:
        print(f"[{self.n + 1}/{self.total}] {self.desc}: {text}", file=sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n

    def write(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def bar(total: int, desc: str):
    """A bar with ``update``, ``set_postfix_str``, ``write`` and ``close``."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Plain(total, desc)
    return tqdm(total=total, desc=desc, unit="run", file=sys.stderr, dynamic_ncols=True)
