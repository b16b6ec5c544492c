"""How well a small-scale ranking held at a larger scale: the transfer report of a promoted study.

Reads only the destination study: each promoted trial carries `promoted_from`, `source_rank`
and `source_value` (written by mt_tune.search.promote), the study its `parent`. Ranks are
compared with Spearman's rho and Kendall's tau once enough promoted trials have finished.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import optuna
from rich.console import Group
from rich.text import Text

from mt_tune.search.study import load_study, narrow_table

MIN_FINISHED = 3  # fewer finished promoted trials give no meaningful rank correlation

# Preference when a source trial appears more than once in the destination (a dead worker's
# trial is re-queued): the most informative state wins.
_STATE_ORDER = {
    optuna.trial.TrialState.COMPLETE: 0,
    optuna.trial.TrialState.PRUNED: 1,
    optuna.trial.TrialState.RUNNING: 2,
    optuna.trial.TrialState.WAITING: 3,
    optuna.trial.TrialState.FAIL: 4,
}


@dataclass
class TransferRow:
    source_trial: int
    source_rank: int
    source_value: float | None
    trial: int  # the promoted trial's number in the destination study
    state: str
    value: float | None
    rank: int | None  # among the destination's finished promoted trials; None until COMPLETE


@dataclass
class Transfer:
    source_study: str
    source_scale: str
    scale: str
    metric: str
    rows: list[TransferRow]
    finished: int
    spearman: float | None
    kendall: float | None
    reading: str

    def to_dict(self) -> dict:
        return asdict(self)


def _finite(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _reading(rho: float | None, tau: float | None, rows: list[TransferRow], finished: int, scale: str,
             source_scale: str) -> str:
    if finished < MIN_FINISHED:
        return (f"{finished} of {len(rows)} promoted trials finished; the rank correlation needs "
                f"at least {MIN_FINISHED}")
    if rho is None:
        return "all finished promoted trials scored the same: the ranking cannot be compared"
    winner = min(rows, key=lambda r: r.source_rank)
    where = (f"the {source_scale} winner (trial {winner.source_trial}) is rank {winner.rank} of {finished} "
             f"at {scale}" if winner.rank is not None else f"the {source_scale} winner has not finished at {scale}")
    if rho >= 0.7:
        verdict = f"ranking held at {scale}"
    elif rho >= 0.3:
        verdict = f"ranking partly held at {scale}"
    else:
        verdict = f"ranking did not hold at {scale}: search at this scale rather than trust the {source_scale} one"
    return f"{verdict} (Spearman ρ={rho:.2f}, Kendall τ={tau:.2f}); {where}"


def transfer_report(study: optuna.Study) -> Transfer | None:
    """Source rank vs new rank of the promoted trials; None when the study has none."""
    best_per_source: dict[tuple, optuna.trial.FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False):
        origin = t.user_attrs.get("promoted_from")
        if not isinstance(origin, dict) or t.state not in _STATE_ORDER:
            continue
        key = (origin.get("study"), origin.get("trial"))
        kept = best_per_source.get(key)
        if kept is None or _STATE_ORDER[t.state] < _STATE_ORDER[kept.state]:
            best_per_source[key] = t
    if not best_per_source:
        return None

    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    done = [t for t in best_per_source.values()
            if t.state == optuna.trial.TrialState.COMPLETE and _finite(t.value) is not None]
    done.sort(key=lambda t: (-t.value if maximize else t.value, t.user_attrs.get("source_rank", 0)))
    new_rank = {t.number: i for i, t in enumerate(done, start=1)}

    rows = sorted((TransferRow(
        source_trial=int(key[1]) if key[1] is not None else -1,
        source_rank=int(t.user_attrs.get("source_rank", 0)),
        source_value=t.user_attrs.get("source_value"),
        trial=t.number,
        state=t.state.name,
        value=_finite(t.value) if t.state == optuna.trial.TrialState.COMPLETE else None,
        rank=new_rank.get(t.number),
    ) for key, t in best_per_source.items()), key=lambda r: r.source_rank)

    finished = len(done)
    rho = tau = None
    if finished >= MIN_FINISHED:
        # Imported here: scipy.stats takes seconds to import, and `study show` asks for this
        # report on every study, promoted or not.
        from scipy import stats

        ranked = [r for r in rows if r.rank is not None]
        src_ranks = [r.source_rank for r in ranked]
        dst_ranks = [r.rank for r in ranked]
        rho = _finite(stats.spearmanr(src_ranks, dst_ranks).statistic)
        tau = _finite(stats.kendalltau(src_ranks, dst_ranks).statistic)
        if rho is None or tau is None:
            rho = tau = None
    parent = study.user_attrs.get("parent") or {}
    source_study = parent.get("study") or next(iter(best_per_source))[0] or "?"
    source_scale = str(parent.get("scale", "the source scale"))
    spec = study.user_attrs.get("spec") or {}
    scale = str((spec.get("data") or {}).get("scale", "this scale"))
    metric = str(spec.get("metric", "value"))
    return Transfer(source_study, source_scale, scale, metric, rows, finished, rho, tau,
                    _reading(rho, tau, rows, finished, scale, source_scale))


def format_transfer_table(transfer: Transfer) -> list[list[str]]:
    """Rows for a table: source trial, source rank, source value, trial, state, new rank, new value."""
    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.4g}"

    return [[str(r.source_trial), str(r.source_rank), num(r.source_value), str(r.trial), r.state,
             "-" if r.rank is None else str(r.rank), num(r.value)] for r in transfer.rows]


TRANSFER_COLUMNS = ["source trial", "source rank", "source value", "trial", "state", "rank", "value"]


def transfer_view(study_name: str, storage_url: str | None = None) -> Group | None:
    """The transfer section of `study show`: a table and the one-line reading; None when the
    study has no promoted trials."""
    transfer = transfer_report(load_study(study_name, storage_url))
    if transfer is None:
        return None
    title = (f"scale transfer from {transfer.source_study} ({transfer.source_scale} → {transfer.scale}), "
             f"by {transfer.metric}")
    table = narrow_table(title, [(col, "left" if col == "state" else "right") for col in TRANSFER_COLUMNS])
    for row in format_transfer_table(transfer):
        table.add_row(*row)
    return Group(table, Text(transfer.reading))
