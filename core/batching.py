"""Chunking: how many rows go to the backend at once.

Every method feeds its rows (the samples, SmoothGrad's noisy copies, IG's path points) to the backend
in chunks of at most ``batch_size`` rows. When ``batch_size`` is None the chunk size comes from a memory
budget, so ``smoothgrad(..., n_samples=500)`` on a large batch never materialises all 500 copies::

    import gradsal.core as gs
    gs.set_memory_budget(2 * 2**30)          # from now on: 2 GiB
    with gs.memory_budget(64 * 2**20):       # temporarily: 64 MiB
        gs.smoothgrad(model, x, n_samples=500)

``default rows = max(1, budget // (bytes per input row * ROW_MEMORY_FACTOR))``: the factor allows for the
copies, cotangents, gradients and (roughly) the activations a backward pass keeps per input byte.

A backend can also split the chunks it receives to fit its own device: ``TorchBackend(model,
batch_size="auto")`` measures the memory of two probe steps and :func:`rows_within_budget` turns them
into the largest chunk within a budget (this module only does the arithmetic; it imports no framework).

Stacked copies are laid out copy-major (copy 0 of every sample, then copy 1, ...), and results are
reduced in that fixed order, so the chunk size never changes a result, not even in the last bit.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterator
from typing import NamedTuple

from .errors import InputError, InputTypeError

DEFAULT_MEMORY_BUDGET = 512 * 2**20
ROW_MEMORY_FACTOR = 32

_memory_budget = DEFAULT_MEMORY_BUDGET


def _check_budget(nbytes: object) -> int:
    if isinstance(nbytes, bool) or not isinstance(nbytes, numbers.Integral):
        raise InputTypeError(f"The memory budget must be an integer number of bytes, got {nbytes!r}.")
    if nbytes < 1:
        raise InputError(f"The memory budget must be at least 1 byte, got {nbytes}: e.g. 512 * 2**20 for 512 MiB.")
    return int(nbytes)


def get_memory_budget() -> int:
    """The memory budget (bytes) that sets the default ``batch_size`` of every method."""
    return _memory_budget


def set_memory_budget(nbytes: int) -> None:
    """Set the memory budget in bytes (default 512 MiB) used when a method gets ``batch_size=None``."""
    global _memory_budget
    _memory_budget = _check_budget(nbytes)


@contextlib.contextmanager
def memory_budget(nbytes: int) -> Iterator[None]:
    """Use ``nbytes`` as the memory budget inside a ``with`` block; the previous budget comes back after."""
    global _memory_budget
    previous = _memory_budget
    _memory_budget = _check_budget(nbytes)
    try:
        yield
    finally:
        _memory_budget = previous


def default_batch_size(row_nbytes: int) -> int:
    """Rows per chunk for input rows of ``row_nbytes`` bytes under the current budget (at least 1)."""
    return max(1, _memory_budget // (max(1, int(row_nbytes)) * ROW_MEMORY_FACTOR))


def resolve_batch_size(batch_size: int | None, row_nbytes: int) -> int:
    """``batch_size`` checked (an int >= 1), or the budget's default when it is None."""
    if batch_size is None:
        return default_batch_size(row_nbytes)
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise InputTypeError(f"batch_size must be a positive integer or None, got {batch_size!r}.")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}: pass a positive number of rows, or "
                         "None to size chunks from the memory budget.")
    return int(batch_size)


def rows_within_budget(
    budget: int,
    measure: Callable[[int], int],
    *,
    probe_rows: tuple[int, int] = (1, 2),
    max_rows: int | None = None,
    min_row_bytes: int = 1,
) -> int:
    """The largest number of rows per step whose peak memory, predicted from two probe steps, fits ``budget``.

    ``measure(k)`` runs one step on ``k`` rows and returns its peak memory in bytes; it is called once for
    each of the two ``probe_rows`` (ascending, at most ``max_rows``). A line ``fixed + per_row * k``
    through the two measurements predicts the rest. The per-row cost is never taken below
    ``min_row_bytes`` (at least 1; a backend passes what a row surely costs, e.g. its input and gradient),
    so probes that barely grow (allocator rounding, noise) cannot promise an unbounded chunk. Returns at
    least 1 (one row that does not fit is still the smallest step there is) and at most ``max_rows``.
    """
    budget = _check_budget(budget)
    small, large = sorted((int(probe_rows[0]), int(probe_rows[1])))
    if small < 1 or small == large:
        raise InputError(f"probe_rows must be two different positive row counts, got {probe_rows!r}.")
    if max_rows is not None:
        max_rows = resolve_batch_size(max_rows, 1)
        if max_rows == 1:
            return 1  # one row per step, whatever it costs
        if large > max_rows:
            small, large = min(small, max_rows - 1), max_rows
    small_bytes = max(0, int(measure(small)))
    large_bytes = max(0, int(measure(large)))
    per_row = max((large_bytes - small_bytes) / (large - small), float(min_row_bytes), 1.0)
    fixed = max(0.0, small_bytes - per_row * small)
    rows = max(1, math.floor((budget - fixed) / per_row))
    return rows if max_rows is None else min(rows, max_rows)


class Segment(NamedTuple):
    """Rows ``start:stop`` of the batch, in stacked copy number ``copy``."""

    copy: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def stacked_chunks(n_samples: int, n_copies: int, batch_size: int) -> Iterator[list[Segment]]:
    """Chunks of at most ``batch_size`` rows over ``n_copies`` stacked copies of ``n_samples`` samples.

    Rows are copy-major; each chunk is a list of segments in row order, so a consumer that handles the
    segments in the order given sees every (copy, sample) pair in the same order for any ``batch_size``.
    """
    total = n_samples * n_copies
    for chunk_start in range(0, total, batch_size):
        chunk_stop = min(total, chunk_start + batch_size)
        segments = []
        row = chunk_start
        while row < chunk_stop:
            copy, start = divmod(row, n_samples)
            stop = min(n_samples, start + chunk_stop - row)
            segments.append(Segment(copy, start, stop))
            row += stop - start
        yield segments


def row_chunks(n_samples: int, batch_size: int) -> Iterator[slice]:
    """Slices of at most ``batch_size`` consecutive rows covering ``n_samples``."""
    for start in range(0, n_samples, batch_size):
        yield slice(start, min(n_samples, start + batch_size))
