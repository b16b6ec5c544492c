"""A worker: run a study's trials in this process until its total budget is spent.

The budget (spec.budget.trials) is the total over every worker sharing the storage. It counts
trials that finished or are running, like Optuna's MaxTrialsCallback, except FAIL trials that
were re-queued (their retry is counted instead), repeats (stop_reason=repeat: ended untrained,
their nearest untried neighbour queued; see repeats.py) and trials that found the budget spent
when they started. That last check makes the total exact: two workers that both see one trial
left both ask for one, and the later of the two (by trial number) ends at once, FAIL with
stop_reason=over_budget, without training.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from typing import Callable

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from mt_tune.config import DEVICE_PATTERN
from mt_tune.errors import UserError
from mt_tune.search.notes import write_study_note, write_trial_note
from mt_tune.search.objective import Objective, error_line
from mt_tune.search.pruners import build_pruner
from mt_tune.search.repeats import Repeat, is_repeat
from mt_tune.search.samplers import STREAM_ENV, build_sampler
from mt_tune.search.spec import spec_from_study
from mt_tune.search.resilience import heartbeat_settings, recover_orphaned_trials
from mt_tune.search.storage import open_storage
from mt_tune.search.urls import mask_url, resolve_url
from mt_tune.search.study import load_study

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)


class BudgetSpent(Exception):
    """Raised by a trial that started after the study's budget was used up."""


class WorkerStopped(RuntimeError):
    """The worker gave up: `max_consecutive_failures` trials in a row FAILed (a runtime
    failure, exit status 1). A systematic error (a bug, a bad driver, a missing file) would
    otherwise fail every trial until the whole budget is spent."""


def sampler_stream(seed_exact: bool = False) -> str | None:
    """This process's sampler stream: the launcher's ($MT_TUNE_SAMPLER_STREAM), else host and
    process id, so that workers started by hand on several machines draw different trials;
    None (the spec's seed exactly, reproducible) only when asked for with seed_exact."""
    launched = os.environ.get(STREAM_ENV)
    if launched or seed_exact:
        return launched or None
    return f"{socket.gethostname()}/{os.getpid()}"


