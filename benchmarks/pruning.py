"""How much training the search's stopping rules save, and what they cost in BLEU.

    python benchmarks/pruning.py [--trials 8] [--max-steps 1500] [--scale 1k] [--workdir /tmp/mt-tune-pruning]
                                 [--only a,b,c] [--reuse RESULTS] [--replay RESULTS] [--explore]

Three studies on the bundled sample at the 1k scale (or --scale), run in parallel (one thread each), with
the same search space, the same sampler seed and the same number of trials, metric BLEU, and a
per-trial step budget far past the point where such a small corpus overfits:

  (a) baseline: no pruner, no divergence stop: every trial trains its full step budget
  (b) mt-tune's defaults: median pruner, divergence stop on loss *and* BLEU (divergence_on: both)
  (c) the same pruner, divergence stop on validation loss alone (divergence_on: loss)

Printed: total training steps of each, best BLEU of each, the ratios against (a), and the
steps (b) took (counting its trials in order) to first reach (a)'s best BLEU within 1 %.
As a check, (b) and (c) are also replayed from (a)'s recorded evaluations through Optuna's
pruner and mt-tune's trial hook; --explore replays (a) under a grid of other settings (how the
defaults were chosen). Results go to WORKDIR/results.json; --reuse takes the studies not named
in --only from an earlier results.json, --replay trains nothing.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import multiprocessing
import resource
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import optuna

from mt_tune.search.spec import build_spec
from mt_tune.search.study import create_study
from mt_tune.search.worker import run_worker

BASE = {
    "name": "pruning",
    "data": {"format": "sample", "scale": "1k", "vocab_size": 2000, "valid_size": 500},
    "model": {"d_model": 64, "n_heads": 4, "enc_layers": 1, "dec_layers": 1, "ffn_dim": 256},
    "train": {"max_tokens": 512, "warmup_steps": 50, "eval_every": 50, "bleu_sentences": 100, "log_every": 50,
              "threads": 1},
    # Learning rates at which this small model overfits 1k pairs within a few hundred updates:
    # the regime the stopping rules are for (at lower rates nothing overfits within the budget).
    "search": {
        "train.lr": {"type": "float", "low": 2.0e-3, "high": 2.0e-2, "log": True},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
    },
    "metric": "bleu",
    # Random sampling with a seed: every study trains the same configurations in the same
    # order, so the differences below are the stopping rules' alone (and (a) can be replayed).
    "sampler": {"type": "random", "seed": 1},
}

VARIANTS = {
    "a": ("no pruning, no divergence stop", {"pruner": {"type": "none"}, "stopping": {"divergence_on": "none"}}),
    "b": ("mt-tune defaults", {}),
    "c": ("divergence stop on val loss alone", {"stopping": {"divergence_on": "loss"}}),
}


def variant_spec(key: str, args: argparse.Namespace, overrides: dict | None = None) -> dict:
    raw = copy.deepcopy(BASE)
    raw.update(copy.deepcopy(VARIANTS[key][1]))
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)
    raw["budget"] = {"trials": args.trials, "max_steps": args.max_steps}
    raw["data"]["scale"] = args.scale
    raw["data"]["cache_dir"] = str(args.workdir / "cache")
    return raw


def run_variant(key: str, args: argparse.Namespace) -> dict:
    """One study, in its own process and storage file; returns its trials as plain data."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = build_spec(variant_spec(key, args))
    url = f"sqlite:///{args.workdir / f'pruning-{key}.db'}"
    name = f"pruning-{key}"
    create_study(spec, name=name, storage_url=url)
    start, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_utime
    run_worker(name, url, artifacts=str(args.workdir / "artifacts"), log=lambda line: print(f"  [{key}] {line}", flush=True))
    wall, cpu = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu0
    trials = sorted(optuna.load_study(study_name=name, storage=url).trials, key=lambda t: t.number)
    return {"trials": [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                        "steps": t.user_attrs.get("steps", 0), "stop_reason": t.user_attrs.get("stop_reason"),
                        "history": t.user_attrs.get("history", [])} for t in trials],
            "wall_s": wall, "cpu_s": cpu}


