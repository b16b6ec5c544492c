"""Studies: create (spec stored, duplicates refused), list, show, delete; Optuna's own CLI reads them."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from typer.testing import CliRunner

from mt_tune.cli import app
from mt_tune.errors import ConfigError, UserError
from mt_tune.search.spec import build_spec, load_spec, spec_from_study
from mt_tune.search.storage import StorageUnavailable
from mt_tune.search.study import create_study, delete_study, list_studies, show_study

BIN = Path(sys.executable).parent
SPEC = {
    "name": "tiny",
    "data": {"format": "sample", "scale": "1k"},
    "model": {"d_model": 32, "n_heads": 2, "enc_layers": 1, "dec_layers": 1, "ffn_dim": 64},
    "train": {"eval_every": 10, "bleu_sentences": 20},
    "search": {
        "train.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-3, "log": True},
        "model.d_model": {"type": "categorical", "choices": [32, 64]},
    },
    "metric": "bleu",
    "budget": {"trials": 3, "max_steps": 40},
}


# Trials made with ask/tell on a storage with heartbeats draw a harmless warning.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used:UserWarning")


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/studies.db"


def spec_file(tmp_path: Path, change=None) -> Path:
    raw = copy.deepcopy(SPEC)
    if change:
        change(raw)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def cli(*args: str, cwd: Path, input: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    env.pop("MT_TUNE_STORAGE", None)
    return subprocess.run([str(BIN / "mt-tune"), *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env=env, input=input)


def add_trials(study: optuna.Study) -> None:
    """Two finished trials shaped like the objective's (params from the spec, its user attrs)."""
    spec = spec_from_study(study)
    for value, reason in ((7.5, "diverged"), (3.25, "max_steps")):
        trial = study.ask()
        spec.suggest(trial)
        for key, v in {"stop_reason": reason, "steps": 40, "best_step": 30, "tokens_per_s": 1234.5,
                       "wall_s": 2.5, "n_params": 12345, "scale": "1k"}.items():
            trial.set_user_attr(key, v)
        trial.report(value, 30)
        study.tell(trial, value)
    pruned = study.ask()
    spec.suggest(pruned)
    pruned.set_user_attr("stop_reason", "nan_loss")
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)


def test_create_stores_the_spec_and_metric_name(sqlite_url):
    spec = build_spec(copy.deepcopy(SPEC))
    study = create_study(spec, storage_url=sqlite_url)
    loaded = optuna.load_study(study_name="tiny", storage=sqlite_url)
    assert loaded.user_attrs["spec"] == spec.to_dict()
    assert loaded.user_attrs["scale"] == "1k"
    assert loaded.metric_names == ["bleu"]
    assert loaded.direction == optuna.study.StudyDirection.MAXIMIZE
    # the spec round-trips through the storage unchanged
    assert spec_from_study(loaded).to_dict() == spec.to_dict()
    assert study.study_name == "tiny"


def test_existing_name_is_refused_unless_exists_ok_with_identical_spec(sqlite_url):
    spec = build_spec(copy.deepcopy(SPEC))
    create_study(spec, storage_url=sqlite_url)
    with pytest.raises(UserError, match="study 'tiny' already exists .* --exists-ok"):
        create_study(spec, storage_url=sqlite_url)
    assert create_study(spec, storage_url=sqlite_url, exists_ok=True).study_name == "tiny"
    other = copy.deepcopy(SPEC)
    other["budget"]["trials"] = 9
    with pytest.raises(UserError, match=r"different spec \(differs in: budget\)"):
        create_study(build_spec(other), storage_url=sqlite_url, exists_ok=True)
    assert len(optuna.get_all_study_names(sqlite_url)) == 1


def test_list_show_delete(sqlite_url):
    study = create_study(build_spec(copy.deepcopy(SPEC)), storage_url=sqlite_url)
    create_study(build_spec(copy.deepcopy(SPEC)), name="empty", storage_url=sqlite_url)
    add_trials(study)

    rows = {r["name"]: r for r in list_studies(sqlite_url)}
    assert rows["tiny"]["states"]["COMPLETE"] == 2 and rows["tiny"]["states"]["PRUNED"] == 1
    assert rows["tiny"]["best_value"] == 7.5 and rows["tiny"]["best_trial"] == 0  # bleu: higher is better
    assert rows["empty"]["best_value"] is None and rows["empty"]["scale"] == "1k"

    info = show_study("tiny", sqlite_url)
    assert [r["number"] for r in info["best"]] == [0, 1]
    assert set(info["best"][0]["params"]) == {"train.lr", "model.d_model"}
    assert info["stop_reasons"] == {"diverged": 1, "max_steps": 1, "nan_loss": 1}
    assert info["trials"][0]["tokens_per_s"] == 1234.5 and info["trials"][0]["wall_s"] == 2.5

    delete_study("tiny", sqlite_url)
    assert [r["name"] for r in list_studies(sqlite_url)] == ["empty"]
    with pytest.raises(UserError, match="no study named 'tiny' .*studies there: empty"):
        show_study("tiny", sqlite_url)


