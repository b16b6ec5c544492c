"""The demo against the fixed baseline, in the same wall-time budget, on the same held-out set.

    python benchmarks/demo_vs_baseline.py [--minutes 10] [--workdir /tmp/mt-tune-demo-bench] [--spec SPEC]

Runs, one after the other, each in its own process:
  baseline: mt-tune train studies/baseline.yaml train.max_minutes=M
  demo:     mt-tune demo --minutes M
then scores both final checkpoints (best.pt) on the 500 held-out validation pairs with the
same greedy decoding and prints BLEU, chrF, wall and CPU time of each, and the ratio
demo / baseline. The machine's load average is printed too: other processes on the CPU slow
both runs, and with them how far a fixed number of minutes gets.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mt_tune.demo import heldout_score

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], log_path: Path) -> tuple[float, float]:
    """Run a command with its output in log_path; (wall seconds, CPU seconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=REPO)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return time.perf_counter() - start, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mt-tune-demo-bench"))
    ap.add_argument("--spec", type=Path, default=None, help="demo spec [default: studies/demo.yaml]")
    args = ap.parse_args()
    work = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    mt_tune = [sys.executable, "-m", "mt_tune.cli"]
    cache = f"data.cache_dir={work / 'cache'}"

    results = {}
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    wall, cpu = run([*mt_tune, "train", "studies/baseline.yaml", f"train.max_minutes={args.minutes}", cache,
                     "--out", str(work / "baseline")], work / "baseline.log")
    results["baseline"] = (heldout_score(work / "baseline" / "best.pt"), wall, cpu, os.getloadavg()[0])
    print(f"baseline done, load average {os.getloadavg()[0]:.1f}", flush=True)
    spec = ["--spec", str(args.spec.resolve())] if args.spec else []
    wall, cpu = run([*mt_tune, "demo", "--minutes", str(args.minutes), "--workdir", str(work / "demo"), *spec, cache],
                    work / "demo.log")
    results["demo"] = (heldout_score(work / "demo" / "demo-final" / "best.pt"), wall, cpu, os.getloadavg()[0])

    print(f"\n{'run':<10}{'BLEU':>8}{'chrF':>8}{'wall min':>10}{'CPU min':>9}{'load':>7}  sentences")
    for name, (s, wall, cpu, load) in results.items():
        print(f"{name:<10}{s['bleu']:>8.2f}{s['chrf']:>8.2f}{wall / 60:>10.1f}{cpu / 60:>9.1f}{load:>7.1f}  "
              f"{s['n_sentences']}")
    b, d = results["baseline"][0], results["demo"][0]
    ratio = f"x{d['bleu'] / b['bleu']:.2f} " if b["bleu"] > 0 else ""
    print(f"\ndemo / baseline: BLEU {ratio}({d['bleu'] - b['bleu']:+.2f} points), "
          f"chrF x{d['chrf'] / max(b['chrf'], 1e-9):.2f}")
    print(f"signature: {d['bleu_signature']}")
    print(f"logs: {work / 'baseline.log'}, {work / 'demo.log'}")


if __name__ == "__main__":
    main()
