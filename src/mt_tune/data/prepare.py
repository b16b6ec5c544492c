"""From corpus files to cached vocabularies and token shards: `prepare` and `check_corpus`.

The passes, each streaming (memory does not grow with the corpus beyond 8 bytes a pair):
  1. scan:   read + clean every line (in parallel over chunks of a large file), write the clean
             pairs with their hash to temporary files, keep only the hashes in memory;
  2. plan:   sort the hashes, pick the validation set, the training scale and the vocab sample;
  3. route:  read the clean pairs back, drop duplicates, write the training pairs of the scale;
  4. vocab:  train sentencepiece on the vocab sample (unless cached);
  5. encode: tokenize the training pairs (in parallel) into memmap shards, written atomically.
Everything lands in `cache_dir/corpus-<content hash>/`: report.json, vocab-<key>/ and
shards-<scale>-<key>/. A second run with the same corpus and settings is a cache hit. Passes
1-5 run under the corpus directory's build lock: of processes preparing one corpus at once,
one builds and the others wait, then read its cache.
"""

from __future__ import annotations

import gc
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mt_tune.config import DataConfig, apply_overrides, build_section, format_scale, read_yaml
from mt_tune.data.clean import REASONS, Cleaner, CorpusReport, DataReport
from mt_tune.data.progress import Progress
from mt_tune.data.readers import Chunk, CorpusSource, open_corpus
from mt_tune.data.shards import (
    META, EncodedSide, Shard, ShardWriter, atomic_dir, build_lock, file_sizes, ids_dtype, remove_stale_tmp,
    shard_files_ok,
)
from mt_tune.data.splits import SplitPlan, check_size, pair_hash, plan_splits, repeated_values
from mt_tune.data.vocab import Tokenizer, train_sentencepiece
from mt_tune.errors import ConfigError, DataError

# Bump when the cache layout or the meaning of its content changes: old caches are then ignored.
PIPELINE_VERSION = 1
ENCODE_CHUNK = 20_000  # pairs per encoding task
REPORT = "report.json"


@dataclass
class PreparedData:
    """What training needs: the shards, the validation text and the tokenizers."""

    train: Shard
    valid: Shard
    valid_src: list[str]
    valid_ref: list[str]
    src_tok: Tokenizer
    tgt_tok: Tokenizer
    report: DataReport
    cache_dir: Path
    cache_hit: bool
    stats: dict = field(default_factory=dict)


# --- entry points --------------------------------------------------------------------------


