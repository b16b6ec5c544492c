"""Corpus files: format detection, streaming readers, chunks, and the errors for bad files."""

from __future__ import annotations

import json

import pytest

from mt_tune.data import readers
from mt_tune.data.readers import open_corpus
from mt_tune.errors import DataError


def records(source):
    out = []
    for chunk in source.chunks():
        out.extend(source.records(chunk))
    return out


def test_jsonl_default_keys_then_translation2019zh_keys(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"zh": "你好", "en": "Hello"}\n{"chinese": "谢谢", "english": "Thanks"}\n'
                    '{"zh": "x"}\n{"zh": 1, "en": "y"}\n[1, 2]\n{oops\n\n', encoding="utf-8")
    source = open_corpus([path])
    assert source.format == "jsonl"
    assert records(source) == [(1, "你好", "Hello", None), (2, "谢谢", "Thanks", None),
                               (3, None, None, "missing_field"), (4, None, None, "missing_field"),
                               (5, None, None, "invalid_json"), (6, None, None, "invalid_json"),
                               (7, None, None, "blank_line")]


def test_jsonl_configured_keys(tmp_path):
    path = tmp_path / "c.data"
    path.write_text('{"source": "你好", "target": "Hello", "zh": "no"}\n', encoding="utf-8")
    source = open_corpus([path], src_key="source", tgt_key="target")
    assert source.format == "jsonl"  # detected from the content: the suffix says nothing
    assert records(source) == [(1, "你好", "Hello", None)]


def test_tsv_bom_and_invalid_utf8(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_bytes("\ufeff你好\tHello\n".encode() + b"bad\xff\xfe\tx\n" + "一\t二\t三\n".encode())
    assert records(open_corpus([path])) == [(1, "你好", "Hello", None), (2, None, None, "invalid_utf8"),
                                            (3, None, None, "bad_columns")]


def test_moses_pair_and_line_count_mismatch(tmp_path):
    (tmp_path / "a.zh").write_text("你好\n谢谢\n", encoding="utf-8")
    (tmp_path / "a.en").write_text("Hello\nThanks\n", encoding="utf-8")
    source = open_corpus([tmp_path / "a.zh", tmp_path / "a.en"])
    assert source.format == "moses" and source.n_lines == 2
    assert records(source) == [(1, "你好\n", "Hello\n", None), (2, "谢谢\n", "Thanks\n", None)]
    (tmp_path / "a.en").write_text("Hello\nThanks\nExtra\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"a.zh has 2 lines but .*a.en has 3.*line 3 has no counterpart"):
        open_corpus([tmp_path / "a.zh", tmp_path / "a.en"])


def test_moses_chunks_stay_aligned(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "CHUNK_LINES", 3)
    (tmp_path / "a.zh").write_text("".join(f"中{i}\n" for i in range(10)), encoding="utf-8")
    (tmp_path / "a.en").write_text("".join(f"longer english line {i}\n" for i in range(10)), encoding="utf-8")
    source = open_corpus([tmp_path / "a.zh", tmp_path / "a.en"])
    chunks = source.chunks()
    assert len(chunks) == 4
    pairs = [(src.strip(), tgt.strip()) for chunk in chunks for _, src, tgt, _ in source.records(chunk)]
    assert pairs == [(f"中{i}", f"longer english line {i}") for i in range(10)]


def test_byte_chunks_cover_every_line_once(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text("".join(f"中文{i}\tenglish {i}\n" for i in range(500)), encoding="utf-8")
    source = open_corpus([path])
    chunks = source.chunks(chunk_bytes=1000)
    assert len(chunks) > 5
    srcs = [src for chunk in chunks for _, src, _, _ in source.records(chunk)]
    assert srcs == [f"中文{i}" for i in range(500)]


def test_sample_format():
    source = open_corpus([], "sample")
    assert source.format == "sample" and "hsk-sentences-audio" in source.name
    assert open_corpus([]).format == "sample"


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.jsonl", r"missing.jsonl: no such file"),
    (lambda d: d, r"is a directory, expected a corpus file"),
    (lambda d: _write(d / "model.bin", b"\x89PNG\r\n\x1a\n\x00\x00\x00"), r"model.bin: not a text file \(a NUL byte"),
    (lambda d: _write(d / "latin.txt", "caf\xe9 na\xefve\n".encode("latin-1") * 3), r"latin.txt: not UTF-8 text"),
    (lambda d: _write(d / "prose.txt", b"Just some prose.\nNo tabs, no JSON.\n"),
     r"prose.txt, line 1: no recognisable corpus format: expected a JSON object per line"),
    (lambda d: _write(d / "empty.txt", b"\n\n"), r"empty.txt: the file is empty"),
])
def test_bad_files(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        open_corpus([make(tmp_path)])


def test_format_and_file_count_mismatches(tmp_path):
    a = _write(tmp_path / "a.zh", "你好\n".encode())
    with pytest.raises(DataError, match="a Moses pair needs two files"):
        open_corpus([a], "moses")
    with pytest.raises(DataError, match="the jsonl format takes one file, got two"):
        open_corpus([a, a], "jsonl")
    with pytest.raises(DataError, match="the 'sample' format takes no files"):
        open_corpus([a], "sample")
    with pytest.raises(DataError, match="unknown corpus format 'csv'"):
        open_corpus([a], "csv")


def test_content_hash_follows_content_not_path(tmp_path):
    a = _write(tmp_path / "a.jsonl", json.dumps({"zh": "你", "en": "you"}).encode() + b"\n")
    b = _write(tmp_path / "b.jsonl", a.read_bytes())
    assert open_corpus([a]).content_hash() == open_corpus([b]).content_hash()
    b.write_bytes(a.read_bytes() + b"\n")
    assert open_corpus([a]).content_hash() != open_corpus([b]).content_hash()


def _write(path, data: bytes):
    path.write_bytes(data)
    return path
