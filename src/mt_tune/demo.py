"""`mt-tune demo`: the whole loop on the bundled sample, in a fixed wall-time budget.

    search (short trials, the baseline first) ─► promotion: the top trials continued for
    longer ─► pick and export the final config ─► final training (continues that trial's
    checkpoint) ─► BLEU on the held-out set

Everything lives in one working directory: the embedded storage (mt-tune.db), checkpoints
(mt-tune-artifacts/), the data cache, the exported config, the final run and HTML reports.

Where the minutes go. On a 2-core CPU ten minutes are about 900-1,800 updates of the
baseline's model (one thread or two), and its BLEU is still rising steeply when they end (README, Baseline
quality): every minute not spent training the final config costs BLEU. So all phases train at
the same (full) scale and nothing is retrained: a promoted trial continues its search trial's
checkpoint, and the final run continues the chosen promoted trial's. The search and the
promotion together get a small share of the budget (SEARCH_SHARE, PROMOTION_SHARE); the
first search trial is the warm start (the spec's search_start: the baseline), and the
final run trains it on unless a promoted trial beats it in a comparison that means something
(pick_final). Trials that short cannot overrule a tuned baseline, and the demo says so.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna

from mt_tune.config import format_scale, load_run_config
from mt_tune.errors import UserError
from mt_tune.search.export import export_config
from mt_tune.search.objective import DivergenceStop
from mt_tune.search.promote import promote, ranked_trials
from mt_tune.search.report import write_report
from mt_tune.search.spec import StudySpec, load_spec
from mt_tune.search.storage import open_storage
from mt_tune.search.study import create_study
from mt_tune.search.transfer import transfer_report
from mt_tune.search.worker import run_worker

DEMO_MARK = "mt_tune_demo"  # user attr on the demo's studies: a rerun may replace them

# Shares of the budget for the search trials' and the promoted trials' training (each trial
# also spends a second or two on set-up, one evaluation and a checkpoint). What is not the
# final config's is overhead: with 8 search and 6 promoted trials, about 10 % of ten minutes.
SEARCH_SHARE = 0.02
PROMOTION_SHARE = 0.02
TOP_K = 6  # promoted trials, the warm start among them: enough for a rank correlation to print

# A promoted trial replaces the warm start only when its loss is lower by this fraction, and
# only when both trials trained past their warmup: before that, a lower loss says how fast
# the learning rate rose, not how good the model will be.
CLEAR_MARGIN = 0.02

# The final run evaluates like the baseline (every 400 updates), with BLEU on 100 validation
# sentences to keep the best checkpoint and to stop once it overfits, as a trial does.
FINAL_OVERRIDES = ["train.eval_every=400", "train.bleu_sentences=100", "train.keep_best_by=bleu",
                   "train.max_steps=1000000"]


def default_spec_path() -> Path:
    """studies/demo.yaml: from the working directory, else from the source tree mt-tune runs from."""
    here = Path("studies/demo.yaml")
    if here.is_file():
        return here
    repo = Path(__file__).resolve().parents[2] / "studies" / "demo.yaml"
    if repo.is_file():
        return repo
    raise UserError("studies/demo.yaml not found (run the demo from the mt-tune repository, or pass --spec)")


@dataclass
class Plan:
    """Seconds of training per trial; the final run gets the rest, less `reserve_s` for the
    held-out scoring and the reports."""

    minutes: float
    trials: int
    top_k: int
    search_s: float  # a search trial's time limit
    promoted_s: float  # a promoted trial's, counted from its search trial's start (it continues)
    reserve_s: float


def plan(minutes: float, trials: int, top_k: int) -> Plan:
    if minutes < 1:
        raise UserError(f"--minutes: at least 1, got {minutes}")
    if top_k < 1:
        raise UserError(f"--top-k: at least 1, got {top_k}")
    total = 60 * minutes
    search_s = SEARCH_SHARE * total / trials
    return Plan(minutes, trials, top_k, search_s=search_s,
                promoted_s=search_s + PROMOTION_SHARE * total / top_k, reserve_s=max(10.0, 0.02 * total))


@dataclass
class DemoResult:
    search_study: str
    promoted_study: str
    exported: Path
    checkpoint: Path
    bleu: float
    chrf: float
    bleu_signature: str
    n_sentences: int
    wall_s: float
    reports: list[Path]
    final_trial: int  # of the promoted study
    reason: str  # why the final config is that trial's


def heldout_score(checkpoint: Path, beam: int = 1) -> dict:
    """BLEU/chrF of a checkpoint on the whole validation set of its own data config: the pairs
    held out from training (the trials scored at most their first bleu_sentences)."""
    from mt_tune.checkpoint import load_checkpoint
    from mt_tune.data import prepare
    from mt_tune.decode import evaluate

    model, cfg, src_tok, tgt_tok = load_checkpoint(checkpoint)
    data = prepare(cfg.data)
    _, scores = evaluate(model, src_tok, tgt_tok, data.valid_src, data.valid_ref, tgt_lang=cfg.data.tgt_lang,
                         beam=beam)
    return dict(scores, n_sentences=len(data.valid_src))


def _warmup(spec: StudySpec, trial: optuna.trial.FrozenTrial) -> int:
    return int(trial.params.get("train.warmup_steps", spec.fixed("train.warmup_steps") or 0))


def pick_final(promoted: optuna.Study, spec: StudySpec, warm: int | None) -> tuple[optuna.trial.FrozenTrial, str]:
    """The promoted trial the final run continues, and why. `warm`: the search trial number of
    the warm start (None without one). The warm start is kept unless another promoted trial
    beat it clearly, both past their warmup; otherwise the promoted study's best."""
    done = [t for t in promoted.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.value is not None]
    if not done:
        raise UserError(f"study {promoted.study_name!r}: no promoted trial completed; nothing to train on")
    minimize = promoted.direction == optuna.study.StudyDirection.MINIMIZE
    best = min(done, key=lambda t: t.value if minimize else -t.value)
    start = next((t for t in done if (t.user_attrs.get("promoted_from") or {}).get("trial") == warm), None)
    if warm is None or start is None:
        return best, "no warm start among the completed promoted trials: the best of them"
    metric = spec.metric
    if best.number == start.number:
        return start, f"the warm start (the spec's search_start) is also the promoted trials' best by {metric}"
    gain = (start.value - best.value) / abs(start.value) if minimize else (best.value - start.value) / abs(start.value)
    steps = {t.number: int(t.user_attrs.get("steps", 0)) for t in (best, start)}
    short = [t for t in (best, start) if steps[t.number] < _warmup(spec, t)]
    if short:
        where = "; ".join(f"trial {t.number}: {steps[t.number]} of {_warmup(spec, t)} updates" for t in short)
        return start, (f"trial {best.number} scored better ({metric} {best.value:.4g} against the warm start's "
                       f"{start.value:.4g}) but before the end of the warmup ({where}): too early to overrule "
                       f"the warm start, which the final run continues")
    if gain < CLEAR_MARGIN:
        return start, (f"trial {best.number} scored only {gain:.1%} better than the warm start ({metric} "
                       f"{best.value:.4g} against {start.value:.4g}; a clear win needs {CLEAR_MARGIN:.0%}): the "
                       f"warm start is kept")
    return best, (f"trial {best.number} beat the warm start clearly ({metric} {best.value:.4g} against "
                  f"{start.value:.4g}, both past their warmup)")