def load_data_config(path: str | Path, overrides: list[str] | None = None) -> DataConfig:
    """The `data:` section of a training config or study spec, with overrides, validated."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    if "data" not in raw:
        raise ConfigError(f"{path}: no `data:` section (the corpus, its format, scale and vocabulary)")
    try:
        return build_section(DataConfig, raw["data"], "data")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def open_sources(cfg: DataConfig) -> tuple[CorpusSource, CorpusSource | None]:
    kw = dict(src_lang=cfg.src_lang, tgt_lang=cfg.tgt_lang, src_key=cfg.src_key, tgt_key=cfg.tgt_key)
    train = open_corpus(cfg.train, cfg.format, **kw)
    valid = open_corpus(cfg.valid, train.format if cfg.format == "auto" and len(cfg.valid) == len(cfg.train)
                        else cfg.format, **kw) if cfg.valid else None
    return train, valid


def check_corpus(paths: list[str], format: str = "auto", cfg: DataConfig | None = None,
                 progress: bool = False) -> DataReport:
    """Read and clean one corpus, count duplicates, build nothing. DataError if unusable."""
    cfg = cfg or DataConfig()
    source = open_corpus(paths, format, src_lang=cfg.src_lang, tgt_lang=cfg.tgt_lang,
                         src_key=cfg.src_key, tgt_key=cfg.tgt_key)
    with Progress(progress) as bar, tempfile.TemporaryDirectory(prefix="mt-tune-check-") as tmp:
        scan = _scan(source, Cleaner.from_config(cfg), Path(tmp), set(), bar)
        _check_bad_fraction(source, scan.report, cfg.max_bad_fraction)
        if cfg.dedup and len(scan.hashes):
            scan.hashes.sort()
            repeats = repeated_values(scan.hashes)
            if repeats:
                _route(scan, None, repeats, bar)
    return DataReport(scan.report)


def prepare(cfg: DataConfig, progress: bool = False) -> PreparedData:
    """Validate the corpus, build (or find in the cache) the vocabulary and the token shards."""
    started = time.perf_counter()
    train_src, valid_src = open_sources(cfg)
    cleaner = Cleaner.from_config(cfg)
    valid_size = 0 if valid_src else cfg.valid_size
    corpus_key = _key({
        "pipeline": PIPELINE_VERSION, "train": train_src.content_hash(),
        "valid": valid_src.content_hash() if valid_src else None, "valid_size": valid_size,
        "clean": [cfg.max_chars, cfg.max_ratio, cfg.nfkc, cfg.dedup, cfg.src_lang, cfg.tgt_lang],
    })
    corpus_dir = Path(cfg.cache_dir) / f"corpus-{corpus_key}"
    try:
        corpus_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"data.cache_dir={cfg.cache_dir}: cannot create {corpus_dir} ({e.strerror})") from None
    remove_stale_tmp(corpus_dir)  # what a builder that died left; nothing while a build runs
    # Check, lock, check again: a finished cache is read without waiting behind a build (of
    # another scale, say), and of processes preparing one corpus at once only one builds.
    # One lock per corpus directory rather than per vocab or shard directory: every build writes
    # the corpus's report.json and may train a vocabulary that several scales share, and with
    # every temporary directory in it made under the one lock, a free lock proves one stale.
    # Builds of two scales of a corpus run one after the other; they would share the cores anyway.
    if (hit := _cached(cfg, corpus_dir, train_src.name, valid_size, started)) is not None:
        return hit
    wait = (lambda: print(f"waiting for another process to finish building {corpus_dir}", file=sys.stderr,
                          flush=True)) if progress else None
    with build_lock(corpus_dir, on_wait=wait):
        if (hit := _cached(cfg, corpus_dir, train_src.name, valid_size, started)) is not None:
            return hit
        return _build(cfg, train_src, valid_src, cleaner, valid_size, corpus_dir, progress, started)


def _cached(cfg: DataConfig, corpus_dir: Path, source: str, valid_size: int, started: float) -> PreparedData | None:
    """The cache of these settings if it is complete (report, shards and vocabulary), else None."""
    cached = _read_json(corpus_dir / REPORT)
    if cached is None:
        return None
    n_vocab = _vocab_sample_size(cached["usable_pairs"], cfg, source, valid_size)
    shard_dir = corpus_dir / _shard_dir_name(cfg, n_vocab)
    if not (shard_files_ok(shard_dir) and (corpus_dir / _vocab_dir_name(cfg, n_vocab) / META).is_file()):
        return None
    return _load(cfg, corpus_dir, shard_dir, DataReport.from_dict(cached["report"], cfg.max_chars), started)


# --- building ------------------------------------------------------------------------------


def _build(cfg: DataConfig, train_src: CorpusSource, valid_src: CorpusSource | None, cleaner: Cleaner,
           valid_size: int, corpus_dir: Path, progress: bool, started: float) -> PreparedData:
    timings: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix=".tmp-work-", dir=corpus_dir))  # under the build lock
    try:
        with Progress(progress) as bar:
            t = time.perf_counter()
            valid_pairs, valid_report = (_read_valid(valid_src, cleaner, cfg, work, bar) if valid_src
                                         else ([], None))
            exclude = {pair_hash(src, tgt) for src, tgt in valid_pairs}
            scan = _scan(train_src, cleaner, work, exclude, bar)
            _check_bad_fraction(train_src, scan.report, cfg.max_bad_fraction)
            usable = scan.report.kept - scan.report.skipped.get("in_valid", 0)
            plan = plan_splits(scan.hashes, valid_size=valid_size, scale=cfg.scale_pairs,
                               vocab_sample=cfg.vocab_sample, source=train_src.name, dedup=cfg.dedup)
            del scan.hashes  # sorted by plan_splits; only the thresholds are needed from here on
            vocab_dir = corpus_dir / _vocab_dir_name(cfg, plan.n_vocab)
            need_vocab = not (vocab_dir / META).is_file()
            held_out = _route(scan, plan, plan.duplicates, bar, work, joint=cfg.joint_vocab,
                              vocab_sample=need_vocab)
            plan.duplicates = set()  # can be millions of ints; the encoding workers fork after this
            timings["read_clean_s"] = time.perf_counter() - t
            report = DataReport(scan.report, valid_report)
            distinct = plan.n_valid + plan.n_train + plan.n_unused if cfg.dedup else usable
            _write_json(corpus_dir / REPORT, {"report": report.to_dict(), "usable_pairs": distinct})

            t = time.perf_counter()
            if need_vocab:
                bar.stage("training the vocabulary", None)
                _train_vocab(cfg, vocab_dir, work, plan.n_vocab, train_src.name)
            timings["vocab_s"] = time.perf_counter() - t
            src_tok, tgt_tok = _load_tokenizers(vocab_dir, cfg.joint_vocab)

            t = time.perf_counter()
            valid_pairs = valid_pairs or held_out
            shard_dir = corpus_dir / _shard_dir_name(cfg, plan.n_vocab)
            with atomic_dir(shard_dir) as tmp_dir:
                dtype = ids_dtype(max(src_tok.vocab_size, tgt_tok.vocab_size))
                stats = {"dtype": dtype.name, "scale": format_scale(cfg.scale_pairs), "splits": plan.to_dict(),
                         "vocab": _vocab_stats(cfg, src_tok, tgt_tok, plan.n_vocab, need_vocab)}
                stats["valid"] = _encode_pairs(valid_pairs, src_tok, tgt_tok, tmp_dir, "valid", dtype)
                stats["train"] = _encode_file(work / "train.tsv", plan.n_train, src_tok, tgt_tok, tmp_dir,
                                              dtype, bar)
                with open(tmp_dir / "valid.jsonl", "w", encoding="utf-8") as f:
                    for s, r in valid_pairs:
                        f.write(json.dumps({"src": s, "ref": r}, ensure_ascii=False) + "\n")
                timings["encode_s"] = time.perf_counter() - t
                stats["timings"] = {k: round(v, 3) for k, v in timings.items()}
                _write_meta(tmp_dir, stats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.splits = stats["splits"]
    return _finish(cfg, corpus_dir, shard_dir, report, stats, cache_hit=False, started=started)


def _load(cfg: DataConfig, corpus_dir: Path, shard_dir: Path, report: DataReport, started: float) -> PreparedData:
    stats = json.loads((shard_dir / META).read_text())["stats"]
    report.splits = stats["splits"]
    return _finish(cfg, corpus_dir, shard_dir, report, stats, cache_hit=True, started=started)


def _finish(cfg: DataConfig, corpus_dir: Path, shard_dir: Path, report: DataReport, stats: dict,
            cache_hit: bool, started: float) -> PreparedData:
    vocab_dir = corpus_dir / _vocab_dir_name(cfg, stats["splits"]["vocab_sample"])
    src_tok, tgt_tok = _load_tokenizers(vocab_dir, cfg.joint_vocab)
    valid_src, valid_ref = [], []
    with open(shard_dir / "valid.jsonl", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            valid_src.append(d["src"])
            valid_ref.append(d["ref"])
    stats = dict(stats, cache_dir=str(shard_dir), total_s=round(time.perf_counter() - started, 3))
    return PreparedData(Shard(shard_dir, "train"), Shard(shard_dir, "valid"), valid_src, valid_ref,
                        src_tok, tgt_tok, report, shard_dir, cache_hit, stats)


def _vocab_sample_size(usable: int, cfg: DataConfig, source: str, valid_size: int) -> int:
    """Pairs in the vocabulary sample, from the saved count of usable pairs (no scan needed)."""
    check_size(source, usable, usable - valid_size, valid_size, cfg.scale_pairs)
    n_train = usable - valid_size if cfg.scale_pairs is None else cfg.scale_pairs
    return min(n_train, cfg.vocab_sample)


def _vocab_dir_name(cfg: DataConfig, n_vocab: int) -> str:
    return "vocab-" + _key({"n": n_vocab, "size": cfg.vocab_size, "type": cfg.vocab_type,
                            "joint": cfg.joint_vocab, "coverage": cfg.character_coverage}, 12)


def _shard_dir_name(cfg: DataConfig, n_vocab: int) -> str:
    return f"shards-{format_scale(cfg.scale_pairs)}-{_vocab_dir_name(cfg, n_vocab)[len('vocab-'):]}"


def _key(obj: object, n: int = 16) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True).encode(), digest_size=n // 2).hexdigest()


# --- pass 1: scan --------------------------------------------------------------------------


@dataclass
class _ChunkScan:
    index: int
    report: CorpusReport  # line numbers local to the chunk
    hashes: np.ndarray
    path: Path
    size: int


@dataclass
class _Scan:
    report: CorpusReport
    hashes: np.ndarray
    files: list[tuple[Path, int]]  # clean-pair files and the line offset of each


def _scan_chunk(source: CorpusSource, chunk: Chunk, cleaner: Cleaner, work: Path,
                exclude: set[int]) -> _ChunkScan:
    """Clean one chunk; write 'hash<TAB>line<TAB>src<TAB>tgt' lines; return the hashes."""
    report = CorpusReport(source.name, source.format, cleaner.max_chars)
    hashes, src_lens, tgt_lens = array("Q"), array("H"), array("H")
    clean, skip = cleaner.clean, report.skip
    path = work / f"clean-{chunk.index:05d}.tsv"
    line = kept = 0
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        write = out.write
        for line, src, tgt, reason in source.records(chunk):
            if reason is None:
                src, tgt, reason = clean(src, tgt)
            if reason is not None:
                skip(reason, line)
                continue
            kept += 1
            h = pair_hash(src, tgt)
            if h in exclude:
                skip("in_valid", line)
                continue
            hashes.append(h)
            src_lens.append(len(src))
            tgt_lens.append(len(tgt))
            write(f"{h:016x}\t{line}\t{src}\t{tgt}\n")
    report.lines = line
    report.kept = kept
    n_hist = cleaner.max_chars + 1
    report.src_hist += np.bincount(np.frombuffer(src_lens, dtype=np.uint16), minlength=n_hist)[:n_hist]
    report.tgt_hist += np.bincount(np.frombuffer(tgt_lens, dtype=np.uint16), minlength=n_hist)[:n_hist]
    size = sum(end - start for start, end in chunk.ranges)
    return _ChunkScan(chunk.index, report, np.frombuffer(hashes, dtype=np.uint64), path, size)


def _scan_task(args: tuple) -> _ChunkScan:
    return _scan_chunk(*args)


def _scan(source: CorpusSource, cleaner: Cleaner, work: Path, exclude: set[int], bar: Progress) -> _Scan:
    chunks = source.chunks()
    total = source.size_bytes() if source.format != "sample" else None
    bar.stage(f"reading {source.name}", total)
    report = CorpusReport(source.name, source.format, cleaner.max_chars)
    files: list[tuple[Path, int]] = []
    hash_file = work / "hashes.u64"
    with open(hash_file, "wb") as hf, _pool(len(chunks)) as pool:
        tasks = [(source, chunk, cleaner, work, exclude) for chunk in chunks]
        results = _ordered_map(pool, _scan_task, tasks) if pool else map(_scan_task, tasks)
        for part in results:
            files.append((part.path, report.lines))
            report.merge(part.report, report.lines)
            part.hashes.tofile(hf)  # on disk, not in a list: the hashes are read back in one piece
            bar.advance(part.size)
    hashes = np.fromfile(hash_file, dtype=np.uint64)
    hash_file.unlink()
    return _Scan(report, hashes, files)


def _pool(n_tasks: int):
    """A process pool when there is more than one chunk and more than one core, else None."""
    workers = min(os.cpu_count() or 1, n_tasks)
    return _new_pool(workers) if workers > 1 else _NoPool()


def _new_pool(workers: int, **kw):
    # fork: the workers inherit the imported modules instead of importing them again
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    # Frozen objects are skipped by the workers' garbage collector, which would otherwise
    # touch, and so copy, every page of the parent's heap (torch alone is ~100 MB a worker).
    gc.freeze()
    try:
        return multiprocessing.get_context(method).Pool(workers, **kw)
    finally:
        gc.unfreeze()


def _ordered_map(pool, fn, items: Iterable) -> Iterator:
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


def _check_bad_fraction(source: CorpusSource, report: CorpusReport, max_bad_fraction: float) -> None:
    if report.lines == 0:
        raise DataError(f"{source.name}: the corpus is empty; expected {source.expected()}")
    if report.bad > max_bad_fraction * report.lines or report.kept == 0:
        line, reason = report.first_bad() or (1, "empty_side")
        where = source.paths[0] if source.format in ("jsonl", "tsv") else source.name
        raise DataError(f"{where}: {report.bad} of {report.lines} lines are unusable "
                        f"({100 * report.bad / report.lines:.0f}%, more than data.max_bad_fraction="
                        f"{max_bad_fraction}); first at line {line}: {REASONS[reason]}; "
                        f"expected {source.expected()}")


def _read_valid(source: CorpusSource, cleaner: Cleaner, cfg: DataConfig, work: Path,
                bar: Progress) -> tuple[list[tuple[str, str]], CorpusReport]:
    """The validation file's clean pairs, in file order, without duplicates."""
    valid_work = work / "valid"
    valid_work.mkdir()
    scan = _scan(source, cleaner, valid_work, set(), bar)
    _check_bad_fraction(source, scan.report, cfg.max_bad_fraction)
    pairs, seen = [], set()
    for path, offset in scan.files:
        with open(path, encoding="utf-8", newline="\n") as f:
            for row in f:
                h, line, src, tgt = row.rstrip("\n").split("\t")
                if h in seen:
                    scan.report.skip("duplicate", offset + int(line))
                    continue
                seen.add(h)
                pairs.append((src, tgt))
    return pairs, scan.report


