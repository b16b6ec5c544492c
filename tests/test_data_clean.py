"""Cleaning rules and the corpus report."""

from __future__ import annotations

from mt_tune.config import DataConfig
from mt_tune.data.clean import Cleaner, CorpusReport, DataReport


def test_whitespace_is_normalised():
    cleaner = Cleaner()
    assert cleaner.clean("  你好\u3000世界 \t", "Hello \n  world ") == ("你好 世界", "Hello world", None)


def test_skip_reasons():
    cleaner = Cleaner(max_chars=20, max_ratio=3.0, src_weight=3.0)
    assert cleaner.clean(" ", "x")[2] == "empty_side"
    assert cleaner.clean("你好", "")[2] == "empty_side"
    assert cleaner.clean("你" * 21, "x" * 20)[2] == "too_long"
    assert cleaner.clean("你好", "Hello")[2] is None  # 2 x 3 = 6 weighted characters against 5
    assert cleaner.clean("你", "A much longer English sentence"[:19])[2] == "bad_ratio"
    assert cleaner.clean("你" * 10, "Hi")[2] == "bad_ratio"


def test_nfkc_is_optional():
    assert Cleaner(nfkc=True).clean("ｆｕｌｌ，", "ｗｉｄｔｈ")[:2] == ("full,", "width")
    assert Cleaner().clean("ｆｕｌｌ，", "ｗｉｄｔｈ")[:2] == ("ｆｕｌｌ，", "ｗｉｄｔｈ")


def test_cjk_weight_follows_the_languages():
    assert Cleaner.from_config(DataConfig()).src_weight == 3.0
    assert Cleaner.from_config(DataConfig(src_lang="de", tgt_lang="en")).src_weight == 1.0


def test_report_counts_merge_and_roundtrip():
    total = CorpusReport("c.jsonl", "jsonl", max_chars=10)
    for offset in (0, 100):
        part = CorpusReport("c.jsonl", "jsonl", max_chars=10, lines=100, kept=90)
        for line in range(1, 11):
            part.skip("invalid_json", line)
        part.src_hist[3] = 90
        part.tgt_hist[5] = 90
        total.merge(part, offset)
    total.skip("duplicate", 150)
    d = total.to_dict()
    assert d["lines"] == 200 and d["kept"] == 179 and d["bad"] == 20
    assert d["skipped"]["invalid_json"] == {"count": 20, "reason": "not a JSON object", "first_lines": [1, 2, 3, 4, 5]}
    assert d["chars"]["src"] == {"min": 3, "mean": 3.0, "median": 3, "p95": 3, "max": 3}
    assert total.first_bad() == (1, "invalid_json")
    back = DataReport.from_dict(DataReport(total, splits={"train": 1}).to_dict(), max_chars=10)
    assert back.to_dict() == DataReport(total, splits={"train": 1}).to_dict()
