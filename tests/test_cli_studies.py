"""The commands of cli/studies.py (study, worker, dashboard, demo): output, exit statuses, imports, table widths."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from test_cli import run_cli
from test_study import BIN, SPEC, add_trials, spec_file

from mt_tune.cli import app
from mt_tune.errors import UserError
from mt_tune.search.spec import build_spec
from mt_tune.search.storage import close_storages
from mt_tune.search.study import create_study, list_studies

# Trials made with ask/tell on a storage with heartbeats draw a harmless warning.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used:UserWarning")


def cli(*args: str, cwd: Path, input: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    env.pop("MT_TUNE_STORAGE", None)
    return subprocess.run([str(BIN / "mt-tune"), *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env=env, input=input)


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


def test_a_training_config_is_refused_as_a_spec_by_what_it_is(tmp_path):
    baseline = Path(__file__).resolve().parents[1] / "studies" / "baseline.yaml"
    done = cli("study", "create", str(baseline), "--storage", "sqlite:///s.db", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"error: {baseline} is a training config (no search: section); a study spec "
                                   f"needs a search: section — see studies/demo.yaml")
    assert list(tmp_path.iterdir()) == []


def test_study_tables_fit_80_columns_without_cutting_a_cell(tmp_path):
    from rich.cells import cell_len

    from mt_tune.search.promote import promote

    url = f"sqlite:///{tmp_path}/s.db"
    raw = copy.deepcopy(SPEC)
    raw["name"] = "a-study-with-a-long-name"
    raw["search"].update({"train.warmup_steps": {"type": "int", "low": 50, "high": 400, "step": 50},
                          "model.dropout": {"type": "float", "low": 0.0, "high": 0.4},
                          "model.enc_layers": {"type": "int", "low": 1, "high": 4}})
    study = create_study(build_spec(raw), storage_url=url)
    for _ in range(3):
        add_trials(study)
    promote(study.study_name, "promoted", url, top_k=3, log=lambda _: None)
    close_storages()
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}  # piped: rich takes COLUMNS as the width
    env.pop("MT_TUNE_STORAGE", None)
    for args in (["list"], ["show", study.study_name], ["show", "promoted"]):
        done = subprocess.run([str(BIN / "mt-tune"), "study", *args, "--storage", url], capture_output=True,
                              text=True, timeout=120, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
        assert "…" not in done.stdout, done.stdout
        assert max(cell_len(line) for line in done.stdout.splitlines()) <= 80, done.stdout
        for header in ("stop reason", "params", "tok/s", "source value") if args[0] == "show" else ("metric", "best"):
            if header != "source value" or args[1] == "promoted":
                assert header in done.stdout, (header, done.stdout)



def test_study_commands_run_without_torch(tmp_path):
    # Reading a study needs no torch: it costs seconds and hundreds of MB to import, which
    # would make `mt-tune study list` several times slower than `optuna studies`.
    spec = Path(__file__).resolve().parents[1] / "studies" / "demo.yaml"
    url = f"sqlite:///{tmp_path}/studies.db"
    program = textwrap.dedent(f"""
        import sys
        from mt_tune.cli import main

        for args in (["study", "create", {str(spec)!r}], ["study", "list"], ["study", "show", "demo"],
                     ["study", "delete", "demo", "--yes"]):
            try:
                main([*args, "--storage", {url!r}])
            except SystemExit as e:
                assert not e.code, (args, e.code)
        print("torch imported:", "torch" in sys.modules)
    """)
    result = run_cli(script=[sys.executable, "-c", program], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deleted study 'demo'" in result.stdout
    assert result.stdout.strip().endswith("torch imported: False")
