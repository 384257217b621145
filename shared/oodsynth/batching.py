"""Consecutive blocks of a sequence: the one batching helper (jobs, GPU batches, distance blocks)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence


def slices(n: int, size: int) -> Iterator[slice]:
    """``slice(0, size)``, ``slice(size, 2 size)``, ... covering ``range(n)`` (the last may be shorter)."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    """Consecutive slices of ``size`` items (the last may be shorter)."""
    for block in slices(len(items), size):
        yield items[block]