# --- pass 3: route -------------------------------------------------------------------------


def _route(scan: _Scan, plan: SplitPlan | None, repeats: set[int], bar: Progress, work: Path | None = None,
           joint: bool = True, vocab_sample: bool = False) -> list[tuple[str, str]]:
    """Read the clean pairs back in corpus order: count duplicates (with their first lines),
    collect the held-out validation pairs, and write the training pairs of the scale (and the
    vocab sample) to files; return the held-out validation pairs. With no plan, only the
    duplicates are counted."""
    valid: list[tuple[str, str]] = []
    seen: set[int] = set()
    bar.stage("splitting", sum(p.stat().st_size for p, _ in scan.files))
    outputs = []
    if plan is not None and work is not None:
        train_out = open(work / "train.tsv", "wb")
        outputs.append(train_out)
        if vocab_sample:
            vocab_src = open(work / ("vocab.txt" if joint else "vocab.src.txt"), "wb")
            vocab_tgt = vocab_src if joint else open(work / "vocab.tgt.txt", "wb")
            outputs += [vocab_src] if joint else [vocab_src, vocab_tgt]
    try:
        for path, offset in scan.files:
            with open(path, "rb") as f:
                for row in f:
                    h_hex, line, src, tgt = row.split(b"\t", 3)
                    h = int(h_hex, 16)
                    if h in repeats:
                        if h in seen:
                            scan.report.skip("duplicate", offset + int(line))
                            continue
                        seen.add(h)
                    if plan is None:
                        continue
                    split = plan.route(h)
                    if split == "train":
                        train_out.write(src + b"\t" + tgt)
                        if vocab_sample and h <= plan.vocab_max:
                            vocab_src.write(src + b"\n")
                            vocab_tgt.write(tgt)
                    elif split == "valid":
                        valid.append((src.decode("utf-8"), tgt.decode("utf-8").rstrip("\n")))
            bar.advance(path.stat().st_size)
    finally:
        for f in outputs:
            f.close()
    return valid


