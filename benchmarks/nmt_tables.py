"""The search policy judged on recorded real NMT trainings: configurations looked up, not trained.

    python benchmarks/nmt_tables.py TABLE.json [TABLE.json ...] [--seeds 50] [--budget 10] [--json]
                                    [--jobs 2] [--set POLICY:section.key=VALUE ...]

A table (the format of Zhang & Duh's NMTHPO / NMTLC benchmarks, TACL 2020 / AMTA 2024, MIT
licence) lists trained configurations: `hyperparams`, a `ppl_curve` (dev perplexity at each
checkpoint) and either `dev_bleu` (from scratch: BLEU of the best-perplexity checkpoint) or a
`bleu_curve` (fine-tuning: BLEU at each checkpoint). Each policy is a real Optuna study built
as mt-tune builds one: a spec (build_spec) whose space is the table's grid, one categorical per
hyperparameter on an mt-tune field; mt-tune's sampler, pruner and divergence stop; its TrialHook
fed one EvalResult per checkpoint (val_loss = ln ppl). Only the training is replaced. A
suggestion that repeats a tried configuration goes through mt-tune's own repeat handling
(mt_tune/search/repeats.py), and so does a combination the table lacks: the suggestion ends
untrained as a FAIL trial (the sampler skips those) and the next trial, queued with its nearest
untried neighbour's values, trains it, so that no result is recorded under values not trained.
The study's metric is BLEU, mt-tune's default: a trial's value is its BLEU, the sampler learns
from it. From scratch, BLEU was recorded for the final model only: a trial is credited with
dev_bleu only if it ran to its curve's minimum (one stopped earlier has no BLEU, is never the
pick, and is told to the study as pruned), and the BLEU each checkpoint shows the pruner and
the divergence stop is a stand-in, linear in the loss per unit of text (ln ppl x the dev set's
relative subword count: a loss per subword does not compare across vocabularies), fitted on the
table. Fine-tuning: BLEU at every checkpoint, a trial's BLEU is its best so far. Every policy
picks the credited trial of highest BLEU. Measures, mean and population sd over seeds:
  ftc           trials sampled until a credited one is within 0.5 BLEU of the table's best
                (the TACL paper's scripts/eval_single.py); ftc_compute: the compute until then.
                A study that stops without one (not_found) counts what it ran, a lower bound,
                and the ftc target is met only if no study is such
  regret        best BLEU minus the pick's when the compute reaches --budget full trainings
                (compute in checkpoints, a full training = the mean curve; a trial running at
                the cut counts what it had by then)
  checkpoints_fraction  checkpoints run / full curves of the trials run
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna

from mt_tune.errors import ConfigError
from mt_tune.search.objective import TrialHook
from mt_tune.search.pruners import build_pruner
from mt_tune.search.repeats import NEIGHBOUR_OF_ATTR, queue_neighbour
from mt_tune.search.samplers import build_sampler
from mt_tune.search.spec import StudySpec
from mt_tune.train import EvalResult, StopTraining

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nmt_table import STAND_INS, Config, Table, TableError  # noqa: E402, F401  (a sibling file)

TOLERANCE = 0.5  # BLEU, as the TACL paper's ftc
OFF = {"pruner": {"type": "none"}, "stopping": {"divergence_on": "none"}}
POLICIES = {"random": {"sampler": {"type": "random"}, **OFF}, "random+stop": {"sampler": {"type": "random"}},
            "tpe": dict(OFF), "mt-tune": {}}


def policy_spec(table: Table, policy: str, seed: int, budget: float, sets: dict | None = None) -> StudySpec:
    return table.spec(POLICIES[policy], seed, budget, (sets or {}).get(policy, {}))


@dataclass
class Record:
    cfg: Config
    used: int  # checkpoints run
    pruned: bool
    mapped: bool

    @property
    def bleu(self) -> float | None:
        """The BLEU the study knows for this trial when it ends (never for a pruned one)."""
        return None if self.pruned else self.cfg.bleu_after(self.used)


class Remapped(Exception):
    """A suggestion the table lacks or that was tried already; its nearest untried neighbour is queued."""


class TableObjective:
    """A trial: sample through the spec, look up, replay the curve through mt-tune's hook."""

    def __init__(self, table: Table, spec: StudySpec):
        self.table, self.spec = table, spec
        self.records: list[Record] = []
        self.tried: set = set()

    def unavailable(self, params: dict) -> bool:
        """Tried already, or a combination the table lacks."""
        cfg = self.table.by_key.get(self.table.decode(params))
        return cfg is None or cfg.id in self.tried

    def __call__(self, trial: optuna.Trial) -> float:
        params = self.spec.suggest(trial)
        if self.unavailable(params):
            # mt-tune's own handling of a repeat (mt_tune/search/repeats.py), here also for a
            # combination the table lacks: the suggestion ends untrained (FAIL: the sampler skips
            # it) and its nearest untried neighbour, queued, trains next under its own values.
            queued = queue_neighbour(trial, self.spec.search, params, self.unavailable)
            if queued is None:  # nothing left to try
                trial.study.stop()
                raise Remapped("no untried configuration left")
            raise Remapped(str(self.table.by_key[self.table.decode(queued)].id))
        cfg = self.table.by_key[self.table.decode(params)]
        self.tried.add(cfg.id)
        mapped = NEIGHBOUR_OF_ATTR in trial.user_attrs  # the queued neighbour of a remapped suggestion
        trial.set_user_attr("config_id", cfg.id)
        hook, used, reason = TrialHook(trial, self.spec), len(cfg.ppl), "max_steps"
        try:
            for i, ppl in enumerate(cfg.ppl):
                loss = math.log(ppl)
                per_text = loss * cfg.relative_length
                hook(None, EvalResult(step=(i + 1) * self.table.every, val_loss=loss, val_loss_per_char=per_text,
                                      bleu=cfg.bleu[i] if cfg.bleu else self.table.stand_in_bleu(per_text),
                                      chrf=None, lr=0.0,
                                      train_loss=loss, tokens_per_s=0.0, elapsed_s=0.0))
        except optuna.TrialPruned:
            used, reason = i + 1, "pruned"
        except StopTraining as e:
            used, reason = i + 1, e.reason
        record = Record(cfg, used, reason == "pruned"
                        or (reason == "diverged" and self.spec.stopping.on_divergence == "prune"), mapped)
        self.records.append(record)
        trial.set_user_attr("stop_reason", reason)
        trial.set_user_attr("steps", used * self.table.every)
        if record.bleu is not None:
            trial.set_user_attr("bleu", record.bleu)
        if record.pruned or record.bleu is None:  # no BLEU: ranked by the sampler as pruned ones are
            raise optuna.TrialPruned(reason)
        return record.bleu