class OverfitStop:
    """The final run's stop once it overfits: the spec's divergence stop, as in a trial,
    primed with the evaluations the continued checkpoint already had."""

    def __init__(self, spec: StudySpec, history: list):
        self.stop = DivergenceStop.from_spec(spec.stopping)
        for r in history:
            self.stop.update(r.val_loss, r.bleu)

    def __call__(self, trainer: Any, result: Any) -> None:
        from mt_tune.train import StopTraining

        if self.stop.update(result.val_loss, result.bleu):
            raise StopTraining("diverged")


def _replace_previous(url: str, names: list[str], artifacts: Path, log: Callable[[str], None]) -> None:
    storage = open_storage(url)
    existing = {s.study_name: s for s in storage.get_all_studies()}
    for name in names:
        if name not in existing:
            continue
        if not existing[name].user_attrs.get(DEMO_MARK):
            raise UserError(f"study {name!r} in {url} was not made by the demo; use another --workdir")
        optuna.delete_study(study_name=name, storage=storage)
        shutil.rmtree(artifacts / name, ignore_errors=True)
        log(f"replaced the previous demo's study {name!r}")


def run_demo(minutes: float = 10.0, workdir: str | Path = ".", spec_path: str | Path | None = None,
             overrides: list[str] | None = None, top_k: int = TOP_K, log: Callable[[str], None] = print) -> DemoResult:
    """Run the demo; Optuna's own per-trial log lines are silenced (the worker prints its own)."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return _run(minutes, workdir, spec_path, overrides, top_k, log)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _short(params: dict) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                     for k, v in params.items())


def _run(minutes: float, workdir: str | Path, spec_path: str | Path | None, overrides: list[str] | None,
         top_k: int, log: Callable[[str], None]) -> DemoResult:
    start = time.perf_counter()
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{work / 'mt-tune.db'}"
    artifacts = work / "mt-tune-artifacts"

    def elapsed() -> float:
        return time.perf_counter() - start

    def phase(title: str) -> None:
        log(f"\n== {title}  [{elapsed() / 60:.1f} of {minutes:g} min]")

    def sub(line: str) -> None:
        log("   " + line)

    spec_path = Path(spec_path) if spec_path else default_spec_path()
    base = load_spec(spec_path, list(overrides or []))
    p = plan(minutes, base.budget.trials, top_k)
    cache = str(Path(base.data.get("cache_dir", ".mt-tune-cache")))
    spec = load_spec(spec_path, [f"data.cache_dir={(work / cache) if not Path(cache).is_absolute() else cache}",
                                 f"budget.max_minutes={p.search_s / 60:.4f}", *(overrides or [])])
    scale = format_scale(spec.scale)
    search_name, promoted_name = f"{spec.name}-search", f"{spec.name}-promoted"
    _replace_previous(url, [search_name, promoted_name], artifacts, log)
    log(f"mt-tune demo: {minutes:g} minutes in {work}, storage {url}: {p.trials} search trials of "
        f"{p.search_s:.1f} s, the top {p.top_k} continued to {p.promoted_s:.1f} s, then the final run on the "
        f"rest (all at the {scale} scale, metric {spec.metric})")

    phase(f"1/5 search: study {search_name!r}" + (", the warm start first" if spec.search_start else ""))
    sub(f"(the same by hand: mt-tune study create {spec_path} budget.max_minutes={p.search_s / 60:.3f} "
        f"--name {search_name} && mt-tune worker {search_name} --seed-exact)")
    study = create_study(spec, name=search_name, storage_url=url)
    study.set_user_attr(DEMO_MARK, True)
    # One process, the spec's seed as it is: the same demo every time.
    run_worker(search_name, url, artifacts=str(artifacts), log=sub, seed_exact=True)
    searched = optuna.load_study(study_name=search_name, storage=open_storage(url))
    warm = next((t.number for t in searched.trials if t.user_attrs.get("search_start") == 0), None)  # study.py

    # top_k trials in all: the warm start, wherever it ranked, and the best of the others.
    ranked = [t.number for t in ranked_trials(searched)]
    k = p.top_k if warm is None or warm in ranked[:p.top_k] else p.top_k - 1
    phase(f"2/5 promotion: the top {k} trials{' and the warm start' if k < p.top_k else ''} continued to "
          f"{p.promoted_s:.1f} s, study {promoted_name!r}")
    factor = p.promoted_s / p.search_s
    sub(f"(by hand: mt-tune study promote {search_name} --to {promoted_name} --top-k {k} --scale {scale} "
        f"--steps-factor {factor:.3g} && mt-tune worker {promoted_name}; the demo also promotes the warm start "
        f"and continues each trial's checkpoint instead of training it again)")
    promote(search_name, promoted_name, url, top_k=max(1, k), scale=scale, steps_factor=factor, log=sub,
            also=() if warm is None else (warm,), continue_runs=True)
    optuna.load_study(study_name=promoted_name, storage=open_storage(url)).set_user_attr(DEMO_MARK, True)
    run_worker(promoted_name, url, artifacts=str(artifacts), log=sub, seed_exact=True)
    promoted = optuna.load_study(study_name=promoted_name, storage=open_storage(url))
    transfer = transfer_report(promoted)
    if transfer is not None:
        sub(f"ranking after {p.search_s:.1f} s against after {p.promoted_s:.1f} s (the same runs, continued): "
            f"{transfer.reading}")
        if transfer.spearman is None or transfer.spearman < 0.7:
            sub("the short ranking did not predict the longer one: the choice below does not rest on it")

    phase("3/5 the final config, exported")
    winner, reason = pick_final(promoted, spec, warm)
    sub(f"final: trial {winner.number} of {promoted_name} ({_short(winner.params)}): {reason}")
    exported = work / f"{spec.name}-best.yaml"
    export_config(promoted_name, exported, url, trial=winner.number)
    sub(f"wrote {exported}")

    phase("4/5 final training: the rest of the budget, continuing that trial's checkpoint")
    final_dir = work / f"{spec.name}-final"
    shutil.rmtree(final_dir, ignore_errors=True)
    final_dir.mkdir(parents=True)
    trial_dir = Path(winner.user_attrs.get("artifacts", artifacts / promoted_name / str(winner.number)))
    resume = (trial_dir / "last.pt").is_file()
    if resume:
        shutil.copyfile(trial_dir / "last.pt", final_dir / "last.pt")
    remaining = max(12.0, 60 * minutes - elapsed() - p.reserve_s)
    cfg = load_run_config(exported, FINAL_OVERRIDES)
    from mt_tune.data import prepare
    from mt_tune.train import Trainer

    def train_log(message: str) -> None:
        if message.startswith("run config:"):  # the whole config is in the exported file
            message = f"run config: {exported} with {' '.join(FINAL_OVERRIDES)}"
        sub(message)

    trainer = Trainer(cfg, final_dir, prepare(cfg.data), resume=resume, log=train_log, hooks=[])
    # A resumed run's time limit counts its earlier sessions: the trial's seconds plus the rest.
    trainer.cfg.train.max_minutes = (trainer.elapsed_before + remaining) / 60
    trainer.hooks.append(OverfitStop(spec, trainer.history))
    sub(f"(by hand: copy {trial_dir / 'last.pt'} to {final_dir}/, then mt-tune train {exported} "
        f"{' '.join(FINAL_OVERRIDES)} train.max_minutes={trainer.cfg.train.max_minutes:.2f} --out {final_dir}"
        f"{' --resume' if resume else ''})")
    run = trainer.fit()
    sub(f"{run.steps} updates in total, {run.steps - int(winner.user_attrs.get('steps', 0))} in this run; "
        f"stop: {run.stop_reason}")

    phase("5/5 BLEU on the held-out set")
    checkpoint = final_dir / "best.pt"
    scores = heldout_score(checkpoint, beam=cfg.train.eval_beam)
    reports = [write_report(name, work / f"report-{name}.html", url) for name in (search_name, promoted_name)]
    wall = elapsed()
    sub(f"BLEU {scores['bleu']:.2f}, chrF {scores['chrf']:.2f} on {scores['n_sentences']} held-out sentences "
        f"(greedy decoding; {scores['bleu_signature']})")
    log(f"\ndone in {wall / 60:.1f} min. Next:\n"
        f"   mt-tune dashboard --storage {url}      (then open http://127.0.0.1:8080/dashboard/)\n"
        f"   reports: {', '.join(str(r) for r in reports)}\n"
        f"   exported config: {exported}  (mt-tune train {exported})\n"
        f"   final checkpoint: {checkpoint}  (mt-tune translate {checkpoint})\n"
        f"   studies: mt-tune study show {promoted_name} --storage {url}")
    return DemoResult(search_name, promoted_name, exported, checkpoint, scores["bleu"], scores["chrf"],
                      scores["bleu_signature"], scores["n_sentences"], wall, reports, winner.number, reason)
