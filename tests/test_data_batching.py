"""Token-budget batches: budget, padding, determinism, resume, batch layout."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mt_tune.config import DataConfig
from mt_tune.data import Batch, BatchIterator, prepare


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    cfg = DataConfig(format="sample", vocab_size=4000, cache_dir=str(tmp_path_factory.mktemp("cache")))
    cfg.validate("data")
    return prepare(cfg)


def batch_ids(batches):
    return [(b.src.tolist(), b.tgt_out.tolist()) for b in batches]


@pytest.mark.parametrize("max_tokens", [64, 1024, 4096])
def test_no_batch_exceeds_max_tokens_and_every_pair_comes_once(sample, max_tokens):
    it = BatchIterator(sample.train, max_tokens, seed=3)
    epoch = list(itertools.islice(iter(it), len(it)))
    assert all(b.size * max(b.src.shape[1], b.tgt_in.shape[1]) <= max_tokens for b in epoch)
    assert sum(b.size for b in epoch) == len(sample.train) - it.n_skipped
    assert it.epoch == 0 and it.state_dict()["position"] == len(it)


def test_padding_below_15_percent_on_the_sample(sample):
    it = BatchIterator(sample.train, 4096, seed=1)
    assert it.padding_ratio < 0.15
    epoch = list(itertools.islice(iter(it), len(it)))
    slots = sum(b.src.numel() + b.tgt_out.numel() for b in epoch)
    real = sum(b.n_src_tokens + b.n_tgt_tokens for b in epoch)
    assert 1 - real / slots == pytest.approx(it.padding_ratio)


def test_batch_layout(sample):
    it = BatchIterator(sample.train, 256, seed=0, shuffle=False)
    b = next(iter(it))
    assert isinstance(b, Batch) and b.src.dtype == torch.long
    i = int(it.batches_of_epoch(0)[0][0])
    src, tgt = sample.train.pair(i)
    n, m = len(src), len(tgt)
    assert b.src[0, :n].tolist() == src.tolist() and b.src[0, n] == 3 and (b.src[0, n + 1:] == 0).all()
    assert b.tgt_in[0, 0] == 2 and b.tgt_in[0, 1:m + 1].tolist() == tgt.tolist()
    assert b.tgt_out[0, :m].tolist() == tgt.tolist() and b.tgt_out[0, m] == 3
    assert b.n_src_tokens == int((b.src != 0).sum()) and b.n_tgt_tokens == int((b.tgt_out != 0).sum())
    assert b.to("cpu").src.data_ptr() == b.src.data_ptr()


def test_validation_pass_is_deterministic_and_finite(sample):
    it = BatchIterator(sample.valid, 1024, seed=0, shuffle=False)
    first, second = batch_ids(it), batch_ids(it)
    assert first == second and sum(len(s) for s, _ in first) == len(sample.valid)


def test_epochs_reshuffle_by_seed(sample):
    a = BatchIterator(sample.train, 2048, seed=1)
    b = BatchIterator(sample.train, 2048, seed=1)
    c = BatchIterator(sample.train, 2048, seed=2)
    n = len(a)
    ea = batch_ids(itertools.islice(iter(a), 2 * n))
    assert ea == batch_ids(itertools.islice(iter(b), 2 * n))
    assert ea[:n] != ea[n:]  # the second epoch is another order
    assert ea[:n] != batch_ids(itertools.islice(iter(c), n))
    assert a.state_dict() == {"epoch": 1, "position": n, "seed": 1, "max_tokens": 2048, "pairs": len(sample.train)}


def test_resume_gives_identical_batches(sample):
    full = BatchIterator(sample.train, 1024, seed=7)
    expected = batch_ids(itertools.islice(iter(full), 60))  # crosses an epoch boundary
    first = BatchIterator(sample.train, 1024, seed=7)
    stream = iter(first)
    head = batch_ids(itertools.islice(stream, 25))
    state = first.state_dict()
    resumed = BatchIterator(sample.train, 1024, seed=0)
    resumed.load_state_dict(dict(state))
    assert head + batch_ids(itertools.islice(iter(resumed), 35)) == expected
    with pytest.raises(ValueError, match="max_tokens"):
        BatchIterator(sample.train, 2048, seed=7).load_state_dict(state)


def test_too_long_pairs_are_skipped(sample):
    it = BatchIterator(sample.train, 12, seed=0)
    longest = np.maximum(sample.train.src_lens, sample.train.tgt_lens) + 1
    assert it.n_skipped == int((longest > 12).sum()) > 0
    assert all(b.size * max(b.src.shape[1], b.tgt_in.shape[1]) <= 12 for b in itertools.islice(iter(it), len(it)))