def test_cli_create_list_show_delete(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    spec = spec_file(tmp_path)
    url = "sqlite:///cli.db"  # relative: in the working directory, like the embedded default
    runner = CliRunner()
    created = runner.invoke(app, ["study", "create", str(spec), "budget.trials=5", "--storage", url])
    assert created.exit_code == 0, created.output
    assert "study 'tiny' in sqlite:///cli.db" in created.output and "budget 5 trials" in created.output
    again = runner.invoke(app, ["study", "create", str(spec), "--storage", url])
    assert isinstance(again.exception, UserError) and "already exists" in str(again.exception)

    add_trials(optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/cli.db"))
    listed = runner.invoke(app, ["study", "list", "--storage", url])
    assert listed.exit_code == 0, listed.output
    assert "tiny" in listed.output and "7.5" in listed.output
    shown = runner.invoke(app, ["study", "show", "tiny", "--storage", url])
    assert shown.exit_code == 0, shown.output
    assert "diverged 1" in shown.output and "train.lr=" in shown.output and "1234" in shown.output

    refused = runner.invoke(app, ["study", "delete", "tiny", "--storage", url], input="n\n")
    assert refused.exit_code == 1 and "tiny" in [r["name"] for r in list_studies(f"sqlite:///{tmp_path}/cli.db")]
    deleted = runner.invoke(app, ["study", "delete", "tiny", "--yes", "--storage", url])
    assert deleted.exit_code == 0 and "deleted study 'tiny' (3 trials)" in deleted.output


def test_cli_invalid_spec_exits_2_and_creates_nothing(tmp_path):
    spec = spec_file(tmp_path, lambda r: r["search"]["train.lr"].update(low=1.0))
    result = cli("study", "create", str(spec), cwd=tmp_path)
    assert result.returncode == 2
    assert "search.train.lr: low (1.0) must be below high (0.003)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "mt-tune.db").exists()  # the embedded default was not even created


def test_invalid_spec_leaves_the_storage_as_it_was(tmp_path):
    url = f"sqlite:///{tmp_path}/kept.db"
    create_study(build_spec(copy.deepcopy(SPEC)), name="other", storage_url=url)
    with pytest.raises(ConfigError):
        create_study(load_spec(spec_file(tmp_path, lambda r: r["model"].update(n_heads=3))), storage_url=url)
    assert optuna.get_all_study_names(url) == ["other"]


def test_storage_errors_mask_the_password():
    with pytest.raises((UserError, StorageUnavailable)) as info:
        list_studies("postgresql+psycopg://me:hunter2@127.0.0.1:1/none")
    assert "hunter2" not in str(info.value) and "me:***@" in str(info.value)


def optuna_cli_trials(url: str, name: str) -> list[dict]:
    result = subprocess.run([str(BIN / "optuna"), "trials", "--storage", url, "--study-name", name, "-f", "json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_optuna_cli_reads_an_mt_tune_study_on_the_embedded_default(tmp_path):
    url = f"sqlite:///{tmp_path}/mt-tune.db"
    add_trials(create_study(build_spec(copy.deepcopy(SPEC)), storage_url=url))
    trials = optuna_cli_trials(url, "tiny")
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert trials[0]["value"] == {"bleu": 7.5} and "train.lr" in trials[0]["params"]  # named by the metric
    assert trials[0]["user_attrs"]["stop_reason"] == "diverged"


def test_optuna_cli_reads_an_mt_tune_study_on_postgresql(fresh_postgres_url):
    add_trials(create_study(build_spec(copy.deepcopy(SPEC)), storage_url=fresh_postgres_url))
    trials = optuna_cli_trials(fresh_postgres_url, "tiny")
    assert len(trials) == 3 and trials[1]["value"] == {"bleu": 3.25}
    stored = optuna.load_study(study_name="tiny", storage=fresh_postgres_url).user_attrs["spec"]
    assert stored == build_spec(copy.deepcopy(SPEC)).to_dict()
