"""How much training the search's stopping rules save, and what they cost in BLEU.

    python benchmarks/pruning.py [--trials 8] [--max-steps 1500] [--scale 1k] [--model tiny|small]
                                 [--workers 1] [--workdir /tmp/mt-tune-pruning]
                                 [--only a,b,c] [--reuse RESULTS] [--replay RESULTS] [--explore] [--held-out]

Three studies on the bundled sample at the 1k scale (or --scale), run in parallel (one thread per
worker), with the same search space, the same sampler seed and the same number of trials, metric
BLEU, and a per-trial step budget far past the point where such a small corpus overfits:

  (a) baseline: no pruner, no divergence stop: every trial trains its full step budget
  (b) mt-tune's defaults: median pruner, divergence stop on loss *and* BLEU (divergence_on: both)
  (c) the same pruner, divergence stop on validation loss alone (divergence_on: loss)

Printed: total training steps of each, best BLEU of each, the ratios against (a), and the
steps (b) took (counting its trials in order) to first reach (a)'s best BLEU within 1 % (and 5, 10 %).
As a check, (b) and (c) are also replayed from (a)'s recorded evaluations through Optuna's
pruner and mt-tune's trial hook, then on 100 random orders of (a)'s trials (the trained order
is one draw of the sampler); --explore replays (a) under a grid of other settings (how the
defaults were chosen); --held-out scores the checkpoint each study would pick on the validation
sentences that picking did not see. Results go to WORKDIR/results.json; --reuse takes the studies not named
in --only from an earlier results.json, --replay trains nothing.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import multiprocessing
import os
import random
import resource
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import optuna

from mt_tune.search.samplers import STREAM_ENV
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

# --model small: a model that learns more than a few words (greedy BLEU 4-5 at the 1k scale,
# ~10 on the whole sample), evaluated less often on more sentences; about 4x the CPU per step.
MODELS = {
    "tiny": ({}, {}),
    "small": ({"d_model": 128, "enc_layers": 2, "dec_layers": 2, "ffn_dim": 512},
              {"max_tokens": 640, "warmup_steps": 100, "eval_every": 100, "bleu_sentences": 200, "log_every": 100}),
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
    model, train = MODELS[args.model]
    raw["model"].update(model)
    raw["train"].update(train)
    raw["data"]["cache_dir"] = str(args.workdir / "cache")
    return raw


def study_name_url(key: str, args: argparse.Namespace) -> tuple[str, str]:
    return f"pruning-{key}", f"sqlite:///{args.workdir / f'pruning-{key}.db'}"


def run_worker_process(key: str, args: argparse.Namespace, slot: int) -> tuple[float, float]:
    """One worker of study `key`, one thread, its share of the trials; returns its CPU seconds
    and the time it ended.
    With several workers a study's trials are numbered in the order they start, and each worker
    draws from its own sampler stream (as `mt-tune workers` does), so no two train the same
    configuration."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.workers > 1:
        os.environ[STREAM_ENV] = f"pruning/{slot}"
    name, url = study_name_url(key, args)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    run_worker(name, url, n_trials=args.trials // args.workers, artifacts=str(args.workdir / "artifacts"),
               log=lambda line: print(f"  [{key}{slot}] {line}", flush=True), seed_exact=args.workers == 1)
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu0, time.time()


def collect(key: str, args: argparse.Namespace, wall: float, cpu: float) -> dict:
    """A trained study's trials as plain data (what replay and the tables read)."""
    name, url = study_name_url(key, args)
    trials = sorted(optuna.load_study(study_name=name, storage=url).trials, key=lambda t: t.number)
    return {"trials": [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                        "steps": t.user_attrs.get("steps", 0), "stop_reason": t.user_attrs.get("stop_reason"),
                        "history": t.user_attrs.get("history", [])} for t in trials],
            "wall_s": wall, "cpu_s": cpu}


def completed(trials: list[dict]) -> list[dict]:
    return [t for t in trials if t["state"] == "COMPLETE"]


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
    b, c = summarise(results["b"]), summarise(results["c"])
    reach = {}
    for pct in (1, 5, 10):
        reach[pct] = steps_to_reach(results["b"]["trials"], (1 - pct / 100) * a["best"])
    print("(b) steps to reach (a)'s best BLEU within "
          + "; ".join(f"{pct} %: " + (f"{n:,} = {n / a['steps']:.2f} of (a)'s" if n is not None else "not reached")
                      for pct, n in reach.items()))
    fast = reach[1] is not None and reach[1] <= a["steps"] / 3
    print(f"targets: (b) trains <= 1/3 of (a)'s steps: {'met' if b['steps'] <= a['steps'] / 3 else 'missed'}; "
          f"(b) reaches (a)'s best within 1 % in <= 1/3 of (a)'s steps: {'met' if fast else 'missed'}; "
          f"(b) best BLEU >= (c): {'met' if b['best'] >= c['best'] else 'missed'}")


