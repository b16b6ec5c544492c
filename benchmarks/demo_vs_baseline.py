"""The demo against the fixed baseline, with the same CPU time, on the same held-out set.

    python benchmarks/demo_vs_baseline.py [--minutes 10] [--workdir /tmp/mt-tune-demo-bench] [--spec SPEC]

Runs side by side, each in its own process with one torch thread (pinned to its own core
where `taskset` exists), for the same wall-time budget:
  baseline: mt-tune train studies/baseline.yaml train.max_minutes=M train.threads=1
  demo:     mt-tune demo --minutes M train.threads=1
Running them at the same time with one core each gives both the same CPU time even on a
machine that other jobs share, where two runs one after the other would meet different loads.
Both final checkpoints (best.pt) are then scored on the 500 held-out validation pairs with the
same greedy decoding. Printed: BLEU, chrF, wall and CPU time and the update of best.pt of
each, the load average, demo / baseline, and the demo's own lines on its search (the ranking
correlation) and on why its final config is what it is.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mt_tune.checkpoint import read_checkpoint
from mt_tune.demo import heldout_score

REPO = Path(__file__).resolve().parents[1]


def start(cmd: list[str], log_path: Path, core: int) -> subprocess.Popen:
    if shutil.which("taskset") and (os.cpu_count() or 1) > core:
        cmd = ["taskset", "-c", str(core), *cmd]
    return subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, cwd=REPO)


def wait_all(procs: dict[str, subprocess.Popen], t0: float) -> dict[str, tuple[float, float]]:
    """{name: (CPU seconds, wall seconds since t0)} of the children, each taken when it ends
    (whichever ends first); raises if one failed."""
    by_pid = {proc.pid: (name, proc) for name, proc in procs.items()}
    out = {}
    while by_pid:
        pid, status, usage = os.wait4(-1, 0)
        if pid not in by_pid:
            continue
        name, proc = by_pid.pop(pid)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{proc.args} failed with exit status {proc.returncode}")
        out[name] = (usage.ru_utime + usage.ru_stime, time.perf_counter() - t0)
    return out


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
    common = [f"data.cache_dir={work / 'cache'}", "train.threads=1"]
    spec = ["--spec", str(args.spec.resolve())] if args.spec else []

    # The vocabulary and shards of both data configs first, so neither run's clock pays for them.
    demo_spec = str(args.spec or "studies/demo.yaml")
    for cmd in ([*mt_tune, "data", "prepare", "studies/baseline.yaml", common[0]],
                [*mt_tune, "data", "prepare", demo_spec, common[0]]):
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)

    load_before = os.getloadavg()[0]
    print(f"load average before: {load_before:.1f} on {os.cpu_count()} CPUs", flush=True)
    t0 = time.perf_counter()
    baseline = start([*mt_tune, "train", "studies/baseline.yaml", f"train.max_minutes={args.minutes}", *common,
                      "--out", str(work / "baseline")], work / "baseline.log", core=0)
    demo = start([*mt_tune, "demo", "--minutes", str(args.minutes), "--workdir", str(work / "demo"), *spec,
                  *common], work / "demo.log", core=1)
    cpu = wait_all({"baseline": baseline, "demo": demo}, t0)
    load_after = os.getloadavg()[0]

    scores = {"baseline": heldout_score(work / "baseline" / "best.pt"),
              "demo": heldout_score(work / "demo" / "demo-final" / "best.pt")}
    steps = {name: read_checkpoint(path)["step"] for name, path in
             (("baseline", work / "baseline" / "best.pt"), ("demo", work / "demo" / "demo-final" / "best.pt"))}
    print(f"\n{'run':<10}{'BLEU':>8}{'chrF':>8}{'wall min':>10}{'CPU min':>9}{'update':>8}  held-out sentences")
    for name, s in scores.items():
        seconds, wall = cpu[name]
        print(f"{name:<10}{s['bleu']:>8.2f}{s['chrf']:>8.2f}{wall / 60:>10.2f}{seconds / 60:>9.2f}{steps[name]:>8}"
              f"  {s['n_sentences']}")
    b, d = scores["baseline"], scores["demo"]
    ratio = f"x{d['bleu'] / b['bleu']:.2f} " if b["bleu"] > 0 else ""
    print(f"\ndemo / baseline: BLEU {ratio}({d['bleu'] - b['bleu']:+.2f} points), "
          f"chrF x{d['chrf'] / max(b['chrf'], 1e-9):.2f}")
    print(f"load average: {load_before:.1f} before, {load_after:.1f} after")
    print(f"signature: {d['bleu_signature']}")
    # What the demo's search found and why its final config is what it is, as it printed them.
    for line in (work / "demo.log").read_text(encoding="utf-8").splitlines():
        if line.strip().startswith(("ranking after", "the short ranking", "final: trial", "updates in total")) \
                or " updates in total" in line:
            print("demo: " + line.strip())
    print(f"logs: {work / 'baseline.log'}, {work / 'demo.log'}")


if __name__ == "__main__":
    main()
