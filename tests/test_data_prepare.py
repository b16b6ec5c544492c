"""prepare() and check_corpus(): splits, scales, caching, atomic shard writes, hard errors."""

from __future__ import annotations

import importlib
import json
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mt_tune.config import DataConfig, build_section
from mt_tune.data import PreparedData, check_corpus, prepare, readers
from mt_tune.data.prepare import load_data_config
from mt_tune.errors import ConfigError, DataError

ZH = "我你他她们是的了在有不这个人大中国学生老师好看书吃饭喝水去来说话"
EN = ("i you he she we they is are the a in have not this person big country student teacher good "
      "read book eat rice drink water go come speak word").split()


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n distinct synthetic zh-en pairs (the line number makes each one unique)."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        k = rng.randint(2, 8)
        zh = "".join(rng.choice(ZH) for _ in range(k)) + f"{i}。"
        en = " ".join(rng.choice(EN) for _ in range(k)) + f" {i}."
        pairs.append((zh, en.capitalize()))
    return pairs


def write_jsonl(path: Path, pairs, keys=("zh", "en")) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for zh, en in pairs:
            f.write(json.dumps({keys[0]: zh, keys[1]: en}, ensure_ascii=False) + "\n")
    return path


def config(tmp_path: Path, **kw) -> DataConfig:
    raw = {"vocab_size": 120, "valid_size": 50, "cache_dir": str(tmp_path / "cache"), **kw}
    return build_section(DataConfig, raw, "data")


def pair_set(data: PreparedData, split: str) -> set[tuple[str, str]]:
    shard = getattr(data, split)
    srcs = data.src_tok.decode([shard.pair(i)[0].tolist() for i in range(len(shard))])
    tgts = data.tgt_tok.decode([shard.pair(i)[1].tolist() for i in range(len(shard))])
    return set(zip(srcs, tgts))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "train.jsonl", make_pairs(1200))


# --- the bundled sample ---------------------------------------------------------------------


def test_sample_prepare_then_cache_hit(tmp_path):
    cfg = config(tmp_path, format="sample", vocab_size=4000, valid_size=500)
    first = prepare(cfg, progress=True)
    assert not first.cache_hit
    splits = first.report.to_dict()["splits"]
    assert splits["valid"] == len(first.valid) == len(first.valid_src) == len(first.valid_ref) == 500
    assert splits["train"] == len(first.train) == 3770
    assert first.report.to_dict()["train"]["skipped"]["placeholder"]["count"] == 80
    assert first.src_tok is first.tgt_tok and first.src_tok.vocab_size == 4000
    assert first.stats["train"]["src_unk_rate"] < 0.01
    # the saved report sits beside the cache
    assert json.loads((first.cache_dir.parent / "report.json").read_text())["report"]["train"]["kept"] == 4270

    second = prepare(cfg)
    assert second.cache_hit
    assert second.valid_src == first.valid_src and second.valid_ref == first.valid_ref
    assert np.array_equal(second.train.src_lens, first.train.src_lens)
    assert second.report.to_dict()["train"] == first.report.to_dict()["train"]
    # the validation text is the text of the validation shard
    assert first.tgt_tok.decode([first.valid.pair(0)[1].tolist()])[0] == first.valid_ref[0]


# --- splits and scales ----------------------------------------------------------------------


def test_scales_are_nested_and_disjoint_from_validation(tmp_path, corpus):
    small = prepare(config(tmp_path, train=[str(corpus)], scale=200))
    large = prepare(config(tmp_path, train=[str(corpus)], scale="1k"))
    full = prepare(config(tmp_path, train=[str(corpus)], scale="full"))
    s, m, f = pair_set(small, "train"), pair_set(large, "train"), pair_set(full, "train")
    assert (len(s), len(m), len(f)) == (200, 1000, 1150)
    assert s < m < f
    valid = pair_set(small, "valid")
    assert len(valid) == 50
    assert valid == pair_set(large, "valid") == pair_set(full, "valid")
    assert not valid & f
    # one vocabulary sample (the first vocab_sample training pairs in hash order) for scales above it
    capped = [prepare(config(tmp_path, train=[str(corpus)], scale=n, vocab_sample=300)) for n in (500, "full")]
    assert capped[0].src_tok.model_bytes() == capped[1].src_tok.model_bytes()


