"""Markdown notes that optuna-dashboard shows next to each finished trial and each study.

A trial's note says what ran and how it ended (resolved config in short, stop reason, best step,
throughput, size, BLEU); a study's note holds its spec and, for a promoted study, the transfer
table. Notes are written and read with optuna-dashboard's public save_note and get_note, so
they are in its own format wherever it keeps them.
"""

from __future__ import annotations

from typing import Any

import optuna
import yaml
from optuna_dashboard import get_note, save_note

from mt_tune.errors import UserError
from mt_tune.search.spec import StudySpec, spec_from_study
from mt_tune.search.storage import open_storage, opened_storage_holding
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


def _live_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial | int,
                storage: optuna.storages.BaseStorage | str | None) -> optuna.Trial:
    """The optuna.Trial that save_note and get_note take, for a trial of the study (finished or
    not). Optuna gives a study's storage and a trial's id to no public caller, so the storage is
    the one given, or the one this process opened that holds the study; the id comes from the
    storage's public lookup by trial number. The Trial is made on a second study object with a
    RandomSampler, whose before_trial (run by Trial()) writes nothing to a finished trial."""
    if isinstance(storage, str):
        storage = open_storage(storage)
    storage = storage or opened_storage_holding(study.study_name)
    if storage is None:
        raise ValueError(f"study {study.study_name!r}: pass the storage that holds it to write or read a trial's note")
    number = trial if isinstance(trial, int) else trial.number
    study_id = storage.get_study_id_from_name(study.study_name)
    quiet = optuna.load_study(study_name=study.study_name, storage=storage, sampler=optuna.samplers.RandomSampler())
    return optuna.Trial(quiet, storage.get_trial_id_from_study_id_trial_number(study_id, number))


def write_trial_note(study: optuna.Study, trial: optuna.trial.FrozenTrial | optuna.Trial | int,
                     storage: optuna.storages.BaseStorage | str | None = None) -> None:
    """Attach the trial's note (call it when the trial has finished: it reads the final attrs).
    storage: the study's (or its URL), when this process did not open it with open_storage."""
    live = trial if isinstance(trial, optuna.Trial) else _live_trial(study, trial, storage)
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == live.number)
    save_note(live, trial_note(frozen, _study_spec(study)))


def write_study_note(study: optuna.Study) -> None:
    """Attach (or refresh) the study's note."""
    save_note(study, study_note(study))


def read_note(study: optuna.Study, trial: optuna.trial.FrozenTrial | None = None,
              storage: optuna.storages.BaseStorage | str | None = None) -> str:
    """A note's markdown ("" when none), as the dashboard shows it."""
    if trial is None:
        return get_note(study)
    return get_note(trial if isinstance(trial, optuna.Trial) else _live_trial(study, trial, storage))