def counts_toward_budget(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return [t for t in trials if t.state in COUNTED
            and not (t.state == TrialState.FAIL and (t.number in retried or is_repeat(t)
                                                     or t.user_attrs.get("stop_reason") == "over_budget"))]


def requeue_on_interrupt(objective: Callable[[optuna.Trial], float]) -> Callable[[optuna.Trial], float]:
    """The objective, such that Ctrl-C/SIGTERM (KeyboardInterrupt) in a trial records
    stop_reason=interrupted and queues a retry of the trial, exactly as Optuna does for a dead
    worker's trial (so the retry resumes from its last checkpoint, and the retried trial does
    not count toward the budget). The interrupt then goes on: Optuna marks this trial FAIL,
    and the worker stops — the trial is never left RUNNING."""

    def run(trial: optuna.Trial) -> float:
        try:
            return objective(trial)
        except KeyboardInterrupt:
            trial.set_user_attr("stop_reason", "interrupted")
            frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                RetryHeartbeatStaleTrialCallback(max_retry=heartbeat_settings()[2])(trial.study, frozen)
            raise

    return run


def budget_used(study: optuna.Study) -> int:
    # A dead worker's trial (or one orphaned by a lost reply) stays RUNNING, and would count,
    # until some worker fails it and queues its retry; do that first, or workers that see the
    # budget taken would all exit and leave it RUNNING for ever.
    recover_orphaned_trials(study)
    return len(counts_toward_budget(study.get_trials(deepcopy=False)))


def run_worker(study_name: str, storage_url: str | None = None, n_trials: int | None = None,
               device: str = "auto", artifacts: str = "mt-tune-artifacts", log: Callable = print,
               max_consecutive_failures: int | None = None, seed_exact: bool = False) -> dict:
    """Run trials of `study_name` until the study's budget or `n_trials` (of this worker) is
    reached; one log line per finished trial. Returns a summary. Raises WorkerStopped after
    `max_consecutive_failures` (default: the spec's budget.max_consecutive_failures) FAIL
    trials in a row. seed_exact: use the spec's sampler seed as it is (see sampler_stream)."""
    if n_trials is not None and n_trials < 1:
        raise UserError(f"--n-trials: must be >= 1, got {n_trials}")
    if max_consecutive_failures is not None and max_consecutive_failures < 1:
        raise UserError(f"--max-consecutive-failures: must be >= 1, got {max_consecutive_failures}")
    if not DEVICE_PATTERN.fullmatch(device):
        raise UserError(f"--device: expected auto, cpu, cuda or cuda:N, got {device!r}")
    url = resolve_url(storage_url)
    spec = spec_from_study(load_study(study_name, url))
    storage = open_storage(url, create_schema=False)
    study = optuna.load_study(study_name=study_name, storage=storage,
                              sampler=build_sampler(spec, stream=sampler_stream(seed_exact)), pruner=build_pruner(spec))
    budget = spec.budget.trials
    failure_limit = max_consecutive_failures or spec.budget.max_consecutive_failures

    def check_budget(trial: optuna.Trial) -> None:
        earlier = [t for t in counts_toward_budget(study.get_trials(deepcopy=False)) if t.number < trial.number]
        if len(earlier) >= budget:
            trial.set_user_attr("stop_reason", "over_budget")
            raise BudgetSpent(f"study {study_name!r}: its {budget} trials are taken")

    objective = Objective(spec, study_name, storage, artifacts=artifacts, device=device, budget_check=check_budget)
    if not any(d.path.startswith("data.") for d in spec.search):
        # Prepare the data before the first trial: a corpus that is missing on this machine is
        # then an error of the worker, not a failed trial in the study.
        objective.data_for(spec.run_config())

    def log_trial(_study: optuna.Study, t: FrozenTrial) -> None:
        a = t.user_attrs
        value = f"{spec.metric} {t.value:.4g}" if t.value is not None else "no value"
        log(f"trial {t.number:>3} {t.state.name.lower():<8} {value} | {a.get('stop_reason', '-')} | "
            f"{a.get('steps', 0)} steps | {a.get('wall_s', 0):.1f} s")
        try:
            write_trial_note(study, t, storage)  # shown next to the trial in optuna-dashboard
            if "parent" in study.user_attrs:
                write_study_note(study)  # a promoted study's note holds the scale-transfer table
        except Exception as e:  # noqa: BLE001 - a note is a display aid: the trial is recorded all the same
            log(f"trial {t.number}: note not written ({error_line(e)})")

    log(f"worker for study {study_name!r} in {mask_url(url)}: budget {budget} trials, "
        f"{budget_used(study)} taken; checkpoints under {artifacts}/{study_name}/")
    write_study_note(study)
    ran, start = 0, time.perf_counter()
    failures = 0  # FAIL trials in a row
    while (n_trials is None or ran < n_trials) and budget_used(study) < budget:
        try:
            study.optimize(requeue_on_interrupt(objective), n_trials=1, callbacks=[log_trial])
        except BudgetSpent:
            break
        except Repeat as e:  # untrained, its neighbour queued: neither a trial of this worker nor a failure
            log(str(e))
            continue
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - the trial is recorded as FAIL; the worker goes on
            failures += 1
            where = f"; traceback in {objective.last_log}" if objective.last_log else ""
            log(f"trial failed: {error_line(e)}{where}")
            if failures >= failure_limit:
                raise WorkerStopped(f"study {study_name!r}: {failures} trials in a row failed, the last with "
                                    f"{error_line(e)}{where}; stopping this worker "
                                    f"(budget.max_consecutive_failures / --max-consecutive-failures)") from None
        else:
            failures = 0
        ran += 1

    states = {s.name: 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    repeats = 0
    for t in study.get_trials(deepcopy=False, states=tuple(TrialState[s] for s in states)):
        states[t.state.name] += 1
        repeats += is_repeat(t)
    best = _best(study)
    summary = {"study": study_name, "storage": mask_url(url), "trials_run": ran, "states": states,
               "repeats": repeats, "best_trial": best.number if best else None,
               "best_value": best.value if best else None, "wall_s": round(time.perf_counter() - start, 1)}
    log(f"worker done: {ran} trials in {summary['wall_s']:.0f} s; study: "
        f"{', '.join(f'{k.lower()} {v}' for k, v in states.items())}"
        + (f" ({repeats} of them repeats, untrained)" if repeats else "") + "; "
        + (f"best trial {best.number} ({spec.metric} {best.value:.4g})" if best else "no completed trial yet"))
    return summary


def _best(study: optuna.Study) -> FrozenTrial | None:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial if done else None
