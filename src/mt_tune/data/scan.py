"""Passes 1 and 3 of data preparation: scan a corpus, then route its clean pairs to their splits.

scan_corpus reads and cleans every line (in parallel over chunks of a large file) and writes the
clean pairs with their hash to temporary files, keeping only the hashes in memory; route_pairs
reads them back in corpus order, drops duplicates and writes the training pairs of the scale and
the vocabulary sample. read_valid_pairs does the scan for a separate validation file.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mt_tune.config import DataConfig
from mt_tune.data.clean import REASONS, Cleaner, CorpusReport
from mt_tune.data.pool import chunk_pool, ordered_map
from mt_tune.data.progress import Progress
from mt_tune.data.readers import Chunk, CorpusSource
from mt_tune.data.splits import SplitPlan, pair_hash
from mt_tune.errors import DataError


@dataclass
class _ChunkScan:
    index: int
    report: CorpusReport  # line numbers local to the chunk
    hashes: np.ndarray
    path: Path
    size: int


@dataclass
class CorpusScan:
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


def scan_corpus(source: CorpusSource, cleaner: Cleaner, work: Path, exclude: set[int], bar: Progress) -> CorpusScan:
    chunks = source.chunks()
    total = source.size_bytes() if source.format != "sample" else None
    bar.stage(f"reading {source.name}", total)
    report = CorpusReport(source.name, source.format, cleaner.max_chars)
    files: list[tuple[Path, int]] = []
    hash_file = work / "hashes.u64"
    with open(hash_file, "wb") as hf, chunk_pool(len(chunks)) as pool:
        tasks = [(source, chunk, cleaner, work, exclude) for chunk in chunks]
        results = ordered_map(pool, _scan_task, tasks) if pool else map(_scan_task, tasks)
        for part in results:
            files.append((part.path, report.lines))
            report.merge(part.report, report.lines)
            part.hashes.tofile(hf)  # on disk, not in a list: the hashes are read back in one piece
            bar.advance(part.size)
    hashes = np.fromfile(hash_file, dtype=np.uint64)
    hash_file.unlink()
    return CorpusScan(report, hashes, files)


def check_bad_fraction(source: CorpusSource, report: CorpusReport, max_bad_fraction: float) -> None:
    if report.lines == 0:
        raise DataError(f"{source.name}: the corpus is empty; expected {source.expected()}")
    if report.bad > max_bad_fraction * report.lines or report.kept == 0:
        line, reason = report.first_bad() or (1, "empty_side")
        where = source.paths[0] if source.format in ("jsonl", "tsv") else source.name
        raise DataError(f"{where}: {report.bad} of {report.lines} lines are unusable "
                        f"({100 * report.bad / report.lines:.0f}%, more than data.max_bad_fraction="
                        f"{max_bad_fraction}); first at line {line}: {REASONS[reason]}; "
                        f"expected {source.expected()}")


def read_valid_pairs(source: CorpusSource, cleaner: Cleaner, cfg: DataConfig, work: Path,
                bar: Progress) -> tuple[list[tuple[str, str]], CorpusReport]:
    """The validation file's clean pairs, in file order, without duplicates."""
    valid_work = work / "valid"
    valid_work.mkdir()
    scan = scan_corpus(source, cleaner, valid_work, set(), bar)
    check_bad_fraction(source, scan.report, cfg.max_bad_fraction)
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


def route_pairs(scan: CorpusScan, plan: SplitPlan | None, repeats: set[int], bar: Progress, work: Path | None = None,
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