def test_validation_file_is_used_and_removed_from_training(tmp_path):
    pairs = make_pairs(400)
    train = write_jsonl(tmp_path / "train.jsonl", pairs)
    valid = write_jsonl(tmp_path / "valid.jsonl", pairs[:30] + pairs[:2])  # overlaps training, one duplicate
    data = prepare(config(tmp_path, train=[str(train)], valid=[str(valid)]))
    assert len(data.valid) == 30 and data.valid_src[0] == pairs[0][0]
    assert len(data.train) == 370
    report = data.report.to_dict()
    assert report["train"]["skipped"]["in_valid"]["count"] == 30
    assert report["valid"]["skipped"]["duplicate"]["first_lines"] == [31, 32]


def test_duplicates_dropped_with_their_line_numbers(tmp_path):
    pairs = make_pairs(300)
    lines = pairs + [pairs[5], pairs[7], pairs[5]]
    path = write_jsonl(tmp_path / "dups.jsonl", lines)
    data = prepare(config(tmp_path, train=[str(path)]))
    assert len(data.train) + len(data.valid) == 300
    assert data.report.to_dict()["train"]["skipped"]["duplicate"] == {
        "count": 3, "reason": "exact duplicate of an earlier pair", "first_lines": [301, 302, 303]}
    kept = prepare(config(tmp_path, train=[str(path)], dedup=False))
    assert len(kept.train) + len(kept.valid) == 303