def over_orders(a_trials: list[dict], raw_b: dict, raw_c: dict | None = None, n: int = 100) -> dict:
    """`raw_b` (and `raw_c`) replayed on `n` random orders of (a)'s trials. The sampler draws
    every trial independently, so each order is as likely as the one trained: the single order
    above is one draw, and what the median pruner sees first changes with the order."""
    rng = random.Random(0)
    total = sum(t["steps"] for t in a_trials)
    target = 0.99 * max(t["value"] for t in a_trials)
    fractions, bests, reached, within, b_not_below_c = [], [], 0, 0, 0
    for _ in range(n):
        order = rng.sample(a_trials, len(a_trials))
        b = replay(order, raw_b)
        summary = summarise(b)
        fractions.append(summary["steps"] / total)
        bests.append(summary["best"])
        steps = steps_to_reach(b["trials"], target)
        reached += steps is not None
        within += steps is not None and steps <= total / 3
        if raw_c is not None:
            b_not_below_c += summary["best"] >= summarise(replay(order, raw_c))["best"]
    q1, median, q3 = statistics.quantiles(fractions, n=4)
    return {"steps": median, "steps_q1": q1, "steps_q3": q3, "best": statistics.median(bests),
            "reached": reached / n, "within": within / n, "b_not_below_c": b_not_below_c / n}


def orders(a_trials: list[dict], args: argparse.Namespace, n: int = 100) -> None:
    r = over_orders(a_trials, variant_spec("b", args), variant_spec("c", args), n)
    print(f"\nover {n} random orders of (a)'s trials (replayed): (b) trains a median {r['steps']:.2f} of (a)'s "
          f"steps (quartiles {r['steps_q1']:.2f}-{r['steps_q3']:.2f}), median best BLEU {r['best']:.2f}; reaches "
          f"(a)'s best within 1 % in {r['reached']:.0%} of orders, in <= 1/3 of (a)'s steps in {r['within']:.0%}; "
          f"(b)'s best >= (c)'s in {r['b_not_below_c']:.0%}")


def explore(a_trials: list[dict], args: argparse.Namespace, n: int = 20) -> None:
    """Replays (a)'s trials under other pruner and stopping settings, in the trained order and
    in `n` random orders: how the defaults were chosen."""
    best_a = max(t["value"] for t in a_trials)
    total_a = sum(t["steps"] for t in a_trials)
    print(f"\nother settings, replayed on (a)'s evaluations ({total_a:,} steps, best BLEU {best_a:.2f}); "
          f"the last three columns over {n} random orders:")
    print("patience | min_delta | divergence_on | median start-up trials | warm-up evals | steps | vs (a) | best BLEU"
          " | median vs (a) | median best | reach (a) in <= 1/3")
    grid = itertools.product((2, 3, 4, 6), (0.0, 0.1), ("both", "metric"), (2, 3), (2, 4, 8))
    for patience, min_delta, on, startup, warmup in grid:
        raw = variant_spec("b", args, {
            "stopping": {"patience": patience, "min_delta": min_delta, "divergence_on": on},
            "pruner": {"type": "median", "n_startup_trials": startup, "n_warmup_evals": warmup}})
        r = summarise(replay(a_trials, raw))
        o = over_orders(a_trials, raw, n=n)
        print(f"{patience:>8} | {min_delta:>9} | {on:>13} | {startup:>22} | {warmup:>13} | "
              f"{r['steps']:>5,} | {r['steps'] / total_a:>6.2f} | {r['best']:>9.2f} | "
              f"{o['steps']:>13.2f} | {o['best']:>11.2f} | {o['within']:>19.0%}")


