"""`mt-tune demo`: the whole loop on the bundled sample, in a fixed wall-time budget.

    search at the 1k scale ─► promote the top trials to the full sample ─► export the winner
    ─► final training (continues the winner's full-scale checkpoint) ─► BLEU on the held-out set

Everything lives in one working directory: the embedded storage (mt-tune.db), checkpoints
(mt-tune-artifacts/), the data cache, the exported config, the final run and HTML reports.
The budget is split between the phases (see `plan`); each phase is bounded by time, so on a
2-core CPU the demo ends close to `--minutes`. The final run resumes from the promoted
winner's last checkpoint instead of starting over: that trial already trained exactly this
config on the full data, and every minute of it counts toward the result.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna

from mt_tune.config import load_run_config
from mt_tune.errors import UserError
from mt_tune.search.export import export_config
from mt_tune.search.promote import promote
from mt_tune.search.report import write_report
from mt_tune.search.spec import load_spec
from mt_tune.search.storage import open_storage
from mt_tune.search.study import create_study
from mt_tune.search.transfer import transfer_report
from mt_tune.search.worker import run_worker

SEARCH_SCALE = "1k"
DEMO_MARK = "mt_tune_demo"  # user attr on the demo's studies: a rerun may replace them


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
    """Minutes per phase; the rest of the budget covers data preparation, scoring and reports."""

    search: float
    promotion: float
    final: float
    trials: int
    top_k: int

    @property
    def per_search_trial(self) -> float:
        return TRIAL_SHARE * self.search / self.trials

    @property
    def per_promoted_trial(self) -> float:
        return TRIAL_SHARE * self.promotion / self.top_k


# Each trial also spends time outside its training limit (model set-up, the final evaluation):
# trial limits are this fraction of their share of the phase.
TRIAL_SHARE = 0.8


def plan(minutes: float, trials: int, top_k: int) -> Plan:
    """40 % search, 25 % promotion, the rest final training (which also gets any time the
    earlier phases leave) and scoring."""
    if minutes < 1:
        raise UserError(f"--minutes: at least 1, got {minutes}")
    if top_k < 1:
        raise UserError(f"--top-k: at least 1, got {top_k}")
    return Plan(search=0.40 * minutes, promotion=0.25 * minutes, final=0.30 * minutes, trials=trials, top_k=top_k)


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


def heldout_score(checkpoint: Path, beam: int = 1) -> dict:
    """BLEU/chrF of a checkpoint on the whole validation set of its own data config: the pairs
    held out from every training scale (the search saw at most its first bleu_sentences)."""
    from mt_tune.checkpoint import load_checkpoint
    from mt_tune.data import prepare
    from mt_tune.decode import evaluate

    model, cfg, src_tok, tgt_tok = load_checkpoint(checkpoint)
    data = prepare(cfg.data)
    _, scores = evaluate(model, src_tok, tgt_tok, data.valid_src, data.valid_ref, tgt_lang=cfg.data.tgt_lang,
                         beam=beam)
    return dict(scores, n_sentences=len(data.valid_src))


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
             overrides: list[str] | None = None, top_k: int = 3, log: Callable[[str], None] = print) -> DemoResult:
    """Run the demo; Optuna's own per-trial log lines are silenced (the worker prints its own)."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return _run(minutes, workdir, spec_path, overrides, top_k, log)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _run(minutes: float, workdir: str | Path, spec_path: str | Path | None, overrides: list[str] | None,
         top_k: int, log: Callable[[str], None]) -> DemoResult:
    start = time.perf_counter()
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{work / 'mt-tune.db'}"
    artifacts = work / "mt-tune-artifacts"

    def phase(title: str) -> None:
        log(f"\n== {title}  [{(time.perf_counter() - start) / 60:.1f} of {minutes:g} min]")

    spec_path = Path(spec_path) if spec_path else default_spec_path()
    base = load_spec(spec_path, list(overrides or []))
    p = plan(minutes, base.budget.trials, top_k)
    cache = str(Path(base.data.get("cache_dir", ".mt-tune-cache")))
    spec = load_spec(spec_path, [f"data.cache_dir={(work / cache) if not Path(cache).is_absolute() else cache}",
                                 f"data.scale={SEARCH_SCALE}", f"budget.max_minutes={p.per_search_trial:.3f}",
                                 *(overrides or [])])
    search_name, promoted_name = f"{spec.name}-{SEARCH_SCALE}", f"{spec.name}-full"
    _replace_previous(url, [search_name, promoted_name], artifacts, log)
    log(f"mt-tune demo: {minutes:g} minutes in {work}: search {p.search:.1f} min ({p.trials} trials at "
        f"{SEARCH_SCALE}, ≤ {p.per_search_trial:.2f} min each), promotion {p.promotion:.1f} min (top {p.top_k} "
        f"at full), final training {p.final:.1f} min; storage {url}")

    phase(f"1/5 search: study {search_name!r} at the {SEARCH_SCALE} scale, metric {spec.metric}")
    log(f"   (the same by hand: mt-tune study create {spec_path} data.scale={SEARCH_SCALE} "
        f"budget.max_minutes={p.per_search_trial:.2f} --name {search_name} && mt-tune worker {search_name})")
    study = create_study(spec, name=search_name, storage_url=url)
    study.set_user_attr(DEMO_MARK, True)
    run_worker(search_name, url, artifacts=str(artifacts), log=lambda line: log("   " + line))

    phase(f"2/5 promotion: the top {p.top_k} trials to the full sample, study {promoted_name!r}")
    log(f"   (by hand: mt-tune study promote {search_name} --to {promoted_name} --top-k {p.top_k} --scale full"
        f" && mt-tune worker {promoted_name})")
    steps_factor = p.per_promoted_trial / p.per_search_trial
    promote(search_name, promoted_name, url, top_k=p.top_k, scale="full", steps_factor=steps_factor,
            log=lambda line: log("   " + line))
    optuna.load_study(study_name=promoted_name, storage=open_storage(url)).set_user_attr(DEMO_MARK, True)
    run_worker(promoted_name, url, artifacts=str(artifacts), log=lambda line: log("   " + line))
    promoted = optuna.load_study(study_name=promoted_name, storage=open_storage(url))
    transfer = transfer_report(promoted)
    if transfer is not None:
        log(f"   scale transfer: {transfer.reading}")

    phase("3/5 export: the winner as a training config")
    exported = work / f"{spec.name}-best.yaml"
    result = export_config(promoted_name, exported, url)
    winner = promoted.trials[result.trial]
    log(f"   wrote {exported}: trial {result.trial} of {promoted_name} ({result.metric} {result.value:.4g}), "
        f"params {', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in winner.params.items())}")

    phase("4/5 final training: the rest of the budget on the winner, from its checkpoint")
    final_dir = work / f"{spec.name}-final"
    shutil.rmtree(final_dir, ignore_errors=True)
    final_dir.mkdir(parents=True)
    trial_dir = Path(winner.user_attrs.get("artifacts", artifacts / promoted_name / str(winner.number)))
    resume = (trial_dir / "last.pt").is_file()
    if resume:
        shutil.copyfile(trial_dir / "last.pt", final_dir / "last.pt")
        if (trial_dir / "best.pt").is_file():
            shutil.copyfile(trial_dir / "best.pt", final_dir / "best.pt")
    # The final run gets whatever the earlier phases left, less what scoring and reports need.
    remaining = minutes - (time.perf_counter() - start) / 60 - max(0.5, 0.05 * minutes)
    final_minutes = max(0.2, remaining)
    cfg = load_run_config(exported, [f"train.max_minutes={final_minutes:.3f}", "train.max_steps=1000000"])
    log(f"   (by hand: mt-tune train {exported} train.max_minutes={final_minutes:.1f} --out {final_dir}"
        f"{' --resume, after copying the trial' + chr(39) + 's last.pt there' if resume else ''})")
    from mt_tune.train import Trainer

    def train_log(message: str) -> None:
        if message.startswith("run config:"):  # the whole config is in the exported file
            message = f"run config: {exported}, max_minutes {final_minutes:.1f}"
        log("   " + message)

    run = Trainer(cfg, final_dir, resume=resume, log=train_log).fit()
    log(f"   {run.steps} steps in total, stop: {run.stop_reason}")

    phase("5/5 BLEU on the held-out set")
    checkpoint = final_dir / "best.pt"
    scores = heldout_score(checkpoint, beam=cfg.train.eval_beam)
    reports = [write_report(name, work / f"report-{name}.html", url) for name in (search_name, promoted_name)]
    wall = time.perf_counter() - start
    log(f"   BLEU {scores['bleu']:.2f}, chrF {scores['chrf']:.2f} on {scores['n_sentences']} held-out sentences "
        f"(greedy decoding; {scores['bleu_signature']})")
    log(f"\ndone in {wall / 60:.1f} min. Next:\n"
        f"   mt-tune dashboard --storage {url}      (then open http://127.0.0.1:8080/dashboard/)\n"
        f"   reports: {', '.join(str(r) for r in reports)}\n"
        f"   exported config: {exported}  (mt-tune train {exported})\n"
        f"   final checkpoint: {checkpoint}  (mt-tune translate {checkpoint})\n"
        f"   studies: mt-tune study show {promoted_name} --storage {url}")
    return DemoResult(search_name, promoted_name, exported, checkpoint, scores["bleu"], scores["chrf"],
                      scores["bleu_signature"], scores["n_sentences"], wall, reports)

