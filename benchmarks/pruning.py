"""How much training the search's stopping rules save, and what they cost in BLEU.

    python benchmarks/pruning.py [--trials 6] [--max-steps 1000] [--workdir /tmp/mt-tune-pruning]

Three studies on the bundled sample at the 1k scale, each with the same search space, the same
sampler seed and the same number of trials, metric BLEU, and a per-trial step budget far past
the point where such a small corpus overfits:

  (a) baseline: no pruner, no divergence stop: every trial trains its full step budget
  (b) mt-tune's defaults: median pruner, divergence stop on loss *and* BLEU (divergence_on: both)
  (c) the same pruner, divergence stop on validation loss alone (divergence_on: loss)

Printed: total training steps of each, best BLEU of each, the ratios against (a), and the
steps (b) took (counting its trials in order) to first reach (a)'s best BLEU within 1 %.
"""

from __future__ import annotations

import argparse
import copy
import resource
import shutil
import time
from pathlib import Path

import optuna

from mt_tune.search.spec import build_spec
from mt_tune.search.study import create_study
from mt_tune.search.worker import run_worker

BASE = {
    "name": "pruning",
    "data": {"format": "sample", "scale": "1k", "vocab_size": 2000, "valid_size": 500},
    "model": {"d_model": 64, "n_heads": 4, "enc_layers": 1, "dec_layers": 1, "ffn_dim": 256},
    "train": {"max_tokens": 512, "warmup_steps": 100, "eval_every": 40, "bleu_sentences": 60, "log_every": 50,
              "threads": 1},
    "search": {
        "train.lr": {"type": "float", "low": 3.0e-4, "high": 1.0e-2, "log": True},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
    },
    "metric": "bleu",
    "sampler": {"type": "tpe", "seed": 1},
}

VARIANTS = {
    "a": ("no pruning, no divergence stop", {"pruner": {"type": "none"}, "stopping": {"divergence_on": "none"}}),
    "b": ("mt-tune defaults", {}),
    "c": ("divergence stop on val loss alone", {"stopping": {"divergence_on": "loss"}}),
}


def run_variant(key: str, changes: dict, args: argparse.Namespace) -> dict:
    raw = copy.deepcopy(BASE)
    raw.update(copy.deepcopy(changes))
    raw["budget"] = {"trials": args.trials, "max_steps": args.max_steps}
    raw["data"]["cache_dir"] = str(args.workdir / "cache")
    spec = build_spec(raw)
    url = f"sqlite:///{args.workdir / 'pruning.db'}"
    name = f"pruning-{key}"
    create_study(spec, name=name, storage_url=url)
    start, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_utime
    run_worker(name, url, artifacts=str(args.workdir / "artifacts"), log=lambda line: print(f"  [{key}] {line}", flush=True))
    wall, cpu = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu0
    trials = sorted(optuna.load_study(study_name=name, storage=url).trials, key=lambda t: t.number)
    return {"trials": trials, "steps": sum(t.user_attrs.get("steps", 0) for t in trials),
            "best": max((t.value for t in trials if t.state.name == "COMPLETE"), default=0.0),
            "reasons": [t.user_attrs.get("stop_reason") for t in trials], "wall_s": wall, "cpu_s": cpu}


def steps_to_reach(trials: list, target: float) -> int | None:
    """Training steps spent, trials in order, until an evaluation's BLEU first reached `target`."""
    spent = 0
    for t in trials:
        for step, _loss, _per_char, bleu, _chrf in t.user_attrs.get("history", []):
            if bleu is not None and bleu >= target:
                return spent + step
        spent += t.user_attrs.get("steps", 0)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mt-tune-pruning"))
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    print(f"pruning benchmark: {args.trials} trials x {args.max_steps} steps per study, 1k scale, metric BLEU "
          f"(greedy, {BASE['train']['bleu_sentences']} validation sentences)", flush=True)
    results = {}
    for key, (title, changes) in VARIANTS.items():
        print(f"({key}) {title}", flush=True)
        results[key] = run_variant(key, changes, args)

    a = results["a"]
    print("\nstudy                                  | train steps | vs (a) | best BLEU | stop reasons | wall s | CPU s")
    for key, (title, _) in VARIANTS.items():
        r = results[key]
        reasons = ", ".join(f"{x} {r['reasons'].count(x)}" for x in sorted(set(r["reasons"]), key=str))
        print(f"({key}) {title:<34} | {r['steps']:>11,} | {r['steps'] / a['steps']:>6.2f} | {r['best']:>9.2f} | "
              f"{reasons} | {r['wall_s']:>6.0f} | {r['cpu_s']:>5.0f}")
    target = 0.99 * a["best"]
    reached = steps_to_reach(results["b"]["trials"], target)
    print(f"\n(b) steps to reach (a)'s best BLEU within 1 % ({target:.2f}): "
          + (f"{reached:,} = {reached / a['steps']:.2f} of (a)'s steps" if reached is not None else "not reached"))
    print(f"targets: (b) steps <= 1/3 of (a): {'met' if results['b']['steps'] <= a['steps'] / 3 else 'missed'}; "
          f"(b) best BLEU >= (c): {'met' if results['b']['best'] >= results['c']['best'] else 'missed'}")


if __name__ == "__main__":
    main()