def held_out(results: dict, args: argparse.Namespace) -> None:
    """The checkpoint each study picks, scored on the validation sentences its picking never saw
    (those after the first `bleu_sentences`). (a)'s pick is its best trial's best.pt; (b)'s and
    (c)'s picks are retrained from the same config to the step of their best (training is
    deterministic per seed: the retrained run repeats (a)'s evaluations exactly)."""
    import dataclasses

    import torch

    from mt_tune.checkpoint import load_checkpoint
    from mt_tune.data import prepare
    from mt_tune.decode import score, translate
    from mt_tune.train import Trainer

    torch.set_num_threads(1)
    a_trials = completed(results["a"]["trials"])
    n = variant_spec("a", args)["train"]["bleu_sentences"]
    print(f"\neach study's pick, scored on the validation sentences after the first {n} (greedy):")
    for key in VARIANTS:
        trials = a_trials if key == "a" else replay(a_trials, variant_spec(key, args))["trials"]
        best = max((t for t in trials if t["state"] == "COMPLETE"), key=lambda t: t["value"])
        # the step of its best BLEU, the first of equals (as the trial hook picks it)
        step = max(((row[3], row[0]) for row in best["history"] if row[3] is not None), key=lambda p: p[0])[1]
        path = args.workdir / "artifacts" / "pruning-a" / str(best["number"]) / "best.pt"
        if key != "a":
            _, cfg, _, _ = load_checkpoint(path)
            train = dataclasses.replace(cfg.train, max_steps=step, max_minutes=0.0, threads=1)
            out = args.workdir / f"pick-{key}"
            Trainer(dataclasses.replace(cfg, train=train), out, prepare(cfg.data), log=lambda *_: None).fit()
            path = out / "best.pt"
        model, cfg, src_tok, tgt_tok = load_checkpoint(path)
        data = prepare(cfg.data)
        hyps = translate(model, src_tok, tgt_tok, data.valid_src[n:])
        s = score(hyps, data.valid_ref[n:], tgt_lang=cfg.data.tgt_lang)
        print(f"({key}) trial {best['number']} at step {step:,} (BLEU {best['value']:.2f} on the first {n}): "
              f"BLEU {s['bleu']:.2f}, chrF {s['chrf']:.2f} on the other {len(hyps)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=1500)
    parser.add_argument("--scale", default="1k", help="training pairs of the sample: 1k (default), 2k, full")
    parser.add_argument("--model", choices=list(MODELS), default="tiny",
                        help="tiny: d_model 64, 1+1 layers (default); small: d_model 128, 2+2 layers")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mt-tune-pruning"))
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes per study (one thread each); --trials must be a multiple")
    parser.add_argument("--only", default="a,b,c", help="variants to run (the others are replayed from (a))")
    parser.add_argument("--reuse", type=Path, help="an earlier results.json: the studies not in --only come from it")
    parser.add_argument("--replay", type=Path, help="an earlier results.json: replay it, train nothing")
    parser.add_argument("--explore", action="store_true", help="also replay (a) under a grid of other settings")
    parser.add_argument("--held-out", action="store_true",
                        help="also score each study's pick on the validation sentences not used to pick it")
    args = parser.parse_args()
    if args.workers < 1 or args.trials % args.workers:
        parser.error(f"--trials {args.trials} must be a multiple of --workers {args.workers}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    if args.replay:
        results = json.loads(args.replay.read_text())
        args.trials, args.max_steps = results["args"]["trials"], results["args"]["max_steps"]
        args.scale = results["args"].get("scale", "1k")
        args.model = results["args"].get("model", "tiny")
        args.workdir = args.replay.parent  # (a)'s checkpoints, for --held-out
    else:
        keys = args.only.split(",")
        results = {}
        settings = {"trials": args.trials, "max_steps": args.max_steps, "scale": args.scale, "model": args.model}
        if args.reuse:
            prior = json.loads(args.reuse.read_text())
            if {"scale": "1k", "model": "tiny", **prior["args"]} != settings:  # older files name neither
                raise SystemExit(f"{args.reuse}: made with {prior['args']}, not this run's settings")
            results = {k: prior[k] for k in VARIANTS if k not in keys and k in prior}
        shutil.rmtree(args.workdir, ignore_errors=True)
        args.workdir.mkdir(parents=True)
        print(f"pruning benchmark: {args.trials} trials x {args.max_steps} steps per study, {args.scale} scale, metric BLEU "
              f"(greedy, {variant_spec('a', args)['train']['bleu_sentences']} validation sentences), "
              f"{args.model} model; studies {keys} in parallel",
              flush=True)
        # prepare the data once, so the studies do not race to build the same cache
        from mt_tune.data import prepare

        prepare(build_spec(variant_spec("a", args)).run_config().data)
        for key in keys:
            name, url = study_name_url(key, args)
            create_study(build_spec(variant_spec(key, args)), name=name, storage_url=url)
        start = time.time()
        with ProcessPoolExecutor(len(keys) * args.workers, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = {key: [pool.submit(run_worker_process, key, args, slot) for slot in range(args.workers)]
                       for key in keys}
            for key, jobs in futures.items():
                cpu, ended = zip(*(f.result() for f in jobs))
                results[key] = collect(key, args, max(ended) - start, sum(cpu))
        results["args"] = settings
        (args.workdir / "results.json").write_text(json.dumps(results))
        print(f"results: {args.workdir / 'results.json'}")

    ran = [k for k in VARIANTS if k in results]
    if "a" not in results:
        raise SystemExit("(a) is needed: the others are replayed from its evaluations")
    replayed = {"a": results["a"], **{k: replay(completed(results["a"]["trials"]), variant_spec(k, args)) for k in ("b", "c")}}
    if ran == list(VARIANTS):
        print_table(results, "trained:")
    print_table(replayed, "(b) and (c) replayed on (a)'s evaluations (a check on the trained figures):")
    orders(completed(results["a"]["trials"]), args)
    if args.explore:
        explore(completed(results["a"]["trials"]), args)
    if args.held_out:
        held_out(results, args)


if __name__ == "__main__":
    main()
