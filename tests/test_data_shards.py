"""Memmap shards: write/read roundtrip, id width, integrity check, atomic directories."""

from __future__ import annotations

import numpy as np
import pytest

from mt_tune.data.prepare import _write_meta
from mt_tune.data.shards import (
    EncodedSide, Shard, ShardWriter, atomic_dir, ids_dtype, shard_files_ok,
)


def write_shard(directory, pairs, vocab_size=1000):
    dtype = ids_dtype(vocab_size)
    writer = ShardWriter(directory, "train", dtype)
    half = len(pairs) // 2
    for part in (pairs[:half], pairs[half:]):  # two chunks: offsets must continue across them
        writer.add(EncodedSide.from_lists([s for s, _ in part], dtype), EncodedSide.from_lists([t for _, t in part], dtype))
    stats = writer.close()
    _write_meta(directory, {"dtype": dtype.name})
    return stats


def test_roundtrip(tmp_path):
    pairs = [([5, 6, 7], [8, 9]), ([1, 10], [11, 12, 13, 14]), ([], [4])]
    stats = write_shard(tmp_path, pairs)
    shard = Shard(tmp_path, "train")
    assert len(shard) == 3 and shard.dtype == np.uint16
    assert shard.src_lens.tolist() == [3, 2, 0] and shard.tgt_lens.tolist() == [2, 4, 1]
    for i, (s, t) in enumerate(pairs):
        got_s, got_t = shard.pair(i)
        assert got_s.tolist() == s and got_t.tolist() == t
    assert stats["pairs"] == 3 and stats["src_tokens"] == 5 and stats["src_unk_rate"] == pytest.approx(1 / 5)
    assert shard_files_ok(tmp_path)


def test_lengths_are_read_in_blocks(tmp_path):
    from mt_tune.data.shards import _lengths

    pairs = [([7] * (i % 5), [8] * (i % 3 + 1)) for i in range(23)]
    write_shard(tmp_path, pairs)
    src, tgt = _lengths(tmp_path / "train.idx", block_rows=4)
    assert src.tolist() == [i % 5 for i in range(23)] and tgt.tolist() == [i % 3 + 1 for i in range(23)]


def test_wide_vocab_uses_uint32(tmp_path):
    assert ids_dtype(65535) == np.uint16 and ids_dtype(65536) == np.uint32
    write_shard(tmp_path, [([70000, 3], [65536])], vocab_size=80000)
    shard = Shard(tmp_path, "train")
    assert shard.dtype == np.uint32 and shard.pair(0)[0].tolist() == [70000, 3]


def test_truncated_file_is_detected(tmp_path):
    write_shard(tmp_path, [([5, 6], [7])] * 10)
    assert shard_files_ok(tmp_path)
    with open(tmp_path / "train.src.bin", "r+b") as f:
        f.truncate(4)
    assert not shard_files_ok(tmp_path)
    assert not shard_files_ok(tmp_path / "missing")


def test_atomic_dir_renames_only_on_success(tmp_path):
    final = tmp_path / "shards-x"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "a").write_text("half")
            raise RuntimeError("crash")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(final) as tmp:
        (tmp / "a").write_text("whole")
    assert (final / "a").read_text() == "whole"
    # The caller holds the build lock and rebuilds only what is damaged: an existing one is replaced.
    (final / "b").write_text("left over")
    with atomic_dir(final) as tmp:
        (tmp / "a").write_text("second")
    assert sorted(p.name for p in final.iterdir()) == ["a"] and (final / "a").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["shards-x"]