# --- pass 4: vocabulary --------------------------------------------------------------------


def _train_vocab(cfg: DataConfig, vocab_dir: Path, work: Path, n_vocab: int, source: str) -> None:
    with atomic_dir(vocab_dir) as tmp:
        kw = dict(vocab_size=cfg.vocab_size, model_type=cfg.vocab_type, character_coverage=cfg.character_coverage)
        where = f"the vocabulary sample of {source} ({n_vocab} pairs"
        if cfg.joint_vocab:
            train_sentencepiece(work / "vocab.txt", tmp / "joint.model",
                                what=f"{where}, {cfg.src_lang}+{cfg.tgt_lang} joint)", **kw)
        else:
            train_sentencepiece(work / "vocab.src.txt", tmp / "src.model", what=f"{where}, {cfg.src_lang} side)",
                                **kw)
            train_sentencepiece(work / "vocab.tgt.txt", tmp / "tgt.model", what=f"{where}, {cfg.tgt_lang} side)",
                                **kw)
        _write_json(tmp / META, {"pairs": n_vocab, "vocab_size": cfg.vocab_size, "type": cfg.vocab_type,
                                 "joint": cfg.joint_vocab, "character_coverage": cfg.character_coverage})


def _load_tokenizers(vocab_dir: Path, joint: bool) -> tuple[Tokenizer, Tokenizer]:
    if joint:
        tok = Tokenizer(vocab_dir / "joint.model")
        return tok, tok
    return Tokenizer(vocab_dir / "src.model"), Tokenizer(vocab_dir / "tgt.model")


