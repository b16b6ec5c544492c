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
import sqlalchemy.exc
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from mt_tune.errors import UserError
from mt_tune.search import resilience as rs
from mt_tune.search import storage as st
from mt_tune.search import urls

BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    for name in (urls.ENV_VAR, rs.HEARTBEAT_ENV, rs.GRACE_ENV, rs.MAX_RETRY_ENV, rs.RETRY_WINDOW_ENV):
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


def wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"}
    env.pop(urls.ENV_VAR, None)
    return subprocess.run([str(BIN / "mt-tune"), *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


# --- opening a URL ---------------------------------------------------------------------------


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


def test_postgresql_storage_has_heartbeats_retries_and_a_small_checked_pool(fresh_postgres_url, monkeypatch):
    monkeypatch.setenv(rs.HEARTBEAT_ENV, "5")
    monkeypatch.setenv(rs.MAX_RETRY_ENV, "2")
    storage = st.open_storage(fresh_postgres_url)
    assert st.open_storage(fresh_postgres_url.replace("postgresql+psycopg", "postgresql")) is storage
    assert isinstance(storage, rs.ResilientStorage) and isinstance(storage.rdb, optuna.storages.RDBStorage)
    assert (storage.heartbeat_interval, storage.grace_period, storage.max_retry) == (5, 15, 2)
    # Not an RDBStorage, so Optuna uses it as it is instead of wrapping it in its private cache
    study = optuna.create_study(study_name="as-is", storage=storage)
    assert not isinstance(storage, optuna.storages.RDBStorage) and study.study_name == "as-is"
    pool = storage.rdb.engine.pool
    assert (pool.size(), pool._max_overflow, pool._pre_ping, pool._recycle) == (1, 1, True, 1800)


def test_workers_do_not_create_the_schema(fresh_postgres_url, tmp_path):
    with pytest.raises(UserError, match="holds no studies yet; create one first: mt-tune study create"):
        st.open_storage(fresh_postgres_url, create_schema=False)
    with pytest.raises(UserError, match="holds no studies yet"):
        st.open_storage(f"sqlite:///{tmp_path}/none.db", create_schema=False)
    assert not (tmp_path / "none.db").exists()  # no empty database file left behind
    st.open_storage(fresh_postgres_url, create_schema=True)
    st.close_storages()
    assert isinstance(st.open_storage(fresh_postgres_url, create_schema=False), rs.ResilientStorage)


def test_a_worker_process_uses_at_most_two_connections_and_returns_them(fresh_postgres_url, monkeypatch):
    monkeypatch.setenv(rs.HEARTBEAT_ENV, "1")
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


# --- public API only -------------------------------------------------------------------------


SRC = Path(__file__).resolve().parent.parent / "src"


def private_uses(source: str) -> list[str]:
    """Where Python source reaches into Optuna or optuna-dashboard internals: an import of a
    private module or name of theirs, or (in a module that imports either) any `x._name` or
    getattr/setattr/hasattr of an underscore name on anything but self/cls."""
    import ast

    tree = ast.parse(source)
    found, imports_them = [], False
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.split(".")[0] in ("optuna", "optuna_dashboard"):
                    imports_them = True
                    parts = module.split(".") + ([a.name for a in node.names] if isinstance(node, ast.ImportFrom) else [])
                    found += [f"line {node.lineno}: import {module}" for p in parts if p.startswith("_") and not p.startswith("__")][:1]
    if not imports_them:
        return found
    for node in ast.walk(tree):
        owner = None
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner, name = node.value, node.attr
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr", "hasattr")
              and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
              and str(node.args[1].value).startswith("_") and not str(node.args[1].value).startswith("__")):
            owner, name = node.args[0], node.args[1].value
        if owner is not None and not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
            found.append(f"line {node.lineno}: {ast.unparse(owner)}.{name}")
    return found


def test_the_private_use_check_sees_what_the_old_code_did():
    assert private_uses("from optuna.storages._cached_storage import _CachedStorage\n")
    assert private_uses("from optuna_dashboard import _note\n")
    assert private_uses("import optuna\ndef f(study):\n    return study._storage\n")
    assert private_uses("import optuna\nsetattr(optuna.storages.RDBStorage, '_get_trials', None)\n")
    assert not private_uses("import optuna\nclass A:\n    def f(self):\n        return self._x\n")
    assert not private_uses("import torch\ntorch._foreach_add_([], [])\n")  # not Optuna's


def test_no_module_in_src_touches_optuna_or_dashboard_internals():
    offenders = {str(p.relative_to(SRC)): private_uses(p.read_text()) for p in sorted(SRC.rglob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_finding_a_studys_storage_skips_storages_that_are_gone(tmp_path):
    """A long-lived process may hold storages that can no longer be read (a dropped database,
    a file overwritten); looking a study up among them must not fail on those."""
    from mt_tune.search.storage import open_storage, opened_storage_holding

    old = tmp_path / "old.db"
    optuna.create_study(study_name="old", storage=open_storage(f"sqlite:///{old}"))
    here = open_storage(f"sqlite:///{tmp_path}/here.db")
    optuna.create_study(study_name="here", storage=here)
    old.write_bytes(b"not a database " * (old.stat().st_size // 15 + 1))
    assert opened_storage_holding("here") is here