def run_study(table: Table, policy: str, seed: int, budget: float, storage_url: str | None = None,
              sets: dict | None = None, limit: float | None = None) -> list[Record]:
    """One study until its compute reaches the budget and a trial within TOLERANCE of the best
    is credited, or it has run 3x the trials random search needs on average (its ftc then is
    censored: the study has lost against random search by far), or every configuration has
    been tried, or the compute reaches `limit` full trainings."""
    spec = policy_spec(table, policy, seed, budget, sets)
    name = f"{spec.name}-{policy}-{seed}"
    if storage_url:
        from mt_tune.search.storage import open_storage
        from mt_tune.search.study import create_study

        create_study(spec, name=name, storage_url=storage_url)
        study = optuna.load_study(study_name=name, storage=open_storage(storage_url), sampler=build_sampler(spec),
                                  pruner=build_pruner(spec))
    else:
        study = optuna.create_study(study_name=name, direction=spec.direction, sampler=build_sampler(spec),
                                    pruner=build_pruner(spec))
    objective = TableObjective(table, spec)
    cut, target = budget * table.mean_len, table.best_bleu - TOLERANCE
    near = sum(c.bleu_after(len(c.ppl)) >= target for c in table.configs)
    cap = 3 * (len(table.configs) + 1) / (near + 1)  # random search without replacement: (N+1)/(K+1)

    seen = {"records": 0, "spent": 0, "found": False}  # over the records so far, kept up as they come

    def enough(study: optuna.Study, _trial: object) -> None:
        rs = objective.records
        for r in rs[seen["records"]:]:
            seen["spent"] += r.used
            seen["found"] = seen["found"] or (r.bleu is not None and r.bleu >= target)
        seen["records"] = len(rs)
        spent = seen["spent"]
        if (spent >= cut and (len(rs) >= cap or seen["found"])
                or (limit is not None and spent >= limit * table.mean_len)):
            study.stop()

    return replay(study, objective, enough)


