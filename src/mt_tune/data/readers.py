"""Corpus files: checks, format detection and streaming readers.

A corpus is read as a stream of raw records `(line, src, tgt, reason)`: `reason` is None for a
pair that parsed, or the skip reason of a line that did not (the cleaner handles the rest).
Nothing here holds more than one line in memory, so a 5M-line file reads in constant memory.

Large files are read in chunks (byte ranges that start and end on line boundaries) so that
several processes can read one file; line numbers inside a chunk count from 1 and the caller
shifts them by the lines of the chunks before it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mt_tune.data import sample
from mt_tune.errors import DataError

FORMATS = ("jsonl", "tsv", "moses", "sample")
JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
TSV_SUFFIXES = {".tsv", ".tab"}
# default JSON keys per language, after the language code itself (translation2019zh's names)
LANG_KEYS = {"zh": "chinese", "en": "english"}
SNIFF_BYTES = 64 * 1024
CHUNK_BYTES = 16 * 1024 * 1024  # ~100k translation2019zh lines: big enough to amortise a process hop
MIN_CHUNK_BYTES = 1024 * 1024  # smaller chunks for smaller files, so that every core gets work
CHUNK_LINES = 100_000  # Moses pairs are chunked by lines (the two files' byte offsets differ)

RawRecord = tuple[int, "str | None", "str | None", "str | None"]


@dataclass(frozen=True)
class Chunk:
    """A slice of a corpus: per file, the byte range [start, end) that it covers."""

    index: int
    ranges: tuple[tuple[int, int], ...]


@dataclass
class CorpusSource:
    """One corpus (training or validation) to read: its format, files and JSON keys."""

    format: str
    paths: list[Path] = field(default_factory=list)
    src_keys: tuple[str, ...] = ()
    tgt_keys: tuple[str, ...] = ()
    n_lines: int | None = None  # known up front only for Moses pairs (counted to compare the sides)
    # Moses pairs: byte offsets of every CHUNK_LINES-th line in each file (aligned chunks)
    _moses_marks: tuple[list[int], list[int]] = field(default_factory=lambda: ([0, 0], [0, 0]), repr=False)

    @property
    def name(self) -> str:
        if self.format == "sample":
            return f"the bundled sample ({sample.SAMPLE_NAME})"
        return " + ".join(str(p) for p in self.paths)

    def expected(self) -> str:
        """What one line of this corpus should look like, for error messages."""
        if self.format == "jsonl":
            return (f"one JSON object per line with string fields {' or '.join(map(repr, self.src_keys))} "
                    f"and {' or '.join(map(repr, self.tgt_keys))}")
        if self.format == "tsv":
            return "one pair per line: source<TAB>target"
        if self.format == "moses":
            return "one sentence per line in each file, line N of one file translating line N of the other"
        return "records with fields 'chinese' and 'translation.en'"

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.paths)

    def content_hash(self) -> str:
        """A hash of the corpus content and of how it is read (not of its paths or times)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{self.format}|{self.src_keys}|{self.tgt_keys}|".encode())
        if self.format == "sample":
            for number, src, tgt, reason in sample.iter_sample():
                h.update(f"{number}\x1f{src}\x1f{tgt}\x1f{reason}\n".encode())
            return h.hexdigest()
        for path in self.paths:
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            h.update(b"\x00file\x00")
        return h.hexdigest()

    def chunks(self, chunk_bytes: int | None = None) -> list[Chunk]:
        if self.format == "sample":
            return [Chunk(0, ())]
        if self.format == "moses":
            src, tgt = self._moses_marks
            return [Chunk(i, ((src[i], src[i + 1]), (tgt[i], tgt[i + 1]))) for i in range(len(src) - 1)]
        if chunk_bytes is None:  # at least two chunks per core where the file allows
            per_core = -(-os.path.getsize(self.paths[0]) // (2 * (os.cpu_count() or 1)))
            chunk_bytes = max(MIN_CHUNK_BYTES, min(CHUNK_BYTES, per_core))
        ranges = _line_aligned_ranges(self.paths[0], chunk_bytes)
        return [Chunk(i, (r,)) for i, r in enumerate(ranges)]

    def records(self, chunk: Chunk) -> Iterator[RawRecord]:
        if self.format == "sample":
            return sample.iter_sample()
        if self.format == "moses":
            return _moses_records(self.paths, chunk.ranges)
        start, end = chunk.ranges[0]
        if self.format == "jsonl":
            return _jsonl_records(self.paths[0], start, end, self.src_keys, self.tgt_keys)
        return _tsv_records(self.paths[0], start, end)


# --- opening: checks and detection ---------------------------------------------------------


def open_corpus(paths: list[str] | list[Path], format: str = "auto", *, src_lang: str = "zh",
                tgt_lang: str = "en", src_key: str = "", tgt_key: str = "") -> CorpusSource:
    """Check the files and settle the format; raise DataError naming what is wrong."""
    if format not in ("auto", *FORMATS):
        raise DataError(f"unknown corpus format {format!r}: expected one of auto, {', '.join(FORMATS)}")
    files = [Path(p) for p in paths]
    if format == "sample" or (format == "auto" and not files):
        if files:
            raise DataError(f"the 'sample' format takes no files, got {', '.join(map(str, files))}")
        return CorpusSource("sample")
    if len(files) > 2:
        raise DataError(f"give one corpus file, or two for a Moses pair; got {len(files)} files")
    heads = [_check_text_file(p) for p in files]
    if format == "auto":
        format = _detect(files, heads)
    if format == "moses" and len(files) != 2:
        raise DataError(f"{files[0]}: a Moses pair needs two files (e.g. train.{src_lang} and train.{tgt_lang})")
    if format != "moses" and len(files) != 1:
        raise DataError(f"the {format} format takes one file, got two: {files[0]}, {files[1]} "
                        "(two files are read as a Moses pair)")
    src_keys = (src_key,) if src_key else _default_keys(src_lang)
    tgt_keys = (tgt_key,) if tgt_key else _default_keys(tgt_lang)
    source = CorpusSource(format, files, src_keys, tgt_keys)
    if format == "moses":
        _count_moses(source)
    return source


def _default_keys(lang: str) -> tuple[str, ...]:
    return (lang, LANG_KEYS[lang]) if lang in LANG_KEYS else (lang,)


def _check_text_file(path: Path) -> bytes:
    """The first bytes of a readable text file; DataError for anything else."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a corpus file")
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    nul = head.find(b"\x00")
    if nul >= 0:
        line = head.count(b"\n", 0, nul) + 1
        raise DataError(f"{path}: not a text file (a NUL byte on line {line}, byte {nul}); "
                        "expected a UTF-8 text corpus")
    if head and _mostly_undecodable(head):
        raise DataError(f"{path}: not UTF-8 text (line 1 does not decode); expected a UTF-8 text corpus")
    return head


def _mostly_undecodable(head: bytes) -> bool:
    lines = head.split(b"\n")[:-1] or [head]
    bad = 0
    for line in lines:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad += 1
    return bad > len(lines) / 2


def _detect(files: list[Path], heads: list[bytes]) -> str:
    if len(files) == 2:
        return "moses"
    path, head = files[0], heads[0]
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in TSV_SUFFIXES:
        return "tsv"
    first = next((line for line in head.split(b"\n") if line.strip()), b"")
    text = first.decode("utf-8", errors="replace").lstrip("\ufeff").strip()
    if not text:
        raise DataError(f"{path}: the file is empty; expected a corpus")
    if text.startswith("{"):
        return "jsonl"
    if "\t" in text:
        return "tsv"
    line = head[: head.find(first)].count(b"\n") + 1
    raise DataError(f"{path}, line {line}: no recognisable corpus format: expected a JSON object per line "
                    "(jsonl) or source<TAB>target (tsv); a Moses pair is given as two files. "
                    "Name the format with --format or data.format")


def _line_aligned_ranges(path: Path, chunk_bytes: int) -> list[tuple[int, int]]:
    size = path.stat().st_size
    ranges, start = [], 0
    with open(path, "rb") as f:
        while start < size:
            end = min(start + chunk_bytes, size)
            if end < size:
                f.seek(end)
                f.readline()  # move the cut to the end of the line it falls in
                end = f.tell()
            ranges.append((start, end))
            start = end
    return ranges or [(0, 0)]


def _count_moses(source: CorpusSource, chunk_lines: int | None = None) -> None:
    """Count both sides' lines (an error if they differ) and note aligned chunk offsets."""
    chunk_lines = chunk_lines or CHUNK_LINES
    counts, offsets = [], []
    for path in source.paths:
        n, marks = 0, [0]
        with open(path, "rb") as f:
            for line in f:
                n += 1
                if n % chunk_lines == 0:
                    marks.append(f.tell())
            end = f.tell()
        if marks[-1] != end:
            marks.append(end)
        counts.append(n)
        offsets.append(marks if len(marks) > 1 else [0, 0])
    if counts[0] != counts[1]:
        a, b = source.paths
        raise DataError(f"{a} has {counts[0]} lines but {b} has {counts[1]}: a Moses pair needs the same "
                        f"number of lines in both files (line {min(counts) + 1} has no counterpart)")
    source.n_lines = counts[0]
    source._moses_marks = (offsets[0], offsets[1])


# --- the readers ---------------------------------------------------------------------------


def _lines(path: Path, start: int, end: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(start)
        pos = start
        for raw in f:
            if pos >= end:
                break
            pos += len(raw)
            yield raw


def _decode(raw: bytes, first: bool) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text.lstrip("\ufeff") if first else text


def _jsonl_records(path: Path, start: int, end: int, src_keys: tuple[str, ...],
                   tgt_keys: tuple[str, ...]) -> Iterator[RawRecord]:
    loads = json.loads
    for n, raw in enumerate(_lines(path, start, end), start=1):
        text = _decode(raw, start == 0 and n == 1)
        if text is None:
            yield n, None, None, "invalid_utf8"
            continue
        try:
            obj = loads(text)
        except ValueError:
            yield n, None, None, ("blank_line" if not text.strip() else "invalid_json")
            continue
        if not isinstance(obj, dict):
            yield n, None, None, "invalid_json"
            continue
        src = _first_field(obj, src_keys)
        tgt = _first_field(obj, tgt_keys)
        if isinstance(src, str) and isinstance(tgt, str):
            yield n, src, tgt, None
        else:
            yield n, None, None, "missing_field"


def _first_field(obj: dict, keys: tuple[str, ...]) -> object:
    for key in keys:
        if key in obj:
            return obj[key]
    return None


def _tsv_records(path: Path, start: int, end: int) -> Iterator[RawRecord]:
    for n, raw in enumerate(_lines(path, start, end), start=1):
        text = _decode(raw, start == 0 and n == 1)
        if text is None:
            yield n, None, None, "invalid_utf8"
            continue
        parts = text.rstrip("\r\n").split("\t")
        if len(parts) == 2:
            yield n, parts[0], parts[1], None
        else:
            yield n, None, None, ("blank_line" if not text.strip() else "bad_columns")


def _moses_records(paths: list[Path], ranges: tuple[tuple[int, int], ...]) -> Iterator[RawRecord]:
    src_lines = _lines(paths[0], *ranges[0])
    tgt_lines = _lines(paths[1], *ranges[1])
    first = ranges[0][0] == 0
    for n, (raw_src, raw_tgt) in enumerate(zip(src_lines, tgt_lines), start=1):
        src, tgt = _decode(raw_src, first and n == 1), _decode(raw_tgt, first and n == 1)
        if src is None or tgt is None:
            yield n, None, None, "invalid_utf8"
        else:
            yield n, src, tgt, None
