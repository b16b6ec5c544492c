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
one builds and the others wait, then read its cache. Passes 1 and 3 are in data/scan.py, pass 5
in data/encode.py; this module plans, trains the vocabulary and owns the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mt_tune.config import DataConfig, apply_overrides, build_section, format_scale, read_yaml
from mt_tune.data.clean import Cleaner, DataReport
from mt_tune.data.encode import encode_file, encode_pairs
from mt_tune.data.progress import Progress
from mt_tune.data.readers import CorpusSource, open_corpus
from mt_tune.data.scan import check_bad_fraction, read_valid_pairs, route_pairs, scan_corpus
from mt_tune.data.shards import (
    META, Shard, atomic_dir, build_lock, file_sizes, ids_dtype, remove_stale_tmp, shard_files_ok,
)
from mt_tune.data.splits import check_size, pair_hash, plan_splits, repeated_values
from mt_tune.data.vocab import Tokenizer, train_sentencepiece
from mt_tune.errors import ConfigError, DataError

# Bump when the cache layout or the meaning of its content changes: old caches are then ignored.
PIPELINE_VERSION = 1
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
        scan = scan_corpus(source, Cleaner.from_config(cfg), Path(tmp), set(), bar)
        check_bad_fraction(source, scan.report, cfg.max_bad_fraction)
        if cfg.dedup and len(scan.hashes):
            scan.hashes.sort()
            repeats = repeated_values(scan.hashes)
            if repeats:
                route_pairs(scan, None, repeats, bar)
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
            valid_pairs, valid_report = (read_valid_pairs(valid_src, cleaner, cfg, work, bar) if valid_src
                                         else ([], None))
            exclude = {pair_hash(src, tgt) for src, tgt in valid_pairs}
            scan = scan_corpus(train_src, cleaner, work, exclude, bar)
            check_bad_fraction(train_src, scan.report, cfg.max_bad_fraction)
            usable = scan.report.kept - scan.report.skipped.get("in_valid", 0)
            plan = plan_splits(scan.hashes, valid_size=valid_size, scale=cfg.scale_pairs,
                               vocab_sample=cfg.vocab_sample, source=train_src.name, dedup=cfg.dedup)
            del scan.hashes  # sorted by plan_splits; only the thresholds are needed from here on
            vocab_dir = corpus_dir / _vocab_dir_name(cfg, plan.n_vocab)
            need_vocab = not (vocab_dir / META).is_file()
            held_out = route_pairs(scan, plan, plan.duplicates, bar, work, joint=cfg.joint_vocab,
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
                stats["valid"] = encode_pairs(valid_pairs, src_tok, tgt_tok, tmp_dir, "valid", dtype)
                stats["train"] = encode_file(work / "train.tsv", plan.n_train, src_tok, tgt_tok, tmp_dir,
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
