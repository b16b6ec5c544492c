"""Create, list, show and delete studies; the data behind `mt-tune study ...` and its tables.

A study made here carries its whole spec in its user attrs ("spec", JSON), plus "scale" and
"metric" for quick listing, and the metric's name (Optuna's metric names, shown by the
dashboard). Any Optuna tool can read it; a worker needs only its name and the storage URL.
The spec's start configurations are its first trials, queued here (user attr "search_start").
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

import optuna
from optuna.exceptions import DuplicatedStudyError, ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from mt_tune.config import format_scale
from mt_tune.errors import UserError
from mt_tune.search.spec import StudySpec, spec_from_study
from mt_tune.search.storage import open_storage
from mt_tune.search.urls import mask_url, resolve_url

STATES = ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL")


def create_study(spec: StudySpec, name: str | None = None, storage_url: str | None = None,
                 exists_ok: bool = False) -> optuna.Study:
    """Store a validated spec as a new study and queue its start configurations (search_start).
    An existing name is refused, unless `exists_ok` and the stored spec is identical (then that
    study is returned as it is: its start configurations were queued when it was created)."""
    url = resolve_url(storage_url or spec.storage)
    storage = open_storage(url)
    name = name or spec.name
    wanted = spec.to_dict()
    existing = _find(storage, name)
    if existing is not None:
        if not exists_ok:
            raise UserError(f"study {name!r} already exists in {mask_url(url)}; choose another --name, "
                            f"delete it (mt-tune study delete {name}) or pass --exists-ok to reuse it")
        stored = existing.user_attrs.get("spec")
        if stored != wanted:
            raise UserError(f"study {name!r} already exists in {mask_url(url)} with a different spec "
                            f"(differs in: {', '.join(_differing_keys(stored, wanted))}); --exists-ok "
                            f"reuses a study only with an identical spec")
        return optuna.load_study(study_name=name, storage=storage)
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction=spec.direction)
    except DuplicatedStudyError:
        raise UserError(f"study {name!r} was just created in {mask_url(url)} by someone else") from None
    try:
        study.set_user_attr("spec", wanted)
        study.set_user_attr("scale", format_scale(spec.scale))
        study.set_user_attr("metric", spec.metric)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            study.set_metric_names([spec.metric])
        # The start configurations run first, in order: workers pop queued trials before
        # sampling, each queued trial atomically (so once). Enqueued here, in one process.
        for i, params in enumerate(spec.search_start):
            study.enqueue_trial(params, user_attrs={"search_start": i}, skip_if_exists=True)
    except BaseException:
        optuna.delete_study(study_name=name, storage=storage)  # no half-made study is left behind
        raise
    return study


def load_study(name: str, storage_url: str | None = None) -> optuna.Study:
    """An existing study, or UserError listing the studies that do exist there."""
    url = resolve_url(storage_url)
    storage = open_storage(url, create_schema=False)
    if _find(storage, name) is None:
        names = sorted(s.study_name for s in storage.get_all_studies())
        there = f"studies there: {', '.join(names)}" if names else "it holds no studies"
        raise UserError(f"no study named {name!r} in {mask_url(url)} ({there})")
    return optuna.load_study(study_name=name, storage=storage)


def list_studies(storage_url: str | None = None) -> list[dict]:
    """One row per study: name, scale, metric, direction, trials by state, best value."""
    storage = open_storage(resolve_url(storage_url), create_schema=False)
    rows = []
    for frozen in storage.get_all_studies():
        study_id = storage.get_study_id_from_name(frozen.study_name)
        trials = storage.get_all_trials(study_id, deepcopy=False)
        best = _ranked(trials, frozen.direction.name.lower())[:1]
        rows.append({
            "name": frozen.study_name,
            "scale": frozen.user_attrs.get("scale", "?"),
            "metric": frozen.user_attrs.get("metric", "value"),
            "direction": frozen.direction.name.lower(),
            "states": _count_states(trials),
            "best_value": best[0].value if best else None,
            "best_trial": best[0].number if best else None,
        })
    return sorted(rows, key=lambda r: r["name"])


def show_study(name: str, storage_url: str | None = None, top: int = 5) -> dict:
    """What `study show` prints: best trials with params, counts by state and stop reason,
    speed and wall time per trial."""
    url = resolve_url(storage_url)
    study = load_study(name, url)
    spec = spec_from_study(study)
    trials = study.get_trials(deepcopy=False)
    return {
        "name": name,
        "storage": mask_url(url),
        "metric": spec.metric,
        "direction": spec.direction,
        "scale": format_scale(spec.scale),
        "budget": spec.budget.trials,
        "states": _count_states(trials),
        "stop_reasons": dict(Counter(t.user_attrs.get("stop_reason", "-") for t in trials
                                     if t.state in (TrialState.COMPLETE, TrialState.PRUNED))),
        "best": [_trial_row(t) for t in _ranked(trials, spec.direction)[:top]],
        "trials": [_trial_row(t) for t in trials],
    }


def delete_study(name: str, storage_url: str | None = None) -> None:
    url = resolve_url(storage_url)
    load_study(name, url)  # a clear error when there is no such study
    optuna.delete_study(study_name=name, storage=open_storage(url, create_schema=False))


# --- helpers ------------------------------------------------------------------------------


def _find(storage: optuna.storages.BaseStorage, name: str) -> Any:
    for frozen in storage.get_all_studies():
        if frozen.study_name == name:
            return frozen
    return None


def _differing_keys(a: Any, b: dict) -> list[str]:
    if not isinstance(a, dict):
        return ["the stored study has no mt-tune spec"]
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _count_states(trials: list[FrozenTrial]) -> dict[str, int]:
    counts = Counter(t.state.name for t in trials)
    return {s: counts.get(s, 0) for s in STATES}


def _ranked(trials: list[FrozenTrial], direction: str) -> list[FrozenTrial]:
    """Completed trials, best first."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return sorted(done, key=lambda t: t.value, reverse=direction == "maximize")


