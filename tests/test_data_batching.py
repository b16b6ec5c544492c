"""Token-budget batches: budget, padding, determinism, resume, batch layout; no torch."""

from __future__ import annotations

import gc
import itertools
import subprocess
import sys
import threading

import numpy as np
import pytest

from mt_tune.config import DataConfig
from mt_tune.data import Batch, BatchIterator, prepare
from mt_tune.data.batching import TrainBatches


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
    slots = sum(b.src.size + b.tgt_out.size for b in epoch)
    real = sum(b.n_src_tokens + b.n_tgt_tokens for b in epoch)
    assert 1 - real / slots == pytest.approx(it.padding_ratio)


def test_batch_layout(sample):
    it = BatchIterator(sample.train, 256, seed=0, shuffle=False)
    b = next(iter(it))
    assert isinstance(b, Batch) and isinstance(b.src, np.ndarray) and b.src.dtype == np.int64
    i = int(it.batches_of_epoch(0)[0][0])
    src, tgt = sample.train.pair(i)
    n, m = len(src), len(tgt)
    assert b.src[0, :n].tolist() == src.tolist() and b.src[0, n] == 3 and (b.src[0, n + 1:] == 0).all()
    assert b.tgt_in[0, 0] == 2 and b.tgt_in[0, 1:m + 1].tolist() == tgt.tolist()
    assert b.tgt_out[0, :m].tolist() == tgt.tolist() and b.tgt_out[0, m] == 3
    assert b.n_src_tokens == int((b.src != 0).sum()) and b.n_tgt_tokens == int((b.tgt_out != 0).sum())


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