def replay(study: optuna.Study, objective: TableObjective, *callbacks) -> list[Record]:
    """Run the study's trials until every configuration has been trained or a callback stops it.
    A remapped suggestion is a FAIL trial followed by the queued one: at most two per configuration."""
    n = len(objective.table.configs)

    def all_trained(study: optuna.Study, _trial: object) -> None:
        if len(objective.records) >= n:
            study.stop()

    study.optimize(objective, n_trials=2 * n, callbacks=[*callbacks, all_trained], gc_after_trial=False,
                   catch=(Remapped,))
    return objective.records


def measure(table: Table, records: list[Record], budget: float) -> dict:
    target, cut = table.best_bleu - TOLERANCE, budget * table.mean_len
    ftc = ftc_compute = None
    spent = 0
    for n, r in enumerate(records, 1):
        if ftc is None and r.bleu is not None and r.bleu >= target:
            ftc, ftc_compute = n, (spent + r.cfg.known_at(target)) / table.mean_len
        spent += r.used
    found = ftc is not None
    if not found:  # censored
        ftc, ftc_compute = len(records), spent / table.mean_len
    pick, start = None, 0
    for r in records:
        if start >= cut:
            break
        b = r.bleu if start + r.used <= cut + 1e-9 else r.cfg.bleu_after(math.floor(cut - start + 1e-9))
        if b is not None and (pick is None or b > pick):
            pick = b
        start += r.used
    return {"ftc": ftc, "ftc_compute": ftc_compute, "found": found, "no_pick": pick is None,
            "regret": table.best_bleu - (pick if pick is not None else table.worst_bleu),
            "used": spent, "full": sum(len(r.cfg.ppl) for r in records), "trials": len(records),
            "mapped": sum(r.mapped for r in records), "pruned": sum(r.pruned for r in records),
            "no_credit": sum(r.bleu is None and not r.pruned for r in records)}


_tables: dict[str, Table] = {}


def _job(args: tuple) -> tuple:
    path, policy, seed, budget, sets = args
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # not a warning per remapped suggestion (FAIL)
    warnings.simplefilter("ignore")
    table = _tables.setdefault(path, _tables.get(path) or Table(path))
    return path, policy, measure(table, run_study(table, policy, seed, budget, sets=sets), budget)


def summarise(runs: list[dict]) -> dict:
    pick = lambda k: [r[k] for r in runs]  # noqa: E731
    return {"ftc_mean": statistics.fmean(pick("ftc")), "ftc_sd": statistics.pstdev(pick("ftc")),
            "ftc_compute_mean": statistics.fmean(pick("ftc_compute")),
            "regret_mean": statistics.fmean(pick("regret")), "regret_sd": statistics.pstdev(pick("regret")),
            "checkpoints_fraction": sum(pick("used")) / sum(pick("full")),
            "trials_mean": statistics.fmean(pick("trials")), "mapped_mean": statistics.fmean(pick("mapped")),
            "no_credit_mean": statistics.fmean(pick("no_credit")), "pruned_mean": statistics.fmean(pick("pruned")),
            "ftc_not_found": sum(not r["found"] for r in runs), "no_pick": sum(pick("no_pick"))}