def summarise(run: dict) -> dict:
    trials = run["trials"]
    return {"steps": sum(t["steps"] for t in trials),
            "best": max((t["value"] for t in trials if t["state"] == "COMPLETE"), default=0.0),
            "reasons": [t["stop_reason"] for t in trials]}


def replay(trials: list[dict], raw_spec: dict) -> dict:
    """What a study with `raw_spec`'s pruner and stopping rules would have done with the
    evaluations of trials that ran to their step budget: Optuna's own pruner and mt-tune's own
    trial hook, fed the recorded evaluations in trial order. Exact when the trials' parameters
    do not depend on earlier results (a random sampler), as in this benchmark."""
    from mt_tune.search.objective import TrialHook
    from mt_tune.search.pruners import build_pruner
    from mt_tune.train import EvalResult, StopTraining

    spec = build_spec(raw_spec)
    study = optuna.create_study(direction="maximize", pruner=build_pruner(spec))
    out = []
    for t in trials:
        trial = study.ask()
        hook = TrialHook(trial, spec)
        reason, steps = "max_steps", t["steps"]
        for step, loss, per_char, bleu, chrf in t["history"]:
            result = EvalResult(step=step, val_loss=loss, val_loss_per_char=per_char, bleu=bleu, chrf=chrf,
                                lr=0.0, train_loss=0.0, tokens_per_s=0.0, elapsed_s=0.0)
            try:
                hook(None, result)
            except optuna.TrialPruned:
                reason, steps = "pruned", step
                break
            except StopTraining:
                reason, steps = "diverged", step
                break
        best = hook.best()
        if reason == "pruned" or best is None:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, best[0])
        out.append({"number": t["number"], "state": "PRUNED" if reason == "pruned" else "COMPLETE",
                    "value": best[0] if best else None, "steps": steps, "stop_reason": reason,
                    "history": hook.history})
    return {"trials": out}


def steps_to_reach(trials: list[dict], target: float) -> int | None:
    """Training steps spent, trials in order, until an evaluation's BLEU first reached `target`."""
    spent = 0
    for t in trials:
        for step, _loss, _per_char, bleu, _chrf in t["history"]:
            if bleu is not None and bleu >= target:
                return spent + step
        spent += t["steps"]
    return None


def print_table(results: dict, title: str) -> None:
    a = summarise(results["a"])
    print(f"\n{title}\nstudy                                  | train steps | vs (a) | best BLEU | stop reasons"
          + (" | wall s | CPU s" if "cpu_s" in results["a"] else ""))
    for key, (name, _) in VARIANTS.items():
        r = summarise(results[key])
        reasons = ", ".join(f"{x} {r['reasons'].count(x)}" for x in sorted(set(r["reasons"]), key=str))
        times = (f" | {results[key]['wall_s']:>6.0f} | {results[key]['cpu_s']:>5.0f}" if "cpu_s" in results[key] else "")
        print(f"({key}) {name:<34} | {r['steps']:>11,} | {r['steps'] / a['steps']:>6.2f} | {r['best']:>9.2f} | "
              f"{reasons}{times}")
    target = 0.99 * a["best"]
    reached = steps_to_reach(results["b"]["trials"], target)
    b, c = summarise(results["b"]), summarise(results["c"])
    print(f"(b) steps to reach (a)'s best BLEU within 1 % ({target:.2f}): "
          + (f"{reached:,} = {reached / a['steps']:.2f} of (a)'s steps" if reached is not None else "not reached"))
    print(f"targets: (b) steps <= 1/3 of (a): {'met' if b['steps'] <= a['steps'] / 3 else 'missed'}; "
          f"(b) reaches (a)'s best within 1 %: {'met' if reached is not None else 'missed'}; "
          f"(b) best BLEU >= (c): {'met' if b['best'] >= c['best'] else 'missed'}")


