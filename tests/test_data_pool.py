"""The process pools of data preparation: results in input order, a bound on what is in flight."""

import os

from mt_tune.data.pool import chunk_pool, new_pool, ordered_map


def _square(x: int) -> int:
    return x * x


def test_ordered_map_keeps_input_order_and_reads_its_input_lazily():
    read = []

    def items():
        for i in range(20):
            read.append(i)
            yield i

    with new_pool(2) as pool:
        results = ordered_map(pool, _square, items())
        first = next(results)
        assert first == 0 and len(read) <= 4  # two tasks per worker in flight, no more
        assert [first, *results] == [i * i for i in range(20)]


def test_chunk_pool_runs_one_chunk_in_this_process(monkeypatch):
    with chunk_pool(1) as pool:
        assert pool is None
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    with chunk_pool(8) as pool:
        assert pool is None
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with chunk_pool(8) as pool:
        assert list(ordered_map(pool, _square, [3, 4])) == [9, 16]
