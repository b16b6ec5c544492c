"""One self-contained HTML page about a study: plots (plotly, its JS inlined once) and the best config.

Sections: optimization history, learning curves (diverged and pruned trials marked), parameter
importances, parallel coordinates, scale transfer (promoted studies only) and the best trial's
resolved config as YAML. Optuna's own plotting functions draw what they can; the learning
curves and the transfer plot are drawn here because they mark what Optuna's do not.
"""

from __future__ import annotations

import datetime as dt
import html
import os
import warnings
from pathlib import Path

import optuna
import plotly.graph_objects as go
import plotly.offline
import yaml

from mt_tune import __version__
from mt_tune.config import format_scale, to_dict
from mt_tune.errors import UserError
from mt_tune.search.spec import StudySpec, spec_from_study
from mt_tune.search.storage import open_storage
from mt_tune.search.urls import mask_url, resolve_url
from mt_tune.search.transfer import TRANSFER_COLUMNS, Transfer, format_transfer_table, transfer_report

COMPLETE = optuna.trial.TrialState.COMPLETE
PRUNED = optuna.trial.TrialState.PRUNED


def _figure_html(fig: go.Figure, div_id: str) -> str:
    fig.update_layout(height=420, margin=dict(l=60, r=30, t=50, b=50), template="plotly_white")
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


def _skipped(reason: str) -> str:
    return f'<p class="skipped">{html.escape(reason)}</p>'


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>\n{body}\n</section>"


# --- plots ----------------------------------------------------------------------------------


def _outcome(t: optuna.trial.FrozenTrial) -> str:
    """complete | diverged | pruned | nan_loss, ... : how a trial's learning curve ended."""
    reason = t.user_attrs.get("stop_reason")
    if t.state == PRUNED:
        return reason if reason in ("nan_loss", "oom", "predicted_oom") else "pruned"
    if reason == "diverged":
        return "diverged"
    return "complete"


_CURVE_STYLE = {  # outcome -> (line dash, end marker, colour)
    "complete": ("solid", "circle", "#1f77b4"),
    "diverged": ("dash", "diamond", "#ff7f0e"),
    "pruned": ("dot", "x", "#9a9a9a"),
    "nan_loss": ("dot", "x", "#d62728"),
    "oom": ("dot", "x", "#d62728"),
    "predicted_oom": ("dot", "x", "#d62728"),
}