def explore(a_trials: list[dict], args: argparse.Namespace) -> None:
    """Replays (a)'s trials under other pruner and stopping settings: how the defaults were chosen."""
    best_a = max(t["value"] for t in a_trials)
    total_a = sum(t["steps"] for t in a_trials)
    print(f"\nother settings, replayed on (a)'s evaluations ({total_a:,} steps, best BLEU {best_a:.2f}):")
    print("patience | min_delta | divergence_on | median start-up trials | warm-up evals | steps | vs (a) | best BLEU")
    grid = itertools.product((2, 3, 4, 6), (0.0, 0.1), ("both", "metric"), (2, 3), (2, 4, 8))
    for patience, min_delta, on, startup, warmup in grid:
        raw = variant_spec("b", args, {
            "stopping": {"patience": patience, "min_delta": min_delta, "divergence_on": on},
            "pruner": {"type": "median", "n_startup_trials": startup, "n_warmup_evals": warmup}})
        r = summarise(replay(a_trials, raw))
        print(f"{patience:>8} | {min_delta:>9} | {on:>13} | {startup:>22} | {warmup:>13} | "
              f"{r['steps']:>5,} | {r['steps'] / total_a:>6.2f} | {r['best']:>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=1500)
    parser.add_argument("--scale", default="1k", help="training pairs of the sample: 1k (default), 2k, full")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mt-tune-pruning"))
    parser.add_argument("--only", default="a,b,c", help="variants to run (the others are replayed from (a))")
    parser.add_argument("--reuse", type=Path, help="an earlier results.json: the studies not in --only come from it")
    parser.add_argument("--replay", type=Path, help="an earlier results.json: replay it, train nothing")
    parser.add_argument("--explore", action="store_true", help="also replay (a) under a grid of other settings")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    if args.replay:
        results = json.loads(args.replay.read_text())
        args.trials, args.max_steps = results["args"]["trials"], results["args"]["max_steps"]
        args.scale = results["args"].get("scale", "1k")
    else:
        keys = args.only.split(",")
        results = {}
        if args.reuse:
            prior = json.loads(args.reuse.read_text())
            if prior["args"] != {"trials": args.trials, "max_steps": args.max_steps, "scale": args.scale}:
                raise SystemExit(f"{args.reuse}: made with {prior['args']}, not this run's settings")
            results = {k: prior[k] for k in VARIANTS if k not in keys and k in prior}
        shutil.rmtree(args.workdir, ignore_errors=True)
        args.workdir.mkdir(parents=True)
        print(f"pruning benchmark: {args.trials} trials x {args.max_steps} steps per study, {args.scale} scale, metric BLEU "
              f"(greedy, {BASE['train']['bleu_sentences']} validation sentences); studies {keys} in parallel",
              flush=True)
        # prepare the data once, so the studies do not race to build the same cache
        from mt_tune.data import prepare

        prepare(build_spec(variant_spec("a", args)).run_config().data)
        with ProcessPoolExecutor(len(keys), mp_context=multiprocessing.get_context("fork")) as pool:
            futures = {key: pool.submit(run_variant, key, args) for key in keys}
            results.update({key: f.result() for key, f in futures.items()})
        results["args"] = {"trials": args.trials, "max_steps": args.max_steps, "scale": args.scale}
        (args.workdir / "results.json").write_text(json.dumps(results))
        print(f"results: {args.workdir / 'results.json'}")

    ran = [k for k in VARIANTS if k in results]
    if "a" not in results:
        raise SystemExit("(a) is needed: the others are replayed from its evaluations")
    replayed = {"a": results["a"], **{k: replay(results["a"]["trials"], variant_spec(k, args)) for k in ("b", "c")}}
    if ran == list(VARIANTS):
        print_table(results, "trained:")
    print_table(replayed, "(b) and (c) replayed on (a)'s evaluations (a check on the trained figures):")
    if args.explore:
        explore(results["a"]["trials"], args)


if __name__ == "__main__":
    main()