def _vocab_stats(cfg: DataConfig, src_tok: Tokenizer, tgt_tok: Tokenizer, n_vocab: int, trained: bool) -> dict:
    return {"type": cfg.vocab_type, "joint": cfg.joint_vocab, "src_size": src_tok.vocab_size,
            "tgt_size": tgt_tok.vocab_size, "sample_pairs": n_vocab, "cache_hit": not trained}


# --- pass 5: encode ------------------------------------------------------------------------

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


def _encode_file(path: Path, n_pairs: int, src_tok: Tokenizer, tgt_tok: Tokenizer, out_dir: Path,
                 dtype: np.dtype, bar: Progress) -> dict:
    """Encode the training pairs into the train shard, in parallel when there are many."""
    bar.stage("encoding", n_pairs)
    writer = ShardWriter(out_dir, "train", dtype)
    protos = (src_tok.model_bytes(), tgt_tok.model_bytes())
    workers = min(os.cpu_count() or 1, -(-n_pairs // ENCODE_CHUNK))
    pool = _new_pool(workers, initializer=_init_encoder, initargs=protos) if workers > 1 else None
    try:
        if pool is None:
            _init_encoder(*protos)
            results: Iterator = map(_encode_rows, _row_chunks(path, ENCODE_CHUNK))
        else:
            results = _ordered_map(pool, _encode_rows, _row_chunks(path, ENCODE_CHUNK))
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


def _encode_pairs(pairs: list[tuple[str, str]], src_tok: Tokenizer, tgt_tok: Tokenizer, out_dir: Path,
                  split: str, dtype: np.dtype) -> dict:
    writer = ShardWriter(out_dir, split, dtype)
    writer.add(EncodedSide.from_lists(src_tok.encode([s for s, _ in pairs]), dtype),
               EncodedSide.from_lists(tgt_tok.encode([t for _, t in pairs]), dtype))
    return writer.close()


# --- small file helpers --------------------------------------------------------------------


def _write_meta(directory: Path, stats: dict) -> None:
    _write_json(directory / META, {"dtype": stats["dtype"], "stats": stats, "files": file_sizes(directory)})


def _write_json(path: Path, obj: object) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
