"""Hash-ordered validation set, nested scales and duplicate detection."""

from __future__ import annotations

import numpy as np
import pytest

from mt_tune.data import splits
from mt_tune.data.splits import count_distinct, kth_distinct, pair_hash, plan_splits, repeated_values
from mt_tune.errors import DataError


def test_pair_hash_is_stable_and_sided():
    assert pair_hash("你好", "Hello") == pair_hash("你好", "Hello")
    assert pair_hash("你好", "Hello") != pair_hash("Hello", "你好")
    assert pair_hash("a", "bc") != pair_hash("ab", "c")
    assert 0 <= pair_hash("x", "y") < 2**64


def test_distinct_helpers_across_blocks(monkeypatch):
    monkeypatch.setattr(splits, "_BLOCK", 4)  # make the block edges fall inside runs of equal values
    values = np.array([1, 1, 1, 2, 3, 3, 5, 5, 5, 5, 8, 9, 9], dtype=np.uint64)
    assert count_distinct(values) == 6
    assert [kth_distinct(values, k) for k in range(1, 8)] == [1, 2, 3, 5, 8, 9, None]
    assert repeated_values(values) == {1, 3, 5, 9}


def hashes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**63, size=n, dtype=np.uint64)


def test_scales_nest_and_validation_stays_fixed():
    h = hashes(10_000)
    plans = {scale: plan_splits(h.copy(), valid_size=500, scale=scale, vocab_sample=2000, source="c")
             for scale in (1000, 5000, None)}
    assert len({p.valid_max for p in plans.values()}) == 1
    assert plans[1000].train_max < plans[5000].train_max < plans[None].train_max
    assert [p.n_train for p in plans.values()] == [1000, 5000, 9500]
    assert [p.n_vocab for p in plans.values()] == [1000, 2000, 2000]
    assert plans[5000].vocab_max == plans[None].vocab_max  # same vocab sample above vocab_sample pairs
    routed = [plans[1000].route(int(x)) for x in h]
    assert routed.count("valid") == 500 and routed.count("train") == 1000 and routed.count(None) == 8500


def test_duplicates_count_once():
    h = np.concatenate([hashes(1000), hashes(1000)[:100]])
    plan = plan_splits(h, valid_size=100, scale=None, vocab_sample=10**6, source="c")
    assert plan.n_train == 900 and len(plan.duplicates) == 100
    copies = plan_splits(np.concatenate([hashes(1000), hashes(1000)[:100]]), valid_size=100, scale=None,
                         vocab_sample=10**6, source="c", dedup=False)
    assert copies.n_valid + copies.n_train == 1100 and not copies.duplicates


def test_too_small_corpus_errors():
    with pytest.raises(DataError, match=r"c: scale 1k asks for 1000 training pairs, but the corpus has only 500 "
                                        r"usable pairs .*use data.scale <= 500"):
        plan_splits(hashes(1000), valid_size=500, scale=1000, vocab_sample=100, source="c")
    with pytest.raises(DataError, match="only 300 usable pairs"):
        plan_splits(hashes(300), valid_size=500, scale=None, vocab_sample=100, source="c")