def parse_sets(items: list[str]) -> dict:
    """`POLICY:section.key=value` -> {policy: {section.key: value}} (values parsed as JSON)."""
    out: dict = {}
    for item in items:
        policy, _, rest = item.partition(":")
        key, eq, text = rest.partition("=")
        if policy not in POLICIES or not eq or "." not in key:
            raise TableError(f"--set {item!r}: expected POLICY:section.key=value with POLICY one of "
                             f"{', '.join(POLICIES)}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out.setdefault(policy, {})[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tables", nargs="+")
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--budget", type=float, default=10.0, help="full trainings of compute for the regret")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--set", action="append", default=[], metavar="POLICY:KEY=VALUE",
                    help="change a policy's spec, e.g. mt-tune:stopping.patience=8")
    ap.add_argument("--policies", default=",".join(POLICIES),
                    help="comma-separated subset of the policies to run (the targets need random and mt-tune)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.seeds < 1 or args.budget <= 0 or args.jobs < 1:
            raise TableError("--seeds and --jobs must be >= 1 and --budget > 0")
        sets = parse_sets(args.set)
        policies = [p for p in args.policies.split(",") if p]
        if not policies or any(p not in POLICIES for p in policies):
            raise TableError(f"--policies {args.policies!r}: expected a comma-separated subset of {', '.join(POLICIES)}")
        tables = {p: Table(p) for p in args.tables}
        for t in tables.values():
            for policy in policies:
                policy_spec(t, policy, 0, args.budget, sets)  # a bad --set fails here, before any study
    except (TableError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    jobs = [(p, pol, seed, args.budget, sets) for p in tables for pol in policies for seed in range(args.seeds)]
    results: dict = {p: {pol: [] for pol in policies} for p in tables}
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        for path, policy, m in (map(_job, jobs) if args.jobs == 1 else pool.imap_unordered(_job, jobs, chunksize=4)):
            results[path][policy].append(m)
    out = {"tables": {t.corpus: {"n_configs": len(t.configs), "best_bleu": t.best_bleu, "grid_size": t.grid_size,
                                 "mean_curve": t.mean_len, "skipped_without_curve": t.skipped,
                                 "policies": {pol: summarise(runs) for pol, runs in results[p].items()}}
                      for p, t in tables.items()},
           "seeds": args.seeds, "budget": args.budget, "wall_s": round(time.perf_counter() - start, 1)}
    if args.json:
        print(json.dumps(out))
    else:
        print_report(tables, out)
    return 0


def print_report(tables: dict, out: dict) -> None:
    print(f"{out['seeds']} seeds, regret at {out['budget']:g} full trainings, {out['wall_s']} s (tables: Zhang & "
          f"Duh, NMTHPO TACL 2020 / NMTLC AMTA 2024, MIT licence). mapped: trials whose combination the table "
          f"lacks or that was tried already, given the nearest untried one; no credit: stopped before the minimum")
    cols = ("ftc", "ftc_sd", "ftc_compute", "regret", "regret_sd", "ckpt_frac", "trials", "mapped", "pruned",
            "no_credit", "not_found")
    for t in tables.values():
        r = out["tables"][t.corpus]
        print(f"\n{t.corpus}: {len(t.configs)} configurations" + (f" ({t.skipped} without a curve left out)"
                                                               if t.skipped else "")
              + f", grid {t.grid_size}, mean curve {t.mean_len:.1f} checkpoints, best BLEU {t.best_bleu:g}; "
              + "; ".join(f"{'+'.join(d.names)} -> {d.field}" + ("" if d.choices == [v[0] for v in d.values]
                                                                  else " (index)") for d in t.dims))
        print(f"  {'policy':<12}" + "".join(f"{c:>12}" for c in cols))
        for pol, s in r["policies"].items():
            keys = ("ftc_mean", "ftc_sd", "ftc_compute_mean", "regret_mean", "regret_sd", "checkpoints_fraction",
                    "trials_mean", "mapped_mean", "pruned_mean", "no_credit_mean", "ftc_not_found")
            print(f"  {pol:<12}" + "".join(f"{s[k]:>12.2f}" for k in keys))
        if not {"random", "mt-tune"} <= r["policies"].keys():
            continue
        rnd, mt = r["policies"]["random"], r["policies"]["mt-tune"]
        # A study that never found a trial within TOLERANCE has only a lower bound for its ftc:
        # a mean over such studies proves nothing against a "<=" target.
        censored = mt["ftc_not_found"]
        ok = [mt["regret_mean"] <= rnd["regret_mean"] / 3,
              mt["ftc_compute_mean"] <= 0.5 * rnd["ftc_mean"] and not censored]
        print(f"  targets: mt-tune regret <= random's / 3 ({rnd['regret_mean'] / 3:.2f}): {'met' if ok[0] else 'NOT met'}"
              f"; mt-tune ftc_compute <= 0.5 x random's ftc ({0.5 * rnd['ftc_mean']:.1f}): "
              f"{'met' if ok[1] else 'NOT met'}"
              + (f" ({censored} of {out['seeds']} studies never found one: their ftc is a lower bound)"
                 if censored else ""))


if __name__ == "__main__":
    sys.exit(main())
