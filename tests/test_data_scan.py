"""Scanning a corpus into clean-pair files and routing them back: duplicates and bad lines."""

import json

import numpy as np
import pytest

from mt_tune.data.clean import Cleaner
from mt_tune.data.progress import Progress
from mt_tune.data.readers import open_corpus
from mt_tune.data.scan import check_bad_fraction, read_valid_pairs, route_pairs, scan_corpus
from mt_tune.data.splits import pair_hash
from mt_tune.errors import DataError

PAIRS = [(f"我是学生{i}。", f"I am student {i}.") for i in range(10)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" if isinstance(r, dict) else r + "\n"
                            for r in rows), encoding="utf-8")
    return path


def rows(pairs):
    return [{"zh": zh, "en": en} for zh, en in pairs]


def test_scan_keeps_hashes_and_route_counts_duplicates_with_their_lines(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", rows(PAIRS + [PAIRS[2], PAIRS[4]]) + ["{bad"])
    source, cleaner = open_corpus([path]), Cleaner(max_chars=200)
    excluded = pair_hash(*PAIRS[9])
    with Progress(False) as bar:
        scan = scan_corpus(source, cleaner, tmp_path, {excluded}, bar)
        assert scan.report.lines == 13 and scan.report.kept == 12
        assert scan.report.skipped == {"invalid_json": 1, "in_valid": 1}
        assert sorted(scan.hashes.tolist()) == sorted(pair_hash(*p) for p in PAIRS[:9] + [PAIRS[2], PAIRS[4]])
        scan.hashes.sort()
        repeats = {pair_hash(*PAIRS[2]), pair_hash(*PAIRS[4])}
        assert route_pairs(scan, None, repeats, bar) == []
    assert scan.report.skipped["duplicate"] == 2
    assert scan.report.first_lines["duplicate"] == [11, 12]
    assert isinstance(scan.hashes, np.ndarray)


def test_read_valid_pairs_in_file_order_without_duplicates(tmp_path):
    path = write_jsonl(tmp_path / "valid.jsonl", rows([PAIRS[3], PAIRS[1], PAIRS[3]]))
    (tmp_path / "work").mkdir()
    from mt_tune.config import DataConfig

    with Progress(False) as bar:
        pairs, report = read_valid_pairs(open_corpus([path]), Cleaner(max_chars=200), DataConfig(), tmp_path / "work",
                                         bar)
    assert pairs == [PAIRS[3], PAIRS[1]] and report.skipped == {"duplicate": 1}


def test_check_bad_fraction_names_the_first_bad_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", rows(PAIRS[:2]) + ["{bad"] * 3)
    source = open_corpus([path])
    with Progress(False) as bar:
        scan = scan_corpus(source, Cleaner(max_chars=200), tmp_path, set(), bar)
    check_bad_fraction(source, scan.report, 0.7)
    with pytest.raises(DataError, match=r"bad.jsonl: 3 of 5 lines are unusable .* first at line 3"):
        check_bad_fraction(source, scan.report, 0.5)
