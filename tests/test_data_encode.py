"""Encoding pairs into shards: the ids are the tokenizer's, in order, in parallel as in one process."""

import io
import os

import numpy as np
import pytest
import sentencepiece as spm

from mt_tune.data import encode
from mt_tune.data.encode import encode_file, encode_pairs
from mt_tune.data.progress import Progress
from mt_tune.data.shards import Shard, file_sizes, ids_dtype
from mt_tune.data.vocab import Tokenizer

PAIRS = [(f"我是学生{i}。", f"I am student number {i}.") for i in range(300)]


@pytest.fixture(scope="module")
def tok():
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter([s for p in PAIRS for s in p]), model_writer=proto,
                                   vocab_size=60, pad_id=0, unk_id=1, bos_id=2, eos_id=3, minloglevel=2)
    return Tokenizer.from_bytes(proto.getvalue())


def write_meta(directory):
    import json

    from mt_tune.data.shards import META

    (directory / META).write_text(json.dumps({"dtype": "uint16", "stats": {}, "files": file_sizes(directory)}))


def test_encode_pairs_writes_the_tokenizers_ids(tmp_path, tok):
    encode_pairs(PAIRS[:5], tok, tok, tmp_path, "valid", ids_dtype(tok.vocab_size))
    write_meta(tmp_path)
    shard = Shard(tmp_path, "valid")
    assert len(shard) == 5
    for i, (src, tgt) in enumerate(PAIRS[:5]):
        assert shard.pair(i)[0].tolist() == tok.encode([src])[0]
        assert shard.pair(i)[1].tolist() == tok.encode([tgt])[0]


def test_encode_file_in_parallel_gives_what_one_process_gives(tmp_path, tok, monkeypatch):
    rows = tmp_path / "train.tsv"
    rows.write_text("".join(f"{s}\t{t}\n" for s, t in PAIRS), encoding="utf-8")
    dtype = ids_dtype(tok.vocab_size)
    shards = []
    for name, cores in (("one", 1), ("many", 2)):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        monkeypatch.setattr(encode, "ENCODE_CHUNK", 64)  # 5 chunks
        out = tmp_path / name
        out.mkdir()
        with Progress(False) as bar:
            stats = encode_file(rows, len(PAIRS), tok, tok, out, dtype, bar)
        write_meta(out)
        shards.append(Shard(out, "train"))
        assert stats == encode_pairs(PAIRS, tok, tok, tmp_path / name, "check", dtype)
    one, many = shards
    assert len(one) == len(many) == len(PAIRS)
    assert all(np.array_equal(one.pair(i)[0], many.pair(i)[0]) for i in range(len(PAIRS)))
