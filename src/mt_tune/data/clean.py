"""Cleaning pairs, and the corpus report that counts every skipped line by reason.

A pair is kept when both sides are non-empty after whitespace normalisation, neither is longer
than `max_chars` characters, and the length ratio (with Chinese characters weighted as
CJK_WEIGHT letters each) stays within `max_ratio`. Exact duplicates are found later, from the
pair hashes (see splits.py), and counted here too.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

import numpy as np

# Why a line was skipped. Reasons marked bad count towards `max_bad_fraction`; duplicates and
# pairs that are also in the validation file are fine lines, just not used twice.
REASONS = {
    "invalid_utf8": "not valid UTF-8",
    "blank_line": "blank line",
    "invalid_json": "not a JSON object",
    "missing_field": "missing or non-string field",
    "bad_columns": "not source<TAB>target",
    "placeholder": "placeholder instead of a translation",
    "empty_side": "empty side",
    "too_long": "a side longer than max_chars",
    "bad_ratio": "length ratio beyond max_ratio",
    "duplicate": "exact duplicate of an earlier pair",
    "in_valid": "pair also in the validation set",
}
NOT_BAD = {"duplicate", "in_valid"}
FIRST_LINES = 5  # line numbers kept per reason
# A Chinese character carries about as much as three letters of English: weight it so that
# the length ratio of a good zh-en pair is near 1 whichever side is which.
CJK_WEIGHT = 3.0
CJK_LANGS = {"zh", "ja", "ko"}


@dataclass
class Cleaner:
    max_chars: int = 400
    max_ratio: float = 9.0
    nfkc: bool = False
    src_weight: float = 1.0
    tgt_weight: float = 1.0

    @classmethod
    def from_config(cls, cfg) -> Cleaner:
        return cls(cfg.max_chars, cfg.max_ratio, cfg.nfkc,
                   CJK_WEIGHT if cfg.src_lang in CJK_LANGS else 1.0,
                   CJK_WEIGHT if cfg.tgt_lang in CJK_LANGS else 1.0)

    def clean(self, src: str, tgt: str) -> tuple[str, str, str | None]:
        """(clean src, clean tgt, None) or ("", "", reason)."""
        if self.nfkc:
            src = unicodedata.normalize("NFKC", src)
            tgt = unicodedata.normalize("NFKC", tgt)
        # split() without arguments splits on every Unicode space (also tabs, newlines,
        # the ideographic space), so the clean text is one line with single spaces
        src = " ".join(src.split())
        tgt = " ".join(tgt.split())
        if not src or not tgt:
            return "", "", "empty_side"
        ns, nt = len(src), len(tgt)
        if ns > self.max_chars or nt > self.max_chars:
            return "", "", "too_long"
        ws, wt = ns * self.src_weight, nt * self.tgt_weight
        if max(ws, wt) > self.max_ratio * min(ws, wt):
            return "", "", "bad_ratio"
        return src, tgt, None


def _length_stats(hist: np.ndarray) -> dict:
    n = int(hist.sum())
    if n == 0:
        return {"min": 0, "mean": 0.0, "median": 0, "p95": 0, "max": 0}
    lengths = np.flatnonzero(hist)
    cdf = np.cumsum(hist)
    return {"min": int(lengths[0]), "mean": round(float((hist * np.arange(len(hist))).sum() / n), 2),
            "median": int(np.searchsorted(cdf, 0.5 * n)), "p95": int(np.searchsorted(cdf, 0.95 * n)),
            "max": int(lengths[-1])}


@dataclass
class CorpusReport:
    """Counts of one corpus: lines read, pairs kept, skips by reason (with first line numbers)
    and character-length histograms of the kept pairs, per side."""

    source: str
    format: str
    max_chars: int
    lines: int = 0
    kept: int = 0  # pairs that passed cleaning (duplicates still counted here)
    skipped: dict[str, int] = field(default_factory=dict)
    first_lines: dict[str, list[int]] = field(default_factory=dict)
    src_hist: np.ndarray = None  # type: ignore[assignment]
    tgt_hist: np.ndarray = None  # type: ignore[assignment]
    saved_chars: dict | None = None  # length stats of a report read back from JSON

    def __post_init__(self) -> None:
        if self.src_hist is None:
            self.src_hist = np.zeros(self.max_chars + 1, dtype=np.int64)
        if self.tgt_hist is None:
            self.tgt_hist = np.zeros(self.max_chars + 1, dtype=np.int64)

    def skip(self, reason: str, line: int) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        first = self.first_lines.setdefault(reason, [])
        if len(first) < FIRST_LINES:
            first.append(line)

    @property
    def bad(self) -> int:
        return sum(n for reason, n in self.skipped.items() if reason not in NOT_BAD)

    @property
    def pairs(self) -> int:
        """Usable pairs: kept by cleaning, minus duplicates and pairs of the validation file."""
        return self.kept - sum(self.skipped.get(r, 0) for r in NOT_BAD)

    def merge(self, part: CorpusReport, line_offset: int) -> None:
        """Add the counts of a chunk whose line numbers start after `line_offset` lines."""
        self.lines += part.lines
        self.kept += part.kept
        for reason, n in part.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + n
            first = self.first_lines.setdefault(reason, [])
            first.extend(line_offset + x for x in part.first_lines[reason][: FIRST_LINES - len(first)])
        self.src_hist += part.src_hist
        self.tgt_hist += part.tgt_hist

    def first_bad(self) -> tuple[int, str] | None:
        firsts = [(lines[0], r) for r, lines in self.first_lines.items() if r not in NOT_BAD and lines]
        return min(firsts) if firsts else None

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "format": self.format,
            "lines": self.lines,
            "kept": self.pairs,
            "bad": self.bad,
            "skipped": {r: {"count": n, "reason": REASONS.get(r, r), "first_lines": self.first_lines.get(r, [])}
                        for r, n in sorted(self.skipped.items(), key=lambda kv: -kv[1])},
            "chars": self.saved_chars or {"src": _length_stats(self.src_hist), "tgt": _length_stats(self.tgt_hist)},
        }

    @classmethod
    def from_dict(cls, d: dict, max_chars: int) -> CorpusReport:
        """A report read back from its JSON (the histograms are not saved, their stats are)."""
        report = cls(d["source"], d["format"], max_chars, lines=d["lines"], saved_chars=d["chars"])
        report.skipped = {r: v["count"] for r, v in d["skipped"].items()}
        report.first_lines = {r: list(v["first_lines"]) for r, v in d["skipped"].items()}
        report.kept = d["kept"] + sum(report.skipped.get(r, 0) for r in NOT_BAD)
        return report


@dataclass
class DataReport:
    """Everything `data check` / `data prepare` report: the training corpus, the validation
    file (when one is given) and how the pairs were split."""

    train: CorpusReport
    valid: CorpusReport | None = None
    splits: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"train": self.train.to_dict(), "valid": self.valid.to_dict() if self.valid else None,
                "splits": dict(self.splits)}

    @classmethod
    def from_dict(cls, d: dict, max_chars: int) -> DataReport:
        valid = CorpusReport.from_dict(d["valid"], max_chars) if d.get("valid") else None
        return cls(CorpusReport.from_dict(d["train"], max_chars), valid, dict(d.get("splits", {})))
