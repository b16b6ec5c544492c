"""The HTML study report: sections, graceful skips, self-containment, and a real browser load."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from mt_tune.errors import UserError
from mt_tune.search.report import render_report, write_report
from mt_tune.search.spec import build_spec
from cli_run import cli


SPEC = {
    "name": "synthetic",
    "data": {"format": "sample", "scale": "1k", "vocab_size": 1000},
    "model": {"d_model": 64, "n_heads": 2, "enc_layers": 1, "dec_layers": 1, "ffn_dim": 128},
    "train": {"eval_every": 100, "bleu_sentences": 20},
    "search": {
        "train.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
        "model.dropout": {"type": "categorical", "choices": [0.0, 0.1, 0.3]},
    },
    "metric": "bleu",
    "budget": {"trials": 10, "max_steps": 400},
}
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # set_metric_names

DISTS = {"train.lr": FloatDistribution(1e-4, 3e-3, log=True), "model.dropout": CategoricalDistribution([0.0, 0.1, 0.3])}


def add_trial(study: optuna.Study, lr: float, dropout: float, curve: list[float],
              state: optuna.trial.TrialState = optuna.trial.TrialState.COMPLETE, **attrs) -> None:
    """A finished trial as the objective leaves it: params, intermediate values, user attrs."""
    steps = {100 * (i + 1): v for i, v in enumerate(curve)}
    complete = state == optuna.trial.TrialState.COMPLETE
    user_attrs = {"scale": 1000, "n_params": 150_000, "tokens_per_s": 2000.0, "steps": max(steps, default=0),
                  "best_step": max(steps, key=steps.get) if steps else 0, "bleu": max(curve, default=None),
                  "device": "cpu", "wall_s": 12.0, "stop_reason": "max_steps" if complete else "pruned"}
    user_attrs.update(attrs)
    study.add_trial(optuna.trial.create_trial(
        state=state, value=max(curve) if complete else None, params={"train.lr": lr, "model.dropout": dropout},
        distributions=DISTS, intermediate_values=steps, user_attrs=user_attrs))


def make_study(storage, name: str = "synthetic", spec: dict = SPEC) -> optuna.Study:
    built = build_spec(dict(spec, name=name), check_files=False)
    study = optuna.create_study(study_name=name, storage=storage, direction=built.direction)
    study.set_user_attr("spec", built.to_dict())
    study.set_metric_names([built.metric])
    return study


def populated(storage, name: str = "synthetic") -> optuna.Study:
    study = make_study(storage, name)
    add_trial(study, 1e-3, 0.1, [3.0, 6.0, 8.5, 9.0])
    add_trial(study, 2e-3, 0.0, [4.0, 7.0, 6.5, 6.0], stop_reason="diverged")
    add_trial(study, 5e-4, 0.3, [2.0, 4.0, 5.0, 5.5])
    add_trial(study, 2.5e-3, 0.1, [1.0, 2.0], state=optuna.trial.TrialState.PRUNED)
    add_trial(study, 2.9e-3, 0.3, [0.5], state=optuna.trial.TrialState.PRUNED, stop_reason="nan_loss")
    return study


def test_report_has_every_section_and_is_self_contained():
    study = populated(optuna.storages.InMemoryStorage())
    page = render_report(study, "postgresql+psycopg://user:secret@db:5432/optuna")
    for title in ("Summary", "Optimization history", "Learning curves", "Parameter importances",
                  "Parallel coordinates", "Best config"):
        assert f"<h2>{title}</h2>" in page
    assert "Scale transfer" not in page  # not a promoted study
    assert "secret" not in page and "user:***@db" in page
    # plotly.js inlined exactly once, nothing loaded from elsewhere
    assert len(re.findall(r"plotly\.js v\d", page)) == 1
    assert not re.search(r"<script[^>]+src=", page)
    # one plot per section (history, curves, importances, parallel)
    assert page.count("Plotly.newPlot(") == 4
    # the best config is trial 0's resolved run config
    assert "Trial 0: bleu = 9" in page
    assert "lr: 0.001" in page and "dropout: 0.1" in page and "max_steps: 400" in page
    # diverged and pruned curves are marked as such
    for outcome in ('"name":"diverged"', '"name":"pruned"', '"name":"nan_loss"'):
        assert outcome in page.replace(" ", "")


def test_report_skips_what_it_cannot_draw():
    storage = optuna.storages.InMemoryStorage()
    study = make_study(storage)
    page = render_report(study, "sqlite:///x.db")
    assert "No completed trials yet." in page and "No trial has reported an evaluation yet." in page
    assert "Plotly.newPlot(" not in page
    add_trial(study, 1e-3, 0.1, [3.0, 4.0])
    page = render_report(study, "sqlite:///x.db")
    assert "need at least 2 completed trials" in page

    one_param = dict(SPEC, search={"train.lr": SPEC["search"]["train.lr"]})
    single = make_study(storage, "single", one_param)
    for lr, v in ((1e-3, 3.0), (2e-3, 4.0), (3e-4, 1.0)):
        single.add_trial(optuna.trial.create_trial(
            value=v, params={"train.lr": lr}, distributions={"train.lr": DISTS["train.lr"]},
            intermediate_values={100: v}))
    page = render_report(single, "sqlite:///x.db")
    assert "need at least 2 searched parameters" in page


def test_report_of_a_promoted_study_has_the_transfer_plot():
    storage = optuna.storages.InMemoryStorage()
    study = make_study(storage, "promoted", dict(SPEC, data={**SPEC["data"], "scale": "full"}))
    study.set_user_attr("parent", {"study": "synthetic", "scale": "1k", "metric": "bleu", "top_k": 3})
    for rank, (src_value, new_value) in enumerate(((9.0, 14.0), (7.0, 15.0), (5.5, 10.0)), start=1):
        add_trial(study, 1e-3 * rank, 0.1, [new_value], promoted_from={"study": "synthetic", "trial": rank},
                  source_rank=rank, source_value=src_value)
    page = render_report(study, "sqlite:///x.db")
    assert "<h2>Scale transfer</h2>" in page
    assert "Spearman ρ=0.50" in page and "the 1k winner (trial 1) is rank 2 of 3 at full" in page
    assert 'id="transfer"' in page


def test_write_report_names_a_missing_study(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    with pytest.raises(UserError, match="no study named 'nope'"):
        write_report("nope", tmp_path / "r.html", url)
    assert not (tmp_path / "r.html").exists()


def test_cli_study_report_writes_the_page(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/s.db"
    populated(url)
    out = tmp_path / "out" / "report.html"
    assert cli("study", "report", "synthetic", "-o", str(out), "--storage", url) == 0
    assert out.is_file() and "<h2>Learning curves</h2>" in out.read_text()
    assert str(out) in capsys.readouterr().out
    assert cli("study", "report", "missing", "-o", str(out), "--storage", url) == 2


# --- a real browser ------------------------------------------------------------------------


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium is required in CI for the browser test of the report", pytrace=False)
        pytest.skip("chromium not installed")
    return found


def test_report_renders_in_headless_chromium_without_errors(tmp_path):
    chromium = _chromium()
    url = f"sqlite:///{tmp_path}/s.db"
    populated(url)
    page = write_report("synthetic", tmp_path / "report.html", url)
    with tempfile.TemporaryDirectory() as profile:
        run = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom",
             page.resolve().as_uri()],
            capture_output=True, text=True, timeout=120)
    dom, log = run.stdout, run.stderr
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert not [line for line in console if re.search(r"error|uncaught", line, re.I)], console
    # each of the four plots rendered: a plotly container with its SVG
    assert dom.count('class="plot-container plotly"') == 4, dom[:2000]
    assert dom.count('class="main-svg"') >= 4
    assert Path(page).stat().st_size < 10_000_000
