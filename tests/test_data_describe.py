"""The plain-text summaries printed by the data commands."""

from mt_tune.data.describe import describe_report, describe_stats


def test_describe_report_and_stats():
    chars = {"min": 1, "mean": 2.0, "median": 2, "p95": 3, "max": 4}
    report = {"train": {"source": "c.tsv", "format": "tsv", "lines": 10, "kept": 8,
                        "skipped": {"empty_side": {"count": 2, "reason": "empty side", "first_lines": [3, 7]}},
                        "chars": {"src": chars, "tgt": chars}},
              "valid": None, "splits": {"valid": 2, "train": 6, "unused": 0, "vocab_sample": 6}}
    text = describe_report(report)
    assert "train corpus: c.tsv (tsv)" in text
    assert "skipped empty_side          2  empty side; first lines: 3, 7" in text
    assert "splits: 2 validation, 6 training pairs (0 beyond the scale)" in text
    side = {"pairs": 6, "src_tokens": 30, "tgt_tokens": 36, "src_tokens_per_sentence": 5.0,
            "tgt_tokens_per_sentence": 6.0, "src_unk_rate": 0.01, "tgt_unk_rate": 0.0}
    stats = {"vocab": {"type": "bpe", "joint": False, "src_size": 100, "tgt_size": 120, "cache_hit": True},
             "train": side, "valid": side, "dtype": "uint16", "cache_dir": "/c"}
    text = describe_stats(stats)
    assert "vocabulary: sentencepiece bpe, per side, size src 100, tgt 120 (cached)" in text
    assert "unknown rate src 1.000 %" in text and "66 training tokens" in text