def _trial_row(t: FrozenTrial) -> dict:
    a = t.user_attrs
    return {
        "number": t.number,
        "state": t.state.name,
        "value": t.value,
        "params": dict(t.params),
        "stop_reason": a.get("stop_reason"),
        "steps": a.get("steps"),
        "best_step": a.get("best_step"),
        "tokens_per_s": a.get("tokens_per_s"),
        "wall_s": a.get("wall_s"),
        "n_params": a.get("n_params"),
        "bleu": a.get("bleu"),
        "val_loss": a.get("val_loss"),
    }


# --- tables for the CLI -------------------------------------------------------------------
# Every table fits an 80-column terminal (and a pipe, which rich takes as 80 columns) with
# typical values: short headers, no outer border. A longer value wraps (overflow fold), it is
# never cut to "…".


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def narrow_table(title: str, columns: list[tuple[str, str]]) -> Table:
    """A table of `mt-tune study ...` output, whose cells wrap instead of being cut;
    columns: (header, "left" | "right")."""
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for header, justify in columns:
        table.add_column(header, justify=justify, overflow="fold")
    return table


# State names as the study list shows them: Optuna's, with "complete" shortened so that five
# counts fit beside the rest.
STATE_HEADERS = {"COMPLETE": "done", "PRUNED": "pruned", "RUNNING": "running", "WAITING": "waiting", "FAIL": "fail"}


def studies_table(rows: list[dict], storage: str) -> Table:
    table = narrow_table(f"studies in {storage}", [("study", "left"), ("scale", "right"), ("metric", "left"),
                                                  *((STATE_HEADERS[s], "right") for s in STATES),
                                                  ("best", "right"), ("trial", "right")])
    for r in rows:
        table.add_row(r["name"], r["scale"], f"{r['metric']} ({'max' if r['direction'] == 'maximize' else 'min'})",
                      *(str(r["states"][s]) for s in STATES), _fmt(r["best_value"]), _fmt(r["best_trial"]))
    return table


def study_view(info: dict) -> Group:
    head = Text(f"study {info['name']} in {info['storage']}: metric {info['metric']} ({info['direction']}), "
                f"scale {info['scale']}, budget {info['budget']} trials\n"
                f"trials by state: {', '.join(f'{k.lower()} {v}' for k, v in info['states'].items() if v)}\n"
                f"finished trials by stop reason: "
                f"{', '.join(f'{k} {v}' for k, v in sorted(info['stop_reasons'].items())) or '-'}")
    best = narrow_table(f"best trials by {info['metric']}", [("trial", "right"), ("value", "right"),
                                                             ("best step", "right"), ("stop reason", "left"),
                                                             ("params", "left")])
    for r in info["best"]:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in r["params"].items())
        best.add_row(str(r["number"]), _fmt(r["value"]), _fmt(r["best_step"]), _fmt(r["stop_reason"]), params)
    trials = narrow_table(f"trials ({info['metric']})", [("trial", "right"), ("state", "left"), ("value", "right"),
                                                         ("stop reason", "left"), ("steps", "right"),
                                                         ("tok/s", "right"), ("wall s", "right"),
                                                         ("params M", "right")])
    for r in info["trials"]:
        trials.add_row(str(r["number"]), r["state"], _fmt(r["value"]), _fmt(r["stop_reason"]),
                       _fmt(r["steps"]), _fmt(round(r["tokens_per_s"]) if r["tokens_per_s"] else None),
                       _fmt(round(r["wall_s"], 1) if r["wall_s"] is not None else None),
                       _fmt(r["n_params"] / 1e6 if r["n_params"] else None, 3))
    return Group(head, best, trials)
