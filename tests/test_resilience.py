"""Riding out a flaky database: heartbeats, retried transient errors, lost replies, orphaned trials (PostgreSQL)."""

from __future__ import annotations

import logging
import time

import optuna
import psycopg
import pytest
import sqlalchemy.exc
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from test_storage import _clean_environment, free_port  # noqa: F401 (_clean_environment: an autouse fixture)

from mt_tune.errors import UserError
from mt_tune.search import resilience as rs
from mt_tune.search import storage as st


def wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


# --- heartbeat settings --------------------------------------------------------------------


def test_heartbeat_settings_default_and_from_environment(monkeypatch):
    assert rs.heartbeat_settings() == (60, 180, 3)
    monkeypatch.setenv(rs.HEARTBEAT_ENV, "30")
    assert rs.heartbeat_settings() == (30, 90, 3)
    monkeypatch.setenv(rs.GRACE_ENV, "75")
    monkeypatch.setenv(rs.MAX_RETRY_ENV, "0")
    assert rs.heartbeat_settings() == (30, 75, 0)
    monkeypatch.setenv(rs.GRACE_ENV, "59")
    with pytest.raises(UserError, match="MT_TUNE_HEARTBEAT_GRACE=59 is shorter than two heartbeat intervals"):
        rs.heartbeat_settings()
    monkeypatch.setenv(rs.HEARTBEAT_ENV, "soon")
    with pytest.raises(UserError, match="MT_TUNE_HEARTBEAT_INTERVAL='soon' is not a whole number"):
        rs.heartbeat_settings()


# --- transient errors ----------------------------------------------------------------------


def refused_connection_error() -> sqlalchemy.exc.OperationalError:
    """The error a real connection attempt to a closed port raises, as SQLAlchemy wraps it."""
    engine = sqlalchemy.create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x")
    try:
        engine.connect()
    except sqlalchemy.exc.OperationalError as e:
        return e
    finally:
        engine.dispose()
    raise AssertionError("connected to a closed port")


def test_transient_and_permanent_errors_are_told_apart(postgres_url):
    assert rs.is_transient(refused_connection_error())
    wrapped = optuna.exceptions.StorageInternalError("commit failed")
    wrapped.__cause__ = refused_connection_error()
    assert rs.is_transient(wrapped)  # Optuna's wrapper around a driver error
    engine = sqlalchemy.create_engine(make_url(postgres_url).set(database="no_such_db"))
    with pytest.raises(sqlalchemy.exc.OperationalError) as missing_db:
        engine.connect()
    engine.dispose()
    assert not rs.is_transient(missing_db.value)
    assert not rs.is_transient(ValueError("a bug"))


def test_with_retry_backs_off_until_the_call_succeeds(caplog):
    error = refused_connection_error()
    calls = []

    def flaky(x: int) -> int:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise error
        return x * 2

    with caplog.at_level(logging.WARNING, logger="mt_tune.storage"):
        assert rs.with_retry(flaky, 21) == 42
    assert len(calls) == 3 and calls[2] - calls[1] > calls[1] - calls[0] > 0.1  # growing pauses
    assert "retry 2" in caplog.text