def reference_batch(shard, indices, pad_multiple=1):
    """The batch of `indices` built pair by pair, the plain way."""
    pairs = [shard.pair(int(i)) for i in indices]
    up = lambda n: -(-n // pad_multiple) * pad_multiple  # noqa: E731
    s_len, t_len = up(max(len(s) for s, _ in pairs) + 1), up(max(len(t) for _, t in pairs) + 1)
    src = np.zeros((len(pairs), s_len), dtype=np.int64)
    tgt_in, tgt_out = np.zeros((len(pairs), t_len), dtype=np.int64), np.zeros((len(pairs), t_len), dtype=np.int64)
    for row, (s, t) in enumerate(pairs):
        src[row, :len(s) + 1] = [*s.tolist(), 3]
        tgt_in[row, :len(t) + 1] = [2, *t.tolist()]
        tgt_out[row, :len(t) + 1] = [*t.tolist(), 3]
    return src, tgt_in, tgt_out


@pytest.mark.parametrize("pad_multiple", [1, 8])
def test_batches_equal_those_built_pair_by_pair(sample, pad_multiple):
    it = BatchIterator(sample.train, 1024, seed=5, pad_multiple=pad_multiple)
    for indices in it.batches_of_epoch(0):
        b = it.make_batch(indices)
        src, tgt_in, tgt_out = reference_batch(sample.train, indices, pad_multiple)
        assert b.src.dtype == src.dtype and np.array_equal(b.src, src)
        assert np.array_equal(b.tgt_in, tgt_in) and np.array_equal(b.tgt_out, tgt_out)
        counted = (int((src != 0).sum()), int((tgt_out != 0).sum()))
        assert (b.n_src_tokens, b.n_tgt_tokens) == it.tokens(indices) == counted


def test_padding_to_a_multiple_of_8_keeps_the_budget_and_repeats_shapes(sample):
    plain = BatchIterator(sample.train, 640, seed=1)
    bucketed = BatchIterator(sample.train, 640, seed=1, pad_multiple=8)
    epoch = list(itertools.islice(iter(bucketed), len(bucketed)))
    assert all(b.src.shape[1] % 8 == 0 and b.tgt_in.shape[1] % 8 == 0 for b in epoch)
    assert all(b.size * max(b.src.shape[1], b.tgt_in.shape[1]) <= 640 for b in epoch)
    assert sum(b.size for b in epoch) == len(sample.train) - bucketed.n_skipped
    lengths = {(b.src.shape[1], b.tgt_in.shape[1]) for b in epoch}
    plain_lengths = {(b.src.shape[1], b.tgt_in.shape[1]) for b in itertools.islice(iter(plain), len(plain))}
    assert len(lengths) * 4 < len(plain_lengths)
    assert 0.15 < bucketed.padding_ratio < 0.35 and plain.padding_ratio < 0.15
    with pytest.raises(ValueError, match="pad_multiple"):
        BatchIterator(sample.train, 640, pad_multiple=0)


# --- TrainBatches: one process's share, built ahead -----------------------------------------


class CountingIterator(BatchIterator):
    """A BatchIterator that records the batches it builds."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.built = []

    def make_batch(self, indices):
        self.built.append(indices.tolist())
        return super().make_batch(indices)


@pytest.mark.parametrize("rank", [0, 1])
def test_each_process_builds_only_its_share_of_each_update(sample, rank):
    accum, world, updates = 2, 2, 5
    everything = list(itertools.islice(iter(BatchIterator(sample.train, 1024, seed=4)), updates * accum * world))
    it = CountingIterator(sample.train, 1024, seed=4)
    stream = TrainBatches(it, accum, rank=rank, world_size=world)
    try:
        for u in range(updates):
            update = everything[u * accum * world:(u + 1) * accum * world]
            mine = [next(stream) for _ in range(accum)]
            assert batch_ids(mine) == batch_ids(update[rank::world])  # the split DDP always used
            totals = (sum(b.n_src_tokens for b in update), sum(b.n_tgt_tokens for b in update))
            assert all(b.update_tokens == totals for b in mine)
            assert stream.state_dict()["position"] == (u + 1) * accum * world
    finally:
        stream.close()
    plan = it.batches_of_epoch(0)
    # built ahead of what was taken, but never another process's batch
    assert len(it.built) >= updates * accum
    positions = [next(i for i, p in enumerate(plan) if p.tolist() == b) for b in it.built]
    assert all(p % world == rank for p in positions)


def test_the_saved_position_is_that_of_the_batches_handed_out(sample):
    expected = batch_ids(itertools.islice(iter(BatchIterator(sample.train, 1024, seed=7)), 60))
    it = BatchIterator(sample.train, 1024, seed=7)
    stream = TrainBatches(it, ahead=8)
    head = batch_ids(itertools.islice(stream, 25))
    state = stream.state_dict()
    assert (state["epoch"], state["position"]) == (0, 25) and state["seed"] == 7
    stream.close()
    assert it.state_dict() == state  # rewound past the batches built ahead
    resumed = TrainBatches(BatchIterator(sample.train, 1024, seed=0))
    resumed.load_state_dict(dict(state))
    assert head + batch_ids(itertools.islice(resumed, 35)) == expected
    assert head + batch_ids(itertools.islice(stream, 35)) == expected  # a closed stream starts again
    resumed.close()
    stream.close()


def test_the_thread_ends_on_close_and_when_the_stream_is_dropped(sample):
    before = threading.active_count()
    stream = TrainBatches(BatchIterator(sample.train, 1024, seed=1))
    assert threading.active_count() == before  # started by the first batch asked for
    next(stream)
    assert threading.active_count() == before + 1
    stream.close()
    assert threading.active_count() == before
    next(stream)
    thread = next(t for t in threading.enumerate() if t.name == "mt-tune-batches")
    del stream
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive()


class FailingIterator(BatchIterator):
    def make_batch(self, indices):
        if self._position > 3:
            raise RuntimeError("bad shard")
        return super().make_batch(indices)


def test_an_error_in_the_thread_is_raised_to_the_consumer(sample):
    before = threading.active_count()
    stream = TrainBatches(FailingIterator(sample.train, 1024, seed=1), ahead=1)
    with pytest.raises(RuntimeError, match="bad shard"):
        for _ in range(10):
            next(stream)
    assert threading.active_count() == before
    with pytest.raises(ValueError, match="shuffle"):
        TrainBatches(BatchIterator(sample.train, 1024, shuffle=False))


def test_convert_runs_on_each_batch_in_the_thread(sample):
    seen = []

    def convert(batch):
        seen.append(threading.current_thread().name)
        return ("converted", batch.update_tokens)

    stream = TrainBatches(BatchIterator(sample.train, 1024, seed=1), convert=convert)
    try:
        first = next(stream)
    finally:
        stream.close()
    assert first[0] == "converted" and first[1] is not None
    assert seen and set(seen) == {"mt-tune-batches"}


def test_an_endless_stream_without_a_fitting_pair_is_an_error(sample):
    stream = TrainBatches(BatchIterator(sample.train, 2, seed=1))  # no pair is 1 token long
    with pytest.raises(ValueError, match="fits in max_tokens=2"):
        next(stream)


def test_the_data_pipeline_does_not_import_torch():
    """Data preparation and batching run without torch (the trainer makes the tensors), so
    the commands that only read data or configs stay light."""
    def torch_after(statement: str) -> bool:
        code = f"import sys; {statement}; print('torch' in sys.modules)"
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True).stdout.strip() == "True"

    assert not torch_after("import mt_tune.data, mt_tune.data.batching, mt_tune.data.prepare, mt_tune.data.shards, "
                           "mt_tune.data.scan, mt_tune.data.encode, mt_tune.data.pool")
