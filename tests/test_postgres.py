"""Optuna studies on a real PostgreSQL server, through mt_tune.search.storage."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy

from mt_tune.search.storage import open_storage
from mt_tune.search.urls import mask_url


def test_fixture_url_is_a_reachable_psycopg_database(postgres_url):
    assert postgres_url.startswith("postgresql+psycopg://")
    engine = sqlalchemy.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("select 1")).scalar() == 1
    finally:
        engine.dispose()


# The storage records heartbeats, which Optuna means for study.optimize; ask/tell is fine here.
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used:UserWarning")
def test_study_written_through_open_storage_reads_back_from_a_new_storage(fresh_postgres_url):
    storage = open_storage(fresh_postgres_url)
    assert open_storage(fresh_postgres_url) is storage  # one storage (one pool) per URL
    study = optuna.create_study(study_name="zh-en-demo", storage=storage, direction="minimize")
    study.set_user_attr("spec", {"data": {"scale": "10k"}, "metric": "val_loss"})

    sampled = []
    for number in range(3):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)})
        assert trial.number == number
        sampled.append(trial.params["lr"])
        for step, value in [(100, 5.0 - number), (200, 4.0 - number)]:
            trial.report(value, step)
        trial.set_user_attr("stop_reason", "max_steps")
        trial.set_user_attr("n_params", 1_000_000 + number)
        study.tell(trial, 4.0 - number)
    pruned = study.ask()
    pruned.report(9.0, 100)
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)

    # A separate storage object (its own engine and connections) sees everything written.
    reader = optuna.storages.RDBStorage(fresh_postgres_url)
    try:
        loaded = optuna.load_study(study_name="zh-en-demo", storage=reader)
        assert loaded.user_attrs["spec"] == {"data": {"scale": "10k"}, "metric": "val_loss"}
        trials = loaded.get_trials(deepcopy=False)
        assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3 + [optuna.trial.TrialState.PRUNED]
        assert [t.value for t in trials[:3]] == [4.0, 3.0, 2.0]
        assert [t.params["lr"] for t in trials[:3]] == sampled
        assert trials[2].intermediate_values == {100: 3.0, 200: 2.0}
        assert trials[1].user_attrs == {"stop_reason": "max_steps", "n_params": 1_000_001}
        assert trials[3].intermediate_values == {100: 9.0}
        assert loaded.best_trial.number == 2
        assert [s.study_name for s in optuna.get_all_study_summaries(reader)] == ["zh-en-demo"]
    finally:
        reader.remove_session()
        reader.engine.dispose()


def test_fresh_databases_are_isolated(postgres_url, fresh_postgres_url):
    assert fresh_postgres_url != postgres_url
    assert optuna.get_all_study_summaries(open_storage(fresh_postgres_url)) == []


@pytest.mark.parametrize("password", ["secret", "p%40ss", "s3cr3t!~*", "a:b"])
def test_mask_url_never_shows_the_password(password):
    url = f"postgresql+psycopg://u:{password}@db.example:5432/studies"
    masked = mask_url(url)
    assert password not in masked
    assert masked == "postgresql+psycopg://u:***@db.example:5432/studies"


def test_mask_url_keeps_urls_without_a_password():
    for url in ["sqlite:///mt-tune.db", "postgresql+psycopg://postgres@127.0.0.1:5432/db"]:
        assert mask_url(url) == url


def test_mask_url_hides_the_password_of_the_fixture_server_in_errors(postgres_url):
    # A storage URL with a password for a database that does not exist: the error names the
    # URL (masked) and never the password.
    from sqlalchemy.engine import make_url

    from mt_tune.errors import UserError

    bad = make_url(postgres_url).set(password="hunter2", database="no_such_db")
    with pytest.raises(UserError) as err:
        open_storage(bad.render_as_string(hide_password=False))
    assert "hunter2" not in str(err.value)
    assert "***" in str(err.value)
