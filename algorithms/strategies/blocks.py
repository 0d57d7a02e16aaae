"""Walking large arrays in cache-sized blocks.

NumPy expressions over whole layers make one pass through memory per operation, and each
temporary of a 10M-parameter layer is a fresh 80 MB allocation. Doing the same arithmetic on
blocks of ``BLOCK`` elements keeps the working set in cache and the scratch space small.
"""
from __future__ import annotations

from collections.abc import Iterator

BLOCK = 1 << 16


def spans(size: int, block: int = BLOCK) -> Iterator[slice]:
    """Consecutive slices of at most ``block`` elements covering ``range(size)``."""
    for start in range(0, size, block):
        yield slice(start, min(start + block, size))