def test_with_retry_gives_up_after_its_window_and_never_retries_other_errors():
    error = refused_connection_error()
    calls = []

    def down() -> None:
        calls.append(1)
        raise error

    start = time.monotonic()
    with pytest.raises(sqlalchemy.exc.OperationalError):
        rs.with_retry(down, retry_for=1.0)
    assert 1 < len(calls) <= 5 and time.monotonic() - start < 2

    def bug() -> None:
        calls.append(1)
        raise KeyError("x")

    calls.clear()
    with pytest.raises(KeyError):
        rs.with_retry(bug)
    assert len(calls) == 1


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_finishing_a_trial_is_not_lost_when_the_reply_to_a_commit_is(fresh_postgres_url, monkeypatch):
    """The commit went through, the connection dropped before the reply: the retry finds the
    trial finished, and that is success, not UpdateFinishedTrialError."""
    storage = st.open_storage(fresh_postgres_url)
    study = optuna.create_study(study_name="lost-reply", storage=storage)
    trial = study.ask()
    commit_then_drop = optuna.storages.RDBStorage.set_trial_state_values
    dropped = []

    def commit_and_lose_reply(self, trial_id, state, values=None):
        result = commit_then_drop(self, trial_id, state, values)
        if not dropped:
            dropped.append(1)
            raise refused_connection_error()
        return result

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_state_values", commit_and_lose_reply)
    assert storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [1.0]) is True
    assert dropped and storage.get_trial(trial._trial_id).state == TrialState.COMPLETE


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_failed_heartbeat_is_logged_and_the_next_one_is_written(fresh_postgres_url, monkeypatch, caplog):
    """A heartbeat that cannot be written is skipped, not raised: the thread that writes them
    goes on, and the next beat lands once the server is back."""
    monkeypatch.setenv(rs.HEARTBEAT_ENV, "1")
    storage = st.open_storage(fresh_postgres_url)
    study = optuna.create_study(study_name="beat", storage=storage)
    trial = study.ask()
    error = refused_connection_error()
    write = optuna.storages.RDBStorage.set_trial_system_attr
    down = [True]

    def server_down(self, trial_id, key, value):
        if down[0] and key == rs.HEARTBEAT_KEY:
            raise error
        return write(self, trial_id, key, value)

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_system_attr", server_down)
    with caplog.at_level(logging.WARNING, logger="mt_tune.storage"):
        wait_until(lambda: "not recorded" in caplog.text, 10)
    assert "heartbeat for trial id" in caplog.text and "ConnectionRefused" not in caplog.text.split("not recorded")[0][-5:]
    before = study.trials[0].system_attrs[rs.HEARTBEAT_KEY]
    down[0] = False
    wait_until(lambda: study.trials[0].system_attrs[rs.HEARTBEAT_KEY] > before, 10)
    study.tell(trial, 1.0)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_storage_calls_ride_out_a_server_that_drops_every_connection(fresh_postgres_url):
    """Connections killed by the server (as in a restart) are replaced; the call succeeds."""
    storage = st.open_storage(fresh_postgres_url)
    study = optuna.create_study(study_name="dropped", storage=storage)
    trial = study.ask()
    trial.report(1.0, 1)
    conninfo = make_url(fresh_postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as admin:
        killed = admin.execute("select count(pg_terminate_backend(pid)) from pg_stat_activity "
                               "where datname = current_database() and pid <> pg_backend_pid()").fetchone()[0]
    assert killed >= 1
    trial.report(2.0, 2)
    study.tell(trial, 2.0)
    assert study.trials[0].intermediate_values == {1: 1.0, 2: 2.0}


# --- lost replies: a commit that went through, a connection that dropped before the answer ---


def losing_the_first_reply(monkeypatch, name: str, when=lambda *args: True) -> list:
    """Make RDBStorage.<name> commit and then fail, once, as a dropped connection does."""
    real = getattr(optuna.storages.RDBStorage, name)
    lost = []

    def commit_and_lose_reply(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        if not lost and when(*args):
            lost.append(args)
            raise refused_connection_error()
        return result

    monkeypatch.setattr(optuna.storages.RDBStorage, name, commit_and_lose_reply)
    return lost


def test_creating_a_trial_is_not_doubled_when_the_reply_to_its_commit_is_lost(fresh_postgres_url, monkeypatch):
    """The retry finds the trial its first attempt made (by its token): one trial, the one the
    worker then runs, and none left RUNNING; the same for a queued (enqueued) trial."""
    study = optuna.create_study(study_name="lost-create", storage=st.open_storage(fresh_postgres_url))
    lost = losing_the_first_reply(monkeypatch, "create_new_trial")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert lost and [t.state for t in study.trials] == [TrialState.COMPLETE]

    lost = losing_the_first_reply(monkeypatch, "create_new_trial")
    study.enqueue_trial({"x": 0.5})
    assert lost and [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.WAITING]
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 and study.trials[1].params == {"x": 0.5}


def test_finishing_a_trial_and_creating_a_study_survive_a_lost_reply(fresh_postgres_url, monkeypatch):
    storage = st.open_storage(fresh_postgres_url)
    lost = losing_the_first_reply(monkeypatch, "create_new_study")
    study = optuna.create_study(study_name="lost-study", storage=storage)
    assert lost and [s.study_name for s in storage.get_all_studies()] == ["lost-study"]
    lost = losing_the_first_reply(monkeypatch, "delete_study")
    optuna.delete_study(study_name=study.study_name, storage=storage)
    assert lost and storage.get_all_studies() == []


def test_a_queued_trial_taken_while_the_reply_is_lost_is_recovered_and_its_params_run(fresh_postgres_url, monkeypatch):
    """Taking a queued trial (WAITING -> RUNNING) committed, but the worker never heard: its
    retry answers "taken", Optuna moves on, and the trial is RUNNING with no heartbeat. After the
    grace period it is failed and queued again with its params, and those params run; it does
    not count toward the budget."""
    monkeypatch.setenv(rs.HEARTBEAT_ENV, "1")
    monkeypatch.setenv(rs.GRACE_ENV, "2")
    study = optuna.create_study(study_name="lost-pop", storage=st.open_storage(fresh_postgres_url))
    study.enqueue_trial({"x": 0.25})
    lost = losing_the_first_reply(monkeypatch, "set_trial_state_values", when=lambda _id, state, *a: state == TrialState.RUNNING)
    trial = study.ask({"x": FloatDistribution(0, 1)})
    assert lost and trial.number == 1  # not the queued trial
    study.tell(trial, 1.0)
    orphan = study.trials[0]
    assert orphan.state == TrialState.RUNNING and rs.HEARTBEAT_KEY not in orphan.system_attrs
    assert rs.recover_orphaned_trials(study) == []  # within the grace period: maybe alive
    time.sleep(2.5)
    assert rs.recover_orphaned_trials(study) == [0]
    assert rs.recover_orphaned_trials(study) == []  # once only
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE], states
    retry = study.trials[2]
    assert retry.params == {"x": 0.25} and retry.system_attrs["retry_history"] == [0]
    from mt_tune.search.worker import counts_toward_budget

    assert [t.number for t in counts_toward_budget(study.trials)] == [1, 2]


def test_a_live_trial_beats_and_a_silent_one_is_recovered_once(fresh_postgres_url, monkeypatch):
    """A trial beats while it runs (so it is never taken for dead), and stops when it
    finishes; a trial whose process stopped (its storage closed: no more beats) is failed
    after the grace period by another process, and queued once even if two processes sweep."""
    monkeypatch.setenv(rs.HEARTBEAT_ENV, "1")
    monkeypatch.setenv(rs.GRACE_ENV, "2")
    storage = st.open_storage(fresh_postgres_url)
    study = optuna.create_study(study_name="beats", storage=storage)
    alive, dead = study.ask(), study.ask()
    dying = rs.ResilientStorage(optuna.storages.RDBStorage(fresh_postgres_url), 1, 2, 3)
    silent = optuna.load_study(study_name="beats", storage=dying).ask()
    dying.close()  # its process is gone
    first = study.trials[alive.number].system_attrs[rs.HEARTBEAT_KEY]
    time.sleep(3.2)
    assert study.trials[alive.number].system_attrs[rs.HEARTBEAT_KEY] > first + 1.5
    study.tell(dead, 0.0)
    other = optuna.load_study(study_name="beats", storage=rs.ResilientStorage(optuna.storages.RDBStorage(fresh_postgres_url), 1, 2, 3))
    assert rs.recover_orphaned_trials(other) == [silent.number]
    assert rs.recover_orphaned_trials(study) == []
    states = [t.state for t in study.trials]
    assert states == [TrialState.RUNNING, TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING], states
    study.tell(alive, 1.0)
    finished_beat = study.trials[alive.number].system_attrs[rs.HEARTBEAT_KEY]
    time.sleep(1.5)
    assert study.trials[alive.number].system_attrs[rs.HEARTBEAT_KEY] == finished_beat  # no beat after the end
