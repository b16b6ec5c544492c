"""Promotion across data scales, and the report of how well the small-scale ranking held.

A search at a small scale (1k pairs) is cheap but noisy; its top trials are re-run at a larger
scale by enqueueing their parameters into a second study (the "destination"), whose spec is
the source's with another `data.scale` and a larger step budget. Each enqueued trial carries
its lineage (`promoted_from`, `source_rank`, `source_value`), and the destination records its
parent, so `study show` can compare the two rankings (mt_tune.search.transfer) once enough
promoted trials have finished.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna

from mt_tune.config import format_scale, parse_scale
from mt_tune.errors import UserError
from mt_tune.search.notes import write_study_note
from mt_tune.search.spec import StudySpec, spec_from_study
from mt_tune.search.storage import open_storage
from mt_tune.search.urls import mask_url, resolve_url
from mt_tune.search.study import create_study, load_study


def ranked_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """COMPLETE trials, best first (in the study's direction); ties keep trial order."""
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.value is not None and not math.isnan(t.value)]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(done, key=lambda t: (-t.value if maximize else t.value, t.number))


# --- promotion ------------------------------------------------------------------------------


@dataclass
class PromotionResult:
    source: str
    destination: str
    created: bool  # False: an existing destination study was reused
    scale: str
    enqueued: list[dict] = field(default_factory=list)  # {"source_trial", "source_rank", "params"}
    already_there: list[int] = field(default_factory=list)  # source trial numbers skipped


def _comparable(spec_dict: dict) -> dict:
    """A spec without what promotion changes (name, data.scale, budget, search_start)."""
    d = {k: v for k, v in spec_dict.items() if k not in ("name", "budget", "storage", "search_start")}
    d["data"] = {k: v for k, v in (d.get("data") or {}).items() if k != "scale"}
    return d


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
        return out
    return [] if a == b else [path or "(spec)"]


def destination_spec(spec: StudySpec, name: str, scale: Any, steps_factor: float, trials: int) -> StudySpec:
    """The source spec at another scale, with the per-trial limits multiplied by steps_factor."""
    d = spec.to_dict()
    d["name"] = name
    d.pop("search_start", None)  # a promoted study runs the promoted trials, not the source's start
    d["data"] = dict(d.get("data") or {})
    d["data"]["scale"] = format_scale(parse_scale(scale, "--scale"))
    budget = dict(d.get("budget") or {})
    budget["trials"] = trials
    if budget.get("max_steps"):
        budget["max_steps"] = max(1, round(budget["max_steps"] * steps_factor))
    if budget.get("max_minutes"):
        budget["max_minutes"] = budget["max_minutes"] * steps_factor
    d["budget"] = budget
    return StudySpec.from_dict(d)


def promote(src: str, dst: str, storage_url: str | None = None, top_k: int = 4, scale: Any = "full",
            steps_factor: float = 1.0, log: Callable[[str], None] = print, also: tuple[int, ...] = (),
            continue_runs: bool = False) -> PromotionResult:
    """Enqueue the top-k COMPLETE trials of study `src` into study `dst` (created when missing),
    and the COMPLETE trials numbered in `also` wherever they rank (e.g. a warm start).
    continue_runs: each promoted trial continues its source trial's checkpoint instead of
    training from scratch (same scale only: the vocabulary is the scale's)."""
    if top_k < 1:
        raise UserError(f"--top-k: must be at least 1, got {top_k}")
    if not steps_factor > 0:
        raise UserError(f"--steps-factor: must be > 0, got {steps_factor}")
    if src == dst:
        raise UserError(f"--to: the destination must differ from the source study {src!r}")
    url = resolve_url(storage_url)
    source = load_study(src, url)
    spec = spec_from_study(source)
    ranked = ranked_trials(source)
    top = [(rank, t) for rank, t in enumerate(ranked, start=1) if rank <= top_k or t.number in also]
    if not top:
        raise UserError(f"study {src!r} has no completed trials to promote")
    if continue_runs and format_scale(parse_scale(scale, "--scale")) != format_scale(spec.scale):
        raise UserError(f"continuing checkpoints needs the same scale: {src!r} is at {format_scale(spec.scale)}")

    try:
        target = optuna.load_study(study_name=dst, storage=open_storage(url))
    except KeyError:
        target = None
    if target is None:
        new_spec = destination_spec(spec, dst, scale, steps_factor, trials=len(top))
        target = create_study(new_spec, name=dst, storage_url=url)
        target.set_user_attr("parent", {"study": src, "scale": format_scale(spec.scale),
                                        "metric": spec.metric, "top_k": top_k})
        created = True
        log(f"created study {dst!r} at scale {format_scale(new_spec.scale)} in {mask_url(url)}")
    else:
        existing = spec_from_study(target)
        diff = _differences(_comparable(existing.to_dict()), _comparable(spec.to_dict()))
        if diff:
            raise UserError(f"study {dst!r} exists with a spec that differs from {src!r} in "
                            f"{', '.join(diff)} (only data.scale and budget may differ); "
                            "choose another --to name")
        parent = target.user_attrs.get("parent")
        if parent and parent.get("study") != src:
            raise UserError(f"study {dst!r} was promoted from {parent.get('study')!r}, not {src!r}")
        if not parent:
            target.set_user_attr("parent", {"study": src, "scale": format_scale(spec.scale),
                                            "metric": spec.metric, "top_k": top_k})
        new_spec = existing
        created = False
        log(f"reusing study {dst!r} at scale {format_scale(existing.scale)} in {mask_url(url)}")

    present = {(t.user_attrs["promoted_from"].get("study"), t.user_attrs["promoted_from"].get("trial"))
               for t in target.get_trials(deepcopy=False) if isinstance(t.user_attrs.get("promoted_from"), dict)}
    result = PromotionResult(src, dst, created, format_scale(new_spec.scale))
    for rank, trial in top:
        if (src, trial.number) in present:
            result.already_there.append(trial.number)
            continue
        attrs = {"promoted_from": {"study": src, "trial": trial.number}, "source_rank": rank,
                 "source_value": trial.value}
        if continue_runs and trial.user_attrs.get("artifacts"):
            attrs["continue_from"] = trial.user_attrs["artifacts"]  # read by the objective
        target.enqueue_trial(trial.params, skip_if_exists=True, user_attrs=attrs)
        result.enqueued.append({"source_trial": trial.number, "source_rank": rank, "params": dict(trial.params)})

    # The destination's trial budget must cover every promoted trial, or workers would stop early.
    n_promoted = len(present) + len(result.enqueued)
    budget = dict(new_spec.to_dict().get("budget") or {})
    if budget.get("trials", 0) < n_promoted:
        d = new_spec.to_dict()
        d["budget"] = {**budget, "trials": n_promoted}
        target.set_user_attr("spec", StudySpec.from_dict(d).to_dict())

    write_study_note(target)
    return result
