"""Export a trial of a study as a complete training config, with where it came from.

The config is the study spec's fixed values plus the trial's sampled parameters (exactly what
the trial trained with, via spec.run_config), optionally at another data scale or step count,
followed by a `provenance:` section that `mt-tune train` accepts and ignores. The search's
per-trial time limit (budget.max_minutes) is not carried over: a final run is bounded by steps.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from mt_tune import __version__
from mt_tune.config import build_run_config, format_scale, parse_scale, to_dict
from mt_tune.errors import UserError
from mt_tune.search.spec import spec_from_study
from mt_tune.search.urls import mask_url, resolve_url
from mt_tune.search.study import load_study


@dataclass
class ExportResult:
    path: Path
    study: str
    trial: int
    value: float
    metric: str
    config: dict  # what was written: data, model, train, provenance


def pick_trial(study: optuna.Study, number: int | None) -> optuna.trial.FrozenTrial:
    """The given trial (it must have completed), or the study's best."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise UserError(f"study {study.study_name!r} has no completed trial to export")
    if number is None:
        return study.best_trial
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            if t.state != optuna.trial.TrialState.COMPLETE:
                break
            return t
    shown = ", ".join(str(t.number) for t in complete[:20]) + (", ..." if len(complete) > 20 else "")
    state = next((t.state.name for t in study.get_trials(deepcopy=False) if t.number == number), None)
    why = f"is {state}" if state else "does not exist"
    raise UserError(f"--trial {number}: trial {number} of study {study.study_name!r} {why}; "
                    f"completed trials: {shown}")


def export_config(study_name: str, out: str | Path, storage_url: str | None = None, trial: int | None = None,
                  scale: Any = None, steps: int | None = None) -> ExportResult:
    """Write the training config of `trial` (default: the best) of `study_name` to `out`."""
    if steps is not None and steps < 1:
        raise UserError(f"--steps: must be >= 1, got {steps}")
    url = resolve_url(storage_url)
    study = load_study(study_name, url)
    spec = spec_from_study(study)
    chosen = pick_trial(study, trial)

    cfg = spec.run_config(chosen.params)
    if scale is not None:
        cfg.data.scale = format_scale(parse_scale(scale, "--scale"))
    if steps is not None:
        cfg.train.max_steps = steps
    cfg.train.max_minutes = float(spec.train.get("max_minutes", 0.0))

    attrs = chosen.user_attrs
    provenance = {
        "study": study_name,
        "trial": chosen.number,
        "metric": spec.metric,
        "value": chosen.value,
        "best_step": attrs.get("best_step"),
        "stop_reason": attrs.get("stop_reason"),
        "searched_scale": format_scale(spec.scale),
        "params": dict(chosen.params),
        "storage": mask_url(url),
        "mt_tune_version": __version__,
        "exported_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    if isinstance(attrs.get("promoted_from"), dict):
        provenance["promoted_from"] = attrs["promoted_from"]
    raw = {"data": to_dict(cfg.data), "model": to_dict(cfg.model), "train": to_dict(cfg.train),
           "provenance": provenance}
    build_run_config(yaml.safe_load(yaml.safe_dump(raw)))  # what `mt-tune train` will read must validate

    header = (f"# Training config exported from study {study_name!r}, trial {chosen.number} "
              f"({spec.metric} {chosen.value:.4g}).\n# Train it with: mt-tune train {Path(out).name}\n")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"-o {out}: is a directory; give a file name like best.yaml")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # same folder: the rename is atomic
    tmp.write_text(header + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    os.replace(tmp, out)
    return ExportResult(out, study_name, chosen.number, chosen.value, spec.metric, raw)
