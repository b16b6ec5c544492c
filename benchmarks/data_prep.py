"""Benchmark: corpus preparation speed and memory at 100k, 1M and 5M lines.

Corpora in translation2019zh's format ({"english": ..., "chinese": ...} per line) are made by
resampling the bundled sentences: each line joins one to three random sample pairs, so nearly
every line is distinct. Each size is prepared in a fresh process; the figures:

  pairs/s    lines read / seconds of prepare() without vocabulary training (read, clean,
             hash, split, encode, write shards); vocabulary training is timed apart
  peak RSS   the largest sum of proportional set sizes (PSS) of the process and its pool
             workers, sampled every 0.2 s, outside vocabulary training (reported apart)

Baseline, measured in the same run: the obvious in-memory pipeline (json.loads every line into
lists, a Python set for duplicates, encode everything at once) with the same tokenizer, on the
sizes where it fits (default up to 1M lines). Medians of --repeats runs (--large-repeats above 1M).

  python benchmarks/data_prep.py [--sizes 100k,1M,5M] [--repeats 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

VOCAB = {"vocab_size": 8000, "vocab_sample": 20_000, "valid_size": 2000}


def parse_size(text: str) -> int:
    from mt_tune.config import parse_scale

    return parse_scale(text)


def make_corpus(path: Path, n_lines: int, seed: int = 0) -> None:
    from mt_tune.data.sample import iter_sample

    pairs = [(json.dumps(zh, ensure_ascii=False), json.dumps(en, ensure_ascii=False)[1:-1])
             for _, zh, en, reason in iter_sample() if reason is None]
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n_lines):
            k = rng.choice((1, 2, 2, 3))
            chosen = [pairs[rng.randrange(len(pairs))] for _ in range(k)]
            zh = "".join(zh[1:-1] for zh, _ in chosen)
            en = " ".join(en for _, en in chosen)
            f.write(f'{{"english": "{en}", "chinese": "{zh}"}}\n')


class PeakMemory:
    """Samples the PSS of this process and its children; keeps the peak per phase."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.phase = "prepare"
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _pss(self) -> int:
        total = 0
        for p in [self._proc, *self._proc.children(recursive=True)]:
            try:
                total += p.memory_full_info().pss
            except Exception:  # a worker that just exited
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self._pss()
            self.peak[self.phase] = max(self.peak.get(self.phase, 0), rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measure_prepare(corpus: Path, cache: Path) -> dict:
    """In this (fresh) process: prepare the corpus once and report times and memory."""
    import importlib

    from mt_tune.config import DataConfig, build_section
    from mt_tune.data import prepare

    prepare_module = importlib.import_module("mt_tune.data.prepare")  # the module, not the function

    cfg = build_section(DataConfig, {"train": [str(corpus)], "cache_dir": str(cache), **VOCAB}, "data")
    with PeakMemory() as mem:
        train_vocab = prepare_module._train_vocab

        def timed_vocab(*args, **kw):  # memory of sentencepiece training is reported apart
            mem.phase = "vocab"
            try:
                return train_vocab(*args, **kw)
            finally:
                mem.phase = "prepare"

        prepare_module._train_vocab = timed_vocab
        t0 = time.perf_counter()
        data = prepare(cfg)
        total = time.perf_counter() - t0
    assert not data.cache_hit, f"{cache} held a cache: nothing was measured"
    lines = data.report.train.lines
    vocab_s = data.stats["timings"]["vocab_s"]
    return {"lines": lines, "train_pairs": len(data.train), "total_s": total, "vocab_s": vocab_s,
            "pairs_per_s": lines / (total - vocab_s), "peak_pss": mem.peak.get("prepare", 0),
            "vocab_peak_pss": mem.peak.get("vocab", 0), "model": str(next(data.cache_dir.parent.glob("vocab-*")))}


def measure_baseline(corpus: Path, model_dir: str) -> dict:
    """The in-memory pipeline: every line parsed into lists, set dedup, one big encode."""
    from mt_tune.data import Tokenizer

    tok = Tokenizer(Path(model_dir) / "joint.model")
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        srcs, tgts, seen = [], [], set()
        with open(corpus, encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                zh, en = " ".join(d["chinese"].split()), " ".join(d["english"].split())
                if (zh, en) in seen:
                    continue
                seen.add((zh, en))
                srcs.append(zh)
                tgts.append(en)
        src_ids, tgt_ids = tok.encode(srcs), tok.encode(tgts)
        total = time.perf_counter() - t0
    return {"lines": len(srcs), "pairs_per_s": len(srcs) / total, "peak_pss": mem.peak.get("prepare", 0),
            "tokens": sum(map(len, src_ids)) + sum(map(len, tgt_ids))}


def in_fresh_process(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100k,1M,5M")
    ap.add_argument("--repeats", type=int, default=3, help="runs per size up to 1M lines")
    ap.add_argument("--large-repeats", type=int, default=1, help="runs per size above 1M lines")
    ap.add_argument("--baseline-max", default="1M", help="largest size the in-memory baseline runs on")
    ap.add_argument("--workdir", default=None, help="where corpora and caches go (default: a temp dir)")
    ap.add_argument("--measure", nargs=2, metavar=("CORPUS", "CACHE"), help=argparse.SUPPRESS)
    ap.add_argument("--baseline", nargs=2, metavar=("CORPUS", "MODEL_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure_prepare(Path(args.measure[0]), Path(args.measure[1]))))
        return
    if args.baseline:
        print(json.dumps(measure_baseline(Path(args.baseline[0]), args.baseline[1])))
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="mt-tune-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size_text in args.sizes.split(","):
        n = parse_size(size_text)
        corpus = work / f"corpus-{size_text}.jsonl"
        if not corpus.exists():
            t = time.perf_counter()
            make_corpus(corpus, n)
            print(f"made {corpus} ({corpus.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.0f} s",
                  file=sys.stderr)
        runs = []
        repeats = args.repeats if n <= 1_000_000 else args.large_repeats
        for r in range(repeats):
            cache = work / f"cache-{size_text}-{r}"
            shutil.rmtree(cache, ignore_errors=True)  # a cache hit would measure nothing
            runs.append(in_fresh_process("--measure", str(corpus), str(cache)))
            print(f"{size_text} run {r + 1}: {runs[-1]['pairs_per_s']:,.0f} pairs/s, "
                  f"peak {runs[-1]['peak_pss'] / 2**20:,.0f} MiB", file=sys.stderr)
        row = {"size": size_text, "runs": repeats, "lines": runs[0]["lines"], "train_pairs": runs[0]["train_pairs"],
               "pairs_per_s": statistics.median(x["pairs_per_s"] for x in runs),
               "peak_mib": statistics.median(x["peak_pss"] for x in runs) / 2**20,
               "vocab_s": statistics.median(x["vocab_s"] for x in runs),
               "vocab_peak_mib": statistics.median(x["vocab_peak_pss"] for x in runs) / 2**20}
        if n <= parse_size(args.baseline_max):
            base = [in_fresh_process("--baseline", str(corpus), runs[0]["model"]) for _ in range(repeats)]
            row["baseline_pairs_per_s"] = statistics.median(x["pairs_per_s"] for x in base)
            row["baseline_peak_mib"] = statistics.median(x["peak_pss"] for x in base) / 2**20
        rows.append(row)

    print(f"\ndata preparation, medians of fresh-process runs "
          f"(vocab: joint unigram {VOCAB['vocab_size']}, sample {VOCAB['vocab_sample']:,} pairs)")
    print(f"{'lines':>6} {'runs':>4} {'pairs/s':>10} {'peak MiB':>9} {'vocab s':>8} {'vocab MiB':>10} "
          f"{'baseline pairs/s':>17} {'baseline MiB':>13}")
    for row in rows:
        base = (f"{row['baseline_pairs_per_s']:>17,.0f} {row['baseline_peak_mib']:>13,.0f}"
                if "baseline_pairs_per_s" in row else f"{'-':>17} {'-':>13}")
        print(f"{row['size']:>6} {row['runs']:>4} {row['pairs_per_s']:>10,.0f} {row['peak_mib']:>9,.0f} {row['vocab_s']:>8.1f} "
              f"{row['vocab_peak_mib']:>10,.0f} {base}")
    first, last = rows[0], rows[-1]
    print(f"peak memory {last['size']} / {first['size']}: {last['peak_mib'] / first['peak_mib']:.2f}x (target <= 1.2x)")
    for row in rows:
        if "baseline_pairs_per_s" in row:
            print(f"{row['size']}: speed vs in-memory baseline {row['pairs_per_s'] / row['baseline_pairs_per_s']:.2f}x, "
                  f"memory {row['peak_mib'] / row['baseline_peak_mib']:.2f}x")
    print(f"work dir: {work}")


if __name__ == "__main__":
    main()