def learning_curves(study: optuna.Study, metric: str) -> go.Figure | None:
    """Intermediate values per trial; the end of each curve marked by how the trial ended."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    if not trials:
        return None
    fig = go.Figure()
    shown: set[str] = set()
    for t in trials:
        steps = sorted(t.intermediate_values)
        values = [t.intermediate_values[s] for s in steps]
        outcome = _outcome(t)
        dash, marker, colour = _CURVE_STYLE[outcome]
        symbols = ["circle-open"] * (len(steps) - 1) + [marker]
        sizes = [4] * (len(steps) - 1) + [11]
        fig.add_trace(go.Scatter(
            x=steps, y=values, mode="lines+markers", name=outcome, legendgroup=outcome,
            showlegend=outcome not in shown, line=dict(dash=dash, color=colour, width=1.5),
            marker=dict(symbol=symbols, size=sizes, color=colour),
            hovertemplate=f"trial {t.number} ({outcome})<br>step %{{x}}<br>{metric} %{{y:.4g}}<extra></extra>"))
        shown.add(outcome)
    fig.update_layout(title=f"Learning curves ({metric} at each evaluation)", xaxis_title="step",
                      yaxis_title=metric)
    return fig


def transfer_plot(transfer: Transfer) -> go.Figure | None:
    """Value at the source scale vs value at the new scale, one point per finished promoted trial."""
    rows = [r for r in transfer.rows if r.value is not None and r.source_value is not None]
    if not rows:
        return None
    fig = go.Figure(go.Scatter(
        x=[r.source_value for r in rows], y=[r.value for r in rows], mode="markers+text",
        text=[f"#{r.source_rank}→{r.rank}" for r in rows], textposition="top center",
        marker=dict(size=11, color="#2ca02c"),
        hovertemplate="source trial %{customdata[0]} (rank %{customdata[1]})<br>"
                      "new trial %{customdata[2]} (rank %{customdata[3]})<extra></extra>",
        customdata=[[r.source_trial, r.source_rank, r.trial, r.rank] for r in rows]))
    rho = "n/a" if transfer.spearman is None else f"{transfer.spearman:.2f}"
    tau = "n/a" if transfer.kendall is None else f"{transfer.kendall:.2f}"
    fig.update_layout(title=f"Scale transfer {transfer.source_scale} → {transfer.scale} "
                            f"(Spearman ρ {rho}, Kendall τ {tau}; labels: source rank → new rank)",
                      xaxis_title=f"{transfer.metric} at {transfer.source_scale}",
                      yaxis_title=f"{transfer.metric} at {transfer.scale}")
    return fig


def _history(study: optuna.Study, metric: str) -> str:
    if not study.get_trials(deepcopy=False, states=(COMPLETE,)):
        return _skipped("No completed trials yet.")
    return _figure_html(optuna.visualization.plot_optimization_history(study, target_name=metric), "history")


def _importances(study: optuna.Study, metric: str) -> str:
    complete = study.get_trials(deepcopy=False, states=(COMPLETE,))
    params = {name for t in complete for name in t.params}
    if len(complete) < 2:
        return _skipped("Parameter importances need at least 2 completed trials.")
    if len(params) < 2:
        return _skipped("Parameter importances need at least 2 searched parameters.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "importances will be equal" on tied values
            fig = optuna.visualization.plot_param_importances(study, target_name=metric)
    except (RuntimeError, ValueError) as e:  # e.g. every completed trial has the same value
        return _skipped(f"Parameter importances could not be computed: {e}")
    return _figure_html(fig, "importances")


def _parallel(study: optuna.Study, metric: str) -> str:
    if not any(t.params for t in study.get_trials(deepcopy=False, states=(COMPLETE,))):
        return _skipped("No completed trials with searched parameters yet.")
    return _figure_html(optuna.visualization.plot_parallel_coordinate(study, target_name=metric), "parallel")


def _transfer_section(transfer: Transfer) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in TRANSFER_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in format_transfer_table(transfer))
    parts = [f"<p>{html.escape(transfer.reading)}</p>", f"<table><tr>{head}</tr>{body}</table>"]
    fig = transfer_plot(transfer)
    parts.append(_figure_html(fig, "transfer") if fig is not None else _skipped("No finished promoted trial yet."))
    return "\n".join(parts)


def _best_config(study: optuna.Study, spec: StudySpec | None) -> str:
    complete = study.get_trials(deepcopy=False, states=(COMPLETE,))
    if not complete:
        return _skipped("No completed trial yet.")
    best = study.best_trial
    about = f"<p>Trial {best.number}: {html.escape(spec.metric if spec else 'value')} = {best.value:.4g}</p>"
    if spec is None:
        text = yaml.safe_dump({"params": dict(best.params)}, sort_keys=False)
    else:
        text = yaml.safe_dump(to_dict(spec.run_config(best.params)), sort_keys=False)
    return about + f"<pre>{html.escape(text)}</pre>"


def _summary(study: optuna.Study, spec: StudySpec | None, storage_url: str) -> str:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    reasons: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        if t.state.is_finished() and "stop_reason" in t.user_attrs:
            reasons[str(t.user_attrs["stop_reason"])] = reasons.get(str(t.user_attrs["stop_reason"]), 0) + 1
    items = [
        ("metric", f"{spec.metric} ({spec.direction})" if spec else study.direction.name.lower()),
        ("scale", format_scale(spec.scale) if spec else "-"),
        ("trials", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"),
        ("stop reasons", ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) or "-"),
        ("storage", mask_url(storage_url)),
    ]
    if study.get_trials(deepcopy=False, states=(COMPLETE,)):
        items.insert(1, ("best", f"trial {study.best_trial.number}: {study.best_value:.4g}"))
    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                               for k, v in items) + "</table>"


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #666; margin-top: 0; }
section { margin: 2em 0; } table { border-collapse: collapse; }
th, td { text-align: left; padding: 3px 12px 3px 0; border-bottom: 1px solid #eee; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; } .skipped { color: #888; font-style: italic; }
"""


def render_report(study: optuna.Study, storage_url: str) -> str:
    """The report page as one HTML string (no external resources)."""
    spec = spec_from_study(study) if "spec" in study.user_attrs else None
    metric = spec.metric if spec is not None else "value"
    curves = learning_curves(study, metric)
    sections = [
        _section("Summary", _summary(study, spec, storage_url)),
        _section("Optimization history", _history(study, metric)),
        _section("Learning curves", _figure_html(curves, "curves") if curves is not None
                 else _skipped("No trial has reported an evaluation yet.")),
        _section("Parameter importances", _importances(study, metric)),
        _section("Parallel coordinates", _parallel(study, metric)),
    ]
    transfer = transfer_report(study)
    if transfer is not None:
        sections.append(_section("Scale transfer", _transfer_section(transfer)))
    sections.append(_section("Best config", _best_config(study, spec)))
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = html.escape(f"mt-tune study {study.study_name}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{_STYLE}</style>\n<script>{plotly.offline.get_plotlyjs()}</script>\n</head><body>\n"
            f"<h1>{title}</h1><p class=\"meta\">generated {when} by mt-tune {__version__}</p>\n"
            + "\n".join(sections) + "\n</body></html>\n")


def write_report(study_name: str, out: str | Path, storage_url: str | None = None) -> Path:
    """Render the report of `study_name` into `out` (written atomically); returns the path."""
    url = resolve_url(storage_url)
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    except KeyError:
        raise UserError(f"no study named {study_name!r} in {mask_url(url)}") from None
    page = render_report(study, url)
    out = Path(out)
    if out.is_dir():
        raise UserError(f"-o {out}: is a directory; give a file name like report.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # same folder: the rename is atomic
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out

