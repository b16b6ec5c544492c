"""Studies: create (spec stored, duplicates refused), list, show, delete; Optuna's own CLI reads them."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from test_launcher import data_cache, env_for, tiny_spec  # noqa: F401 (data_cache: a fixture)

from mt_tune.errors import ConfigError, UserError
from mt_tune.search.spec import build_spec, load_spec, spec_from_study
from mt_tune.search.storage import StorageUnavailable, close_storages
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


def test_config_spec_and_study_modules_import_without_torch():
    # Everything a study command needs is torch-free; only training imports torch.
    modules = ["mt_tune.config", "mt_tune.search.spec", "mt_tune.search.space", "mt_tune.search.study",
               "mt_tune.search.storage", "mt_tune.search.urls", "mt_tune.search.transfer", "mt_tune.search.promote",
               "mt_tune.search.export", "mt_tune.search.report", "mt_tune.cli"]
    code = f"import sys; import {', '.join(modules)}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def spec_file(tmp_path: Path, change=None) -> Path:
    raw = copy.deepcopy(SPEC)
    if change:
        change(raw)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


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


# --- start configurations: queued first ----------------------------------------------------


START = [{"train.lr": 1.5e-3, "model.d_model": 64}, {"train.lr": 5.0e-4}]


def test_create_queues_the_start_configurations_in_order(sqlite_url):
    spec = build_spec({**copy.deepcopy(SPEC), "search_start": copy.deepcopy(START)})
    create_study(spec, storage_url=sqlite_url)
    loaded = optuna.load_study(study_name="tiny", storage=sqlite_url)
    waiting = loaded.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == START
    assert [t.user_attrs["search_start"] for t in waiting] == [0, 1] and [t.number for t in waiting] == [0, 1]
    assert spec_from_study(loaded).search_start == START  # stored with the spec, and read back
    # Reusing the study (identical spec) queues nothing again.
    create_study(spec, storage_url=sqlite_url, exists_ok=True)
    assert len(loaded.get_trials()) == 2
    # The first trial asked for is the first start configuration, the rest of it sampled.
    trial = loaded.ask()
    assert spec.suggest(trial) == START[0] and trial.number == 0


def test_promoted_study_does_not_repeat_the_start_configurations(sqlite_url):
    from mt_tune.search.promote import promote

    source = create_study(build_spec({**copy.deepcopy(SPEC), "search_start": copy.deepcopy(START)}),
                          storage_url=sqlite_url)
    spec = spec_from_study(source)
    for i in range(3):  # the two start trials, then a sampled one
        trial = source.ask()
        spec.suggest(trial)
        source.tell(trial, float(i))
    promote("tiny", "tiny-full", sqlite_url, top_k=2, scale="full", log=lambda _: None)
    promoted = optuna.load_study(study_name="tiny-full", storage=sqlite_url)
    assert sorted(t.user_attrs["source_rank"] for t in promoted.trials) == [1, 2]
    assert "search_start" not in promoted.user_attrs["spec"]
    promote("tiny", "tiny-full", sqlite_url, top_k=2, scale="full", log=lambda _: None)  # reused, not refused
    assert len(promoted.trials) == 2


def test_start_configurations_run_first_in_order_once_across_two_workers(tmp_path, data_cache):
    """Two real `mt-tune worker` processes on one SQLite study: the queued start trials are
    popped one at a time, so each runs once, in order, before any sampled trial."""
    url = f"sqlite:///{tmp_path}/two.db"
    starts = [{"train.lr": lr} for lr in (1.0e-3, 2.0e-3, 5.0e-4)]
    create_study(build_spec({**tiny_spec(data_cache, trials=5, max_steps=8), "search_start": starts}), storage_url=url)
    close_storages()
    workers = [subprocess.Popen([str(BIN / "mt-tune"), "worker", "tiny", "--storage", url, "--artifacts",
                                 str(tmp_path / "artifacts")], cwd=tmp_path, env=env_for(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs

    every = optuna.load_study(study_name="tiny", storage=url).get_trials()
    trials = [t for t in every if t.state.name == "COMPLETE"]
    assert len(trials) == 5  # the budget, start trials included
    # A worker that asked just as the other took the last trial ends its own at once (README: Budget)
    assert all(t.state.name == "FAIL" and t.user_attrs.get("stop_reason") == "over_budget"
               for t in every if t not in trials)
    assert [t.params for t in trials[:3]] == starts and [t.user_attrs["search_start"] for t in trials[:3]] == [0, 1, 2]
    assert not any("search_start" in t.user_attrs for t in trials[3:])
    started = [t.datetime_start for t in trials]
    assert started[:3] == sorted(started[:3]) and max(started[:3]) <= min(started[3:])  # first, in order
    lrs = [t.params["train.lr"] for t in trials]
    assert [lrs.count(s["train.lr"]) for s in starts] == [1, 1, 1]  # once each
    ran = [len(re.findall(r"^trial +\d+ complete", out, re.M)) for out in outputs]
    assert min(ran) >= 1 and sum(ran) == 5, outputs  # both workers took part
