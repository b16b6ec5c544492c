"""Process pools for the passes of data preparation that run in parallel (scan and encode)."""

from __future__ import annotations

import gc
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator


def chunk_pool(n_tasks: int):
    """A process pool when there is more than one chunk and more than one core, else None."""
    workers = min(os.cpu_count() or 1, n_tasks)
    return new_pool(workers) if workers > 1 else _NoPool()


def new_pool(workers: int, **kw):
    # fork: the workers inherit the imported modules instead of importing them again
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    # Frozen objects are skipped by the workers' garbage collector, which would otherwise
    # touch, and so copy, every page of the parent's heap (torch alone is ~100 MB a worker).
    gc.freeze()
    try:
        return multiprocessing.get_context(method).Pool(workers, **kw)
    finally:
        gc.unfreeze()


def ordered_map(pool, fn, items: Iterable) -> Iterator:
    """pool.imap with a bound on the tasks in flight. (imap reads its whole input at once:
    with the encoder's chunks of text, the corpus would end up in memory.)"""
    window = 2 * pool._processes  # type: ignore[attr-defined]
    pending: deque = deque()
    for item in items:
        pending.append(pool.apply_async(fn, (item,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


class _NoPool:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
