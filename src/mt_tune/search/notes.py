"""Markdown notes that optuna-dashboard shows next to each finished trial and each study.

A trial's note says what ran and how it ended (resolved config in short, stop reason, best step,
throughput, size, BLEU); a study's note holds its spec and, for a promoted study, the transfer
table. Notes live in the study's system attrs in optuna-dashboard's own format, so the
dashboard (and `optuna_dashboard.get_note`) reads them back.
"""

from __future__ import annotations

from typing import Any

import optuna
import yaml
from optuna_dashboard import _note as dashboard_note  # save_note only takes live trials; see _save

from mt_tune.errors import UserError
from mt_tune.search.spec import StudySpec, spec_from_study
from mt_tune.search.transfer import TRANSFER_COLUMNS, format_transfer_table, transfer_report


def _num(x: Any, fmt: str = ".4g") -> str:
    return "-" if x is None else format(x, fmt) if isinstance(x, (int, float)) else str(x)


def _count(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def _study_spec(study: optuna.Study) -> StudySpec | None:
    if "spec" not in study.user_attrs:
        return None  # a study not made by mt-tune: notes show what the trials say
    try:
        return spec_from_study(study)
    except UserError:
        return None


def _config_lines(spec: StudySpec | None, params: dict) -> list[str]:
    """The resolved run config of a trial in three short lines, or nothing when unresolvable."""
    if spec is None:
        return []
    try:
        cfg = spec.run_config(params)
    except UserError:
        return []
    m, t, d = cfg.model, cfg.train, cfg.data
    return [
        f"- model: d_model {m.d_model}, heads {m.n_heads}, layers {m.enc_layers}+{m.dec_layers}, "
        f"ffn {m.ffn_dim}, dropout {m.dropout}, {m.norm}-LN",
        f"- train: lr {t.lr:.3g}, warmup {t.warmup_steps}, {t.schedule}, max_tokens {t.max_tokens}, "
        f"max_steps {t.max_steps}, label smoothing {t.label_smoothing}",
        f"- data: {d.format} at scale {d.scale}, vocab {d.vocab_size} {d.vocab_type}"
        f"{' joint' if d.joint_vocab else ' per side'}",
    ]


def trial_note(trial: optuna.trial.FrozenTrial, spec: StudySpec | None = None) -> str:
    """The markdown note of one trial, from its state, params and the objective's user attrs."""
    a = trial.user_attrs
    metric = spec.metric if spec is not None else "value"
    head = f"## Trial {trial.number} · {trial.state.name.lower()}"
    if trial.value is not None:
        head += f" · {metric} {trial.value:.4g}"
    rows = [
        ("stop reason", a.get("stop_reason", "-")),
        ("best step", f"{_num(a.get('best_step'))} of {_num(a.get('steps'))} steps" if "steps" in a else "-"),
        ("BLEU / chrF", f"{_num(a.get('bleu'), '.2f')} / {_num(a.get('chrf'), '.2f')}"),
        ("val loss", _num(a.get("val_loss"))),
        ("tokens/s", _num(a.get("tokens_per_s"), ",.0f")),
        ("parameters", _count(a.get("n_params"))),
        ("peak memory", _count(a.get("peak_memory")) + "B" if a.get("peak_memory") else "-"),
        ("scale", _num(a.get("scale"))),
        ("device", _num(a.get("device"))),
        ("wall time", f"{a['wall_s']:.0f} s" if isinstance(a.get("wall_s"), (int, float)) else "-"),
    ]
    origin = a.get("promoted_from")
    if isinstance(origin, dict):
        rows.append(("promoted from", f"{origin.get('study')} trial {origin.get('trial')} "
                                      f"(rank {a.get('source_rank', '?')})"))
    lines = [head, "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    if trial.params:
        lines += ["", "**Parameters:** " + ", ".join(f"`{k}={_num(v)}`" for k, v in sorted(trial.params.items()))]
    config = _config_lines(spec, trial.params)
    if config:
        lines += ["", "**Resolved config:**"] + config
    return "\n".join(lines) + "\n"


def study_note(study: optuna.Study) -> str:
    """The markdown note of a study: its spec and, when promoted, the scale-transfer table."""
    spec = _study_spec(study)
    lines = [f"# {study.study_name}"]
    parent = study.user_attrs.get("parent")
    if isinstance(parent, dict):
        lines += ["", f"Promoted from **{parent.get('study')}** (scale {parent.get('scale')}): "
                      f"its top {parent.get('top_k', '?')} trials re-run here."]
    transfer = transfer_report(study)
    if transfer is not None:
        lines += ["", "## Scale transfer", "", transfer.reading, "",
                  "| " + " | ".join(TRANSFER_COLUMNS) + " |", "|" + "---|" * len(TRANSFER_COLUMNS)]
        lines += ["| " + " | ".join(row) + " |" for row in format_transfer_table(transfer)]
    if spec is not None:
        lines += ["", "## Spec", "", "```yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False).rstrip(), "```"]
    return "\n".join(lines) + "\n"


def _save(study: optuna.Study, trial_id: int | None, body: str) -> None:
    # optuna_dashboard.save_note needs a live optuna.Trial; a finished trial is written the same
    # way (next note version, body split over system attrs) through the functions save_note uses.
    storage = study._storage
    attrs = storage.get_study_system_attrs(study._study_id)
    version = int(attrs.get(dashboard_note.note_ver_key(trial_id), 0)) + 1
    dashboard_note.save_note_with_version(storage, study._study_id, trial_id, version, body)


def write_trial_note(study: optuna.Study, trial: optuna.trial.FrozenTrial | optuna.Trial | int) -> None:
    """Attach the trial's note (call it when the trial has finished: it reads the final attrs)."""
    if isinstance(trial, int):
        trial = study.get_trials(deepcopy=False)[trial]
    elif isinstance(trial, optuna.Trial):
        trial = study._storage.get_trial(trial._trial_id)
    _save(study, trial._trial_id, trial_note(trial, _study_spec(study)))


def write_study_note(study: optuna.Study) -> None:
    """Attach (or refresh) the study's note."""
    _save(study, None, study_note(study))


def read_note(study: optuna.Study, trial: optuna.trial.FrozenTrial | None = None) -> str:
    """A note's markdown ("" when none), as the dashboard shows it."""
    attrs = study._storage.get_study_system_attrs(study._study_id)
    return dashboard_note.get_note_from_system_attrs(attrs, None if trial is None else trial._trial_id)["body"]