def test_parallel_chunks_give_the_same_result_as_one(tmp_path, corpus, monkeypatch):
    one = prepare(config(tmp_path / "a", train=[str(corpus)]))
    # A file gives at least two chunks per core (here 4 cores), read by a process pool.
    monkeypatch.setattr(readers, "MIN_CHUNK_BYTES", 1024)
    monkeypatch.setattr(readers.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(importlib.import_module("mt_tune.data.encode"), "ENCODE_CHUNK", 64)  # encoded by one
    assert len(readers.open_corpus([corpus]).chunks()) > 5
    many = prepare(config(tmp_path / "b", train=[str(corpus)]))
    assert np.array_equal(one.train.src_lens, many.train.src_lens)
    assert all(np.array_equal(one.train.pair(i)[1], many.train.pair(i)[1]) for i in range(len(one.train)))
    assert one.report.to_dict() == many.report.to_dict()


def test_moses_and_tsv_read_the_same_pairs(tmp_path, monkeypatch):
    pairs = make_pairs(300)
    (tmp_path / "c.zh").write_text("".join(zh + "\n" for zh, _ in pairs), encoding="utf-8")
    (tmp_path / "c.en").write_text("".join(en + "\n" for _, en in pairs), encoding="utf-8")
    (tmp_path / "c.tsv").write_text("".join(f"{zh}\t{en}\n" for zh, en in pairs), encoding="utf-8")
    monkeypatch.setattr(readers, "CHUNK_LINES", 70)  # aligned chunks over both Moses files
    moses = prepare(config(tmp_path, train=[str(tmp_path / "c.zh"), str(tmp_path / "c.en")]))
    tsv = prepare(config(tmp_path, train=[str(tmp_path / "c.tsv")]))
    assert pair_set(moses, "train") == pair_set(tsv, "train")
    assert moses.report.to_dict()["train"]["format"] == "moses"


# --- cache and atomic writes ----------------------------------------------------------------


def test_interrupted_shard_write_leaves_no_cache_and_next_run_rebuilds(tmp_path, corpus):
    """A process killed (SIGKILL, no cleanup) while writing shards leaves only a temporary
    directory; the next prepare rebuilds and removes it."""
    cache = tmp_path / "cache"
    script = textwrap.dedent(f"""
        import os, signal
        from mt_tune.config import build_section, DataConfig
        from mt_tune.data import prepare, shards
        real_add = shards.ShardWriter.add
        def add_then_die(self, src, tgt):
            real_add(self, src, tgt)
            if self.split == "train":
                os.kill(os.getpid(), signal.SIGKILL)
        shards.ShardWriter.add = add_then_die
        prepare(build_section(DataConfig, {{"train": [{str(corpus)!r}], "vocab_size": 120, "valid_size": 50,
                                             "cache_dir": {str(cache)!r}}}, "data"))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    corpus_dir = next(cache.glob("corpus-*"))
    assert not list(corpus_dir.glob("shards-*"))  # nothing that looks finished
    assert list(corpus_dir.glob(".tmp-shards-*"))  # the half-written one, under a temporary name

    data = prepare(config(tmp_path, train=[str(corpus)]))
    assert not data.cache_hit and len(data.train) == 1150
    assert not list(corpus_dir.glob(".tmp-*"))


def test_exception_during_shard_write_leaves_nothing(tmp_path, corpus, monkeypatch):
    from mt_tune.data import shards

    def fail(self, src, tgt):
        raise KeyboardInterrupt

    monkeypatch.setattr(shards.ShardWriter, "add", fail)
    with pytest.raises(KeyboardInterrupt):
        prepare(config(tmp_path, train=[str(corpus)]))
    corpus_dir = next((tmp_path / "cache").glob("corpus-*"))
    assert [p.name for p in corpus_dir.iterdir() if p.name.startswith(("shards", ".tmp"))] == []


def test_damaged_shard_is_rebuilt(tmp_path, corpus):
    first = prepare(config(tmp_path, train=[str(corpus)]))
    (first.cache_dir / "train.tgt.bin").write_bytes(b"\x00\x01")  # truncated behind our back
    again = prepare(config(tmp_path, train=[str(corpus)]))
    assert not again.cache_hit and len(again.train) == 1150
    # the damaged directory was replaced, not kept beside the rebuilt one
    third = prepare(config(tmp_path, train=[str(corpus)]))
    assert third.cache_hit and third.train.pair(7)[1].tolist() == again.train.pair(7)[1].tolist()
    assert [p.name for p in first.cache_dir.parent.iterdir() if p.name.startswith((".tmp", "shards"))] == [
        first.cache_dir.name]


def test_changed_corpus_is_not_a_cache_hit(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", make_pairs(300))
    assert not prepare(config(tmp_path, train=[str(path)])).cache_hit
    write_jsonl(path, make_pairs(300, seed=1))
    assert not prepare(config(tmp_path, train=[str(path)])).cache_hit
    assert prepare(config(tmp_path, train=[str(path)])).cache_hit


# --- hard errors ----------------------------------------------------------------------------


def test_scale_larger_than_corpus_says_how_many(tmp_path, corpus):
    with pytest.raises(DataError, match=r"scale 10k asks for 10000 training pairs.* only 1150 usable pairs"):
        prepare(config(tmp_path, train=[str(corpus)], scale="10k"))
    prepare(config(tmp_path, train=[str(corpus)]))  # now the report is cached: same error without a scan
    with pytest.raises(DataError, match=r"only 1150 usable pairs"):
        prepare(config(tmp_path, train=[str(corpus)], scale="10k"))


def test_too_many_bad_lines(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = [json.dumps({"zh": zh, "en": en}, ensure_ascii=False) for zh, en in make_pairs(40)]
    path.write_text("\n".join(good + ["{not json"] * 60) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl: 60 of 100 lines are unusable .*first at line 41: not a JSON "
                                        r"object; expected one JSON object per line"):
        check_corpus([str(path)])
    report = check_corpus([str(path)], cfg=DataConfig(max_bad_fraction=0.7))
    assert report.train.skipped == {"invalid_json": 60}
    assert not (tmp_path / "cache").exists()


def test_vocab_too_large_names_the_largest_size(tmp_path, corpus):
    with pytest.raises(DataError, match=r"data.vocab_size=5000 is too large .*set data.vocab_size <= \d+"):
        prepare(config(tmp_path, train=[str(corpus)], vocab_size=5000))


def test_corpus_too_small_for_validation(tmp_path):
    path = write_jsonl(tmp_path / "tiny.jsonl", make_pairs(40))
    with pytest.raises(DataError, match="only 40 usable pairs.*valid_size=50"):
        prepare(config(tmp_path, train=[str(path)]))


def test_load_data_config_from_a_spec_with_overrides(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\ndata:\n  format: sample\n  vocab_size: 300\nsearch: {}\n")
    cfg = load_data_config(spec, ["data.scale=1k"])
    assert cfg.vocab_size == 300 and cfg.scale_pairs == 1000
    with pytest.raises(ConfigError, match=r"spec.yaml: data.vocab_sise: unknown key \(did you mean 'vocab_size'"):
        load_data_config(spec, ["data.vocab_sise=3"])
    (tmp_path / "nodata.yaml").write_text("name: x\n")
    with pytest.raises(ConfigError, match="no `data:` section"):
        load_data_config(tmp_path / "nodata.yaml")


def test_demo_spec_prepares(tmp_path):
    spec = Path(__file__).resolve().parents[1] / "studies" / "demo.yaml"
    cfg = load_data_config(spec, [f"data.cache_dir={tmp_path}"])
    assert cfg.format == "sample" and cfg.joint_vocab
    data = prepare(cfg)
    assert len(data.train) > 3000 and data.src_tok.vocab_size == cfg.vocab_size
