"""Storage URLs, masking, opening, connection use and public-API-only access (real SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psycopg
import pytest
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


POP_QUEUED = """
import json, sys
import optuna
from mt_tune.search.storage import open_storage
optuna.logging.set_verbosity(optuna.logging.ERROR)
study = optuna.load_study(study_name="queue", storage=open_storage(sys.argv[1], create_schema=False))
taken = []
for _ in range(int(sys.argv[2])):
    trial = study.ask()  # takes a queued trial while there is one
    taken.append(trial.suggest_int("x", 0, 99))  # the queued value
    study.tell(trial, 0.0)
print(json.dumps(taken))
"""


def test_two_processes_never_take_the_same_queued_trial_from_sqlite(tmp_path):
    """SQLite ignores SELECT ... FOR UPDATE: without a transaction begun before Optuna reads
    that a queued trial is WAITING, two workers could both take it (it happened in 3 of 3 runs
    of this test before; see storage.serialise_sqlite_transactions)."""
    url = f"sqlite:///{tmp_path}/queue.db"
    study = optuna.create_study(study_name="queue", storage=st.open_storage(url))
    for x in range(100):
        study.enqueue_trial({"x": x})
    st.close_storages()
    script = tmp_path / "pop.py"
    script.write_text(POP_QUEUED)
    workers = [subprocess.Popen([sys.executable, str(script), url, "50"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [w.communicate(timeout=120) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err for _, err in results]
    taken = [x for out, _ in results for x in json.loads(out)]
    assert sorted(taken) == list(range(100))  # each queued trial taken once, by one of them
