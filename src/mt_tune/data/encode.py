"""Pass 5 of data preparation: tokenize pairs into shards (in parallel for a large training set)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mt_tune.data.pool import new_pool, ordered_map
from mt_tune.data.progress import Progress
from mt_tune.data.shards import EncodedSide, ShardWriter, ids_dtype
from mt_tune.data.vocab import Tokenizer

ENCODE_CHUNK = 20_000  # pairs per encoding task
_worker_toks: tuple[Tokenizer, Tokenizer] | None = None


def _init_encoder(src_proto: bytes, tgt_proto: bytes) -> None:
    global _worker_toks
    src = Tokenizer.from_bytes(src_proto)
    _worker_toks = (src, src if tgt_proto == src_proto else Tokenizer.from_bytes(tgt_proto))


def _encode_rows(rows: list[bytes]) -> tuple[EncodedSide, EncodedSide]:
    """Encode 'src<TAB>tgt' rows with the worker's tokenizers."""
    assert _worker_toks is not None
    src_tok, tgt_tok = _worker_toks
    srcs, tgts = [], []
    for row in rows:
        src, tgt = row.decode("utf-8").rstrip("\n").split("\t")
        srcs.append(src)
        tgts.append(tgt)
    dtype = ids_dtype(max(src_tok.vocab_size, tgt_tok.vocab_size))
    return (EncodedSide.from_lists(src_tok.encode(srcs), dtype), EncodedSide.from_lists(tgt_tok.encode(tgts), dtype))


def _row_chunks(path: Path, size: int) -> Iterator[list[bytes]]:
    with open(path, "rb") as f:
        rows: list[bytes] = []
        for row in f:
            rows.append(row)
            if len(rows) == size:
                yield rows
                rows = []
        if rows:
            yield rows


def encode_file(path: Path, n_pairs: int, src_tok: Tokenizer, tgt_tok: Tokenizer, out_dir: Path,
                 dtype: np.dtype, bar: Progress) -> dict:
    """Encode the training pairs into the train shard, in parallel when there are many."""
    bar.stage("encoding", n_pairs)
    writer = ShardWriter(out_dir, "train", dtype)
    protos = (src_tok.model_bytes(), tgt_tok.model_bytes())
    workers = min(os.cpu_count() or 1, -(-n_pairs // ENCODE_CHUNK))
    pool = new_pool(workers, initializer=_init_encoder, initargs=protos) if workers > 1 else None
    try:
        if pool is None:
            _init_encoder(*protos)
            results: Iterator = map(_encode_rows, _row_chunks(path, ENCODE_CHUNK))
        else:
            results = ordered_map(pool, _encode_rows, _row_chunks(path, ENCODE_CHUNK))
        for src, tgt in results:
            writer.add(src, tgt)
            bar.advance(len(src.lens))
    except BaseException:
        writer.abort()
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return writer.close()


def encode_pairs(pairs: list[tuple[str, str]], src_tok: Tokenizer, tgt_tok: Tokenizer, out_dir: Path,
                  split: str, dtype: np.dtype) -> dict:
    writer = ShardWriter(out_dir, split, dtype)
    writer.add(EncodedSide.from_lists(src_tok.encode([s for s, _ in pairs]), dtype),
               EncodedSide.from_lists(tgt_tok.encode([t for _, t in pairs]), dtype))
    return writer.close()
