"""Storage URLs, masking, heartbeats, retries and connection use (real SQLite and PostgreSQL)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psycopg
import pytest
import sqlalchemy.event
import sqlalchemy.exc
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from mt_tune.errors import UserError
from mt_tune.search import storage as st

BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    for name in (st.ENV_VAR, st.HEARTBEAT_ENV, st.GRACE_ENV, st.MAX_RETRY_ENV, st.RETRY_WINDOW_ENV):
        monkeypatch.delenv(name, raising=False)
    yield
    st.close_storages()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connections(url: str) -> int:
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return conn.execute("select count(*) from pg_stat_activity where datname = current_database() "
                            "and pid <> pg_backend_pid()").fetchone()[0]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"}
    env.pop(st.ENV_VAR, None)
    return subprocess.run([str(BIN / "mt-tune"), *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


# --- URLs -----------------------------------------------------------------------------------


def test_resolution_order_flag_then_environment_then_embedded_default(monkeypatch):
    assert st.resolve_url() == "sqlite:///mt-tune.db"
    monkeypatch.setenv(st.ENV_VAR, "postgresql+psycopg://env@db/x")
    assert st.resolve_url() == "postgresql+psycopg://env@db/x"
    assert st.resolve_url("sqlite:///flag.db") == "sqlite:///flag.db"


@pytest.mark.parametrize("url, masked", [
    ("postgresql+psycopg://u:secret@h:5432/db", "postgresql+psycopg://u:***@h:5432/db"),
    ("postgresql://u:p@ss:w/rd@h/db", "postgresql://u:***@h/db"),  # "@", ":" and "/" in the password
    ("postgresql://h/db?user=u&password=secret&sslmode=require", "postgresql://h/db?user=u&password=***&sslmode=require"),
    ("postgresql+psycopg://u@h:5432/db", "postgresql+psycopg://u@h:5432/db"),
    ("sqlite:///mt-tune.db", "sqlite:///mt-tune.db"),
])
def test_mask_url_hides_every_form_of_password(url, masked):
    assert st.mask_url(url) == masked


def test_postgresql_urls_use_psycopg_3():
    assert st.normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert st.normalize_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize("url, message", [
    ("mt-tune.db", "is not a URL; expected one of: sqlite:///"),
    ("mysql://u:hunter2@h/db", "unknown scheme 'mysql'; expected one of"),
    ("postgresql+psycopg2://u@h/db", r"unknown scheme 'postgresql\+psycopg2'"),
    ("postgresql://u:hunter2@h:port/db", "cannot be parsed"),
    ("sqlite://", "names no file"),
])
def test_bad_urls_are_user_errors_that_name_the_url_masked(url, message):
    with pytest.raises(UserError, match=message) as err:
        st.open_storage(url)
    assert "hunter2" not in str(err.value)


def test_bad_url_on_the_command_line_is_one_line_exit_2(tmp_path):
    done = cli("study", "list", "--storage", "mysql://u:hunter2@h/db", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("error: storage URL 'mysql://u:***@h/db': unknown scheme")
    assert len(done.stderr.strip().splitlines()) == 1 and "hunter2" not in done.stderr + done.stdout


def test_unreachable_server_is_one_line_exit_1_after_retries(tmp_path):
    url = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/db"
    start = time.monotonic()
    done = cli("study", "list", "--storage", url, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - start > 3  # back-off: 0.5 + 1 + 2 s between the four attempts
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("error: storage postgresql+psycopg://postgres:***@127.0.0.1:")
    assert "unreachable after 4 attempts" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout


def test_wrong_database_is_a_user_error_without_retries(postgres_url):
    url = make_url(postgres_url).set(password="hunter2", database="no_such_db").render_as_string(hide_password=False)
    start = time.monotonic()
    with pytest.raises(UserError, match='database "no_such_db" does not exist') as err:
        st.open_storage(url)
    assert time.monotonic() - start < 2 and "hunter2" not in str(err.value)


# --- opening ----------------------------------------------------------------------------------


def test_heartbeat_settings_default_and_from_environment(monkeypatch):
    assert st.heartbeat_settings() == (60, 180, 3)
    monkeypatch.setenv(st.HEARTBEAT_ENV, "30")
    assert st.heartbeat_settings() == (30, 90, 3)
    monkeypatch.setenv(st.GRACE_ENV, "75")
    monkeypatch.setenv(st.MAX_RETRY_ENV, "0")
    assert st.heartbeat_settings() == (30, 75, 0)
    monkeypatch.setenv(st.GRACE_ENV, "59")
    with pytest.raises(UserError, match="MT_TUNE_HEARTBEAT_GRACE=59 is shorter than two heartbeat intervals"):
        st.heartbeat_settings()
    monkeypatch.setenv(st.HEARTBEAT_ENV, "soon")
    with pytest.raises(UserError, match="MT_TUNE_HEARTBEAT_INTERVAL='soon' is not a whole number"):
        st.heartbeat_settings()


def test_postgresql_storage_has_heartbeats_retry_callback_and_a_small_checked_pool(fresh_postgres_url, monkeypatch):
    monkeypatch.setenv(st.HEARTBEAT_ENV, "5")
    storage = st.open_storage(fresh_postgres_url)
    assert st.open_storage(fresh_postgres_url.replace("postgresql+psycopg", "postgresql")) is storage
    assert isinstance(storage, st.FinishedTrialsCache) and isinstance(storage.backend, st.ResilientRDBStorage)
    assert storage.get_heartbeat_interval() == 5 and storage.backend.grace_period == 15
    assert isinstance(storage.get_heartbeat_stale_trial_callback(), RetryHeartbeatStaleTrialCallback)
    rdb = storage.backend
    assert rdb.failed_trial_callback is rdb.heartbeat_stale_trial_callback  # the new name, not the old
    pool = rdb.engine.pool
    assert (pool.size(), pool._max_overflow, pool._pre_ping, pool._recycle) == (1, 1, True, 1800)


def test_workers_do_not_create_the_schema(fresh_postgres_url, tmp_path):
    with pytest.raises(UserError, match="holds no studies yet; create one first: mt-tune study create"):
        st.open_storage(fresh_postgres_url, create_schema=False)
    with pytest.raises(UserError, match="holds no studies yet"):
        st.open_storage(f"sqlite:///{tmp_path}/none.db", create_schema=False)
    assert not (tmp_path / "none.db").exists()  # no empty database file left behind
    st.open_storage(fresh_postgres_url, create_schema=True)
    st.close_storages()
    assert isinstance(st.open_storage(fresh_postgres_url, create_schema=False).backend, st.ResilientRDBStorage)


def test_a_worker_process_uses_at_most_two_connections_and_returns_them(fresh_postgres_url, monkeypatch):
    monkeypatch.setenv(st.HEARTBEAT_ENV, "1")
    study = optuna.create_study(study_name="pool", storage=st.open_storage(fresh_postgres_url))
    seen = []

    def objective(trial: optuna.Trial) -> float:
        for step in range(12):  # 2.4 s: the heartbeat thread writes twice or more meanwhile
            trial.report(float(step), step)
            trial.should_prune()
            seen.append(connections(fresh_postgres_url))
            time.sleep(0.2)
        return 1.0

    study.optimize(objective, n_trials=2)
    assert 1 <= max(seen) <= 2, seen
    st.close_storages()
    assert connections(fresh_postgres_url) == 0


# --- transient errors -------------------------------------------------------------------------


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
    assert st.is_transient(refused_connection_error())
    wrapped = optuna.exceptions.StorageInternalError("commit failed")
    wrapped.__cause__ = refused_connection_error()
    assert st.is_transient(wrapped)  # Optuna's wrapper around a driver error
    engine = sqlalchemy.create_engine(make_url(postgres_url).set(database="no_such_db"))
    with pytest.raises(sqlalchemy.exc.OperationalError) as missing_db:
        engine.connect()
    engine.dispose()
    assert not st.is_transient(missing_db.value)
    assert not st.is_transient(ValueError("a bug"))


def test_with_retry_backs_off_until_the_call_succeeds(caplog):
    error = refused_connection_error()
    calls = []

    def flaky(x: int) -> int:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise error
        return x * 2

    with caplog.at_level(logging.WARNING, logger="mt_tune.storage"):
        assert st.with_retry(flaky, 21) == 42
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
        st.with_retry(down, retry_for=1.0)
    assert 1 < len(calls) <= 5 and time.monotonic() - start < 2

    def bug() -> None:
        calls.append(1)
        raise KeyError("x")

    calls.clear()
    with pytest.raises(KeyError):
        st.with_retry(bug)
    assert len(calls) == 1


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
@pytest.mark.parametrize("server", ["postgresql", "sqlite"])
def test_report_is_one_upsert_that_refuses_a_finished_trial(server, fresh_postgres_url, tmp_path):
    url = fresh_postgres_url if server == "postgresql" else f"sqlite:///{tmp_path}/r.db"
    storage = st.open_storage(url)
    study = optuna.create_study(study_name="report", storage=storage)
    trial = study.ask()
    statements = []
    sqlalchemy.event.listen(storage.backend.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    trial.report(1.0, 1)
    assert len(statements) == 1 and "ON CONFLICT" in statements[0]
    storage.set_trial_intermediate_value(trial._trial_id, 1, 2.5)  # the same step again: replaced
    trial.report(float("inf"), 2)
    trial.report(float("nan"), 3)
    study.tell(trial, 2.5)
    values = study.trials[0].intermediate_values
    assert values[1] == 2.5 and values[2] == float("inf") and values[3] != values[3]
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_intermediate_value(trial._trial_id, 4, 1.0)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_finished_trials_are_answered_from_the_cache_until_another_trial_finishes(fresh_postgres_url):
    """What a median pruner asks at every report (the COMPLETE trials) costs one small query
    while nothing finished, and is never stale: another process's finished trial shows at once."""
    writer = optuna.create_study(study_name="cache", storage=st.open_storage(fresh_postgres_url))
    for i in range(3):
        done = writer.ask()
        done.report(float(i), 1)
        writer.tell(done, float(i))
    other = writer.ask()  # another worker's running trial
    reader_storage = st.FinishedTrialsCache(st.ResilientRDBStorage(fresh_postgres_url))
    reader = optuna.load_study(study_name="cache", storage=reader_storage)
    mine = reader.ask()
    statements = []
    sqlalchemy.event.listen(reader_storage.backend.engine, "before_cursor_execute",
                            lambda *args: statements.append(args[2]))
    try:
        assert [t.value for t in reader.get_trials(states=(TrialState.COMPLETE,))] == [0.0, 1.0, 2.0]
        for step in range(5):  # what a worker does at each evaluation
            mine.report(float(step), step)
            other.report(float(step), step)
            statements.clear()
            completed = reader.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            assert len(completed) == 3
            assert len(statements) == 1 and "trial_intermediate_values" not in statements[0]
        writer.tell(other, 9.0)
        assert [t.value for t in reader.get_trials(states=(TrialState.COMPLETE,))] == [0.0, 1.0, 2.0, 9.0]
        assert reader.get_trials(states=(TrialState.COMPLETE,))[-1].intermediate_values == {s: float(s) for s in range(5)}
        # running trials still come fresh, through Optuna's own cache
        assert reader.get_trials(states=(TrialState.RUNNING,))[0].intermediate_values == {s: float(s) for s in range(5)}
    finally:
        reader_storage.backend.statements.close()
        reader_storage.backend.engine.dispose()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_back_to_back_statements_share_a_connection_and_a_pause_returns_it(fresh_postgres_url, monkeypatch):
    """A report and the pruner's query, one after the other, check out (and ping) one pooled
    connection between them; after HELD_IDLE_S without a statement the next one checks out
    a fresh connection; closing the storages returns it to the server."""
    storage = st.open_storage(fresh_postgres_url)
    study = optuna.create_study(study_name="held", storage=storage)
    done = study.ask()
    study.tell(done, 1.0)
    trial = study.ask()
    checkouts = []
    sqlalchemy.event.listen(storage.backend.engine, "checkout", lambda *args: checkouts.append(1))
    trial.report(1.0, 1)  # the first statement of the held connection: one checkout
    for step in range(2, 12):  # a worker's evaluations, back to back
        trial.report(float(step), step)
        assert len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) == 1
    assert len(checkouts) == 1
    monkeypatch.setattr(st, "HELD_IDLE_S", 0.0)
    time.sleep(0.01)
    trial.report(12.0, 12)
    assert len(checkouts) == 2
    assert study.trials[1].intermediate_values == {s: float(s) for s in range(1, 13)}
    st.close_storages()
    assert connections(fresh_postgres_url) == 0


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
def test_a_failed_heartbeat_is_logged_not_raised(fresh_postgres_url, monkeypatch, caplog):
    """Optuna's heartbeat thread ends at its first exception, after which a live trial would be
    declared dead; so a heartbeat that cannot be written is skipped until the next one."""
    monkeypatch.setenv(st.HEARTBEAT_ENV, "1")
    storage = st.open_storage(fresh_postgres_url)
    trial = optuna.create_study(study_name="beat", storage=storage).ask()
    error = refused_connection_error()

    def server_down(self, trial_id):
        raise error

    monkeypatch.setattr(optuna.storages.RDBStorage, "record_heartbeat", server_down)
    with caplog.at_level(logging.WARNING, logger="mt_tune.storage"):
        storage.record_heartbeat(trial._trial_id)
    assert f"heartbeat for trial id {trial._trial_id} not recorded" in caplog.text


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
