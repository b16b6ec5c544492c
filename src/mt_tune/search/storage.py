"""Where studies live: open a storage URL once per process (the URLs themselves: urls.py).

Three kinds of URL are understood:

- `sqlite:///mt-tune.db` — the embedded default: one file in the working directory, no server.
  Chosen over Optuna's journal file by measurement (benchmarks/storage_load.py): both take
  8 local worker processes without lock errors, but only the RDB storages get heartbeats, so
  only SQLite recovers the trial of a worker that was killed.
- `postgresql+psycopg://user@host/db` (plain `postgresql://` means the same) — for many workers
  on many machines.
- `journal:///mt-tune.journal` — Optuna's journal file; no heartbeats, so a killed worker's
  trial stays RUNNING for ever. Offered for file systems where SQLite's locking is unreliable.

An RDB storage is opened as a ResilientStorage (mt_tune.search.resilience): it records
heartbeats, and a trial that gave no sign of life for the grace period is marked FAIL and
re-queued by recover_orphaned_trials — the retry resumes from the dead trial's last checkpoint.
Every database call is retried with back-off while its error is transient (connection dropped,
server restarting, SQLite busy), so one failed report does not cost a trial its training.
A retry can repeat a call whose commit went through and only its reply was lost. Reads and
upserts (attributes, parameters, intermediate values, heartbeats) come out the same; creating a
trial carries a token, so the retry finds that trial instead of making a second; finishing a
trial and creating or deleting a study take the first attempt's effect as success. Taking a
queued trial is not made safe: its retry cannot tell its own commit from another worker's and
answers "taken", and the trial, RUNNING with nobody beating for it, is failed and re-queued by
recover_orphaned_trials after the grace period. Only public Optuna API is used: the calls
come once per evaluation, seconds to minutes apart, so a few milliseconds saved by reaching
into Optuna's internals are not worth breaking on its next release.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url

from mt_tune.errors import UserError
from mt_tune.search.resilience import ResilientStorage, heartbeat_settings, is_transient, root_cause_line
from mt_tune.search.urls import mask_url, normalize_url, scrub

log = logging.getLogger("mt_tune.storage")

# Opening a storage retries a few times only: an unreachable server at start is more often a
# wrong host or port than a restart, and the user should hear about it quickly.
OPEN_ATTEMPTS = 4

# Each worker process has one engine and two connections at most: the main thread's and the
# heartbeat thread's: 32 workers need 64 of a default server's 100. pre_ping replaces
# connections the server dropped while a long epoch ran; recycle closes them before typical
# idle timeouts of servers and proxies.
POSTGRES_ENGINE_KWARGS = {
    "pool_size": 1,
    "max_overflow": 1,
    "pool_timeout": 60,
    "pool_pre_ping": True,
    "pool_recycle": 1800,
}
# SQLite serialises writers with a file lock; a writer waits this long for it instead of
# failing at once with "database is locked". isolation_level None: Python's sqlite3 module
# emits no BEGIN of its own (it would only before a write, after the reads of the same
# transaction had run outside it); serialise_sqlite_transactions begins every transaction.
SQLITE_ENGINE_KWARGS = {"connect_args": {"timeout": 60, "isolation_level": None}}


class StorageUnavailable(RuntimeError):
    """The storage server could not be reached after retries (a runtime failure: exit 1)."""


# --- opening ------------------------------------------------------------------------------


_opened: dict[str, optuna.storages.BaseStorage] = {}
_opening = threading.Lock()


def open_storage(url: str, *, create_schema: bool = True) -> optuna.storages.BaseStorage:
    """The storage at `url`, opened once per process (one engine, one small pool).

    create_schema: create Optuna's tables if missing. Worker processes pass False: the schema
    was made once by `study create`, and 32 workers starting together must not race to create
    tables. Raises UserError for a bad URL (or, with create_schema=False, a storage without
    studies), StorageUnavailable when the server cannot be reached after a few attempts.
    """
    url = normalize_url(url)
    with _opening:
        if url not in _opened:
            _opened[url] = _open(url, create_schema)
        return _opened[url]


def _open(url: str, create_schema: bool) -> optuna.storages.BaseStorage:
    parsed = make_url(url)
    if parsed.drivername in ("sqlite", "journal") and not create_schema and not Path(parsed.database).exists():
        raise _no_studies(url)
    if parsed.drivername == "journal":
        return JournalStorage(JournalFileBackend(parsed.database))

    interval, grace, max_retry = heartbeat_settings()
    engine_kwargs = SQLITE_ENGINE_KWARGS if parsed.drivername == "sqlite" else POSTGRES_ENGINE_KWARGS
    delay = 0.5
    for attempt in range(1, OPEN_ATTEMPTS + 1):
        try:
            rdb = RDBStorage(
                url,
                engine_kwargs={k: (dict(v) if isinstance(v, dict) else v) for k, v in engine_kwargs.items()},
                skip_table_creation=not create_schema,
            )
            if parsed.drivername == "sqlite":
                serialise_sqlite_transactions(rdb.engine)
            return ResilientStorage(rdb, interval, grace, max_retry)
        except Exception as e:
            if _is_missing_schema_anywhere(e):
                raise _no_studies(url) from None
            if not is_transient(e):
                raise UserError(f"storage {mask_url(url)}: {scrub(root_cause_line(e), url)}") from None
            if attempt == OPEN_ATTEMPTS:
                raise StorageUnavailable(
                    f"storage {mask_url(url)} unreachable after {OPEN_ATTEMPTS} attempts: {scrub(root_cause_line(e), url)}"
                ) from None
            # INFO, not WARNING: what the user sees of an unreachable server is one error line.
            log.info("storage %s unreachable (%s); attempt %d of %d in %.1f s", mask_url(url), scrub(root_cause_line(e), url), attempt + 1, OPEN_ATTEMPTS, delay)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def serialise_sqlite_transactions(engine: Engine) -> None:
    """Begin every transaction on `engine` with BEGIN IMMEDIATE: it takes SQLite's write lock
    at once, so a read and the write that depends on it are one atomic step.

    Optuna takes a queued trial by reading that it is WAITING and then writing RUNNING, with
    SELECT ... FOR UPDATE, which SQLite ignores. Left to Python's sqlite3 module, the read ran
    before the transaction began, and two workers could both read WAITING and both run the
    trial (a start configuration trained twice, one trial fewer in the budget). With the lock
    taken first, the second worker waits (up to the connection's timeout), then reads RUNNING
    and samples a trial of its own. Reads wait behind writes too: each holds the lock for
    milliseconds, once or twice per evaluation of a trial (the SQLAlchemy documentation's
    recipe for pysqlite transactions, with IMMEDIATE)."""
    event.listen(engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE"))
    engine.dispose()  # connections opened before the listener get none of it: start afresh


def _is_missing_schema(error: BaseException) -> bool:
    message = str(error).lower()
    return "no such table" in message or ("relation" in message and "does not exist" in message)


def _is_missing_schema_anywhere(error: BaseException) -> bool:
    current: BaseException | None = error
    while current is not None:
        if _is_missing_schema(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _no_studies(url: str) -> UserError:
    return UserError(
        f"storage {mask_url(url)} holds no studies yet; create one first: mt-tune study create SPEC --storage URL"
    )


def opened_storage_holding(study_name: str) -> optuna.storages.BaseStorage | None:
    """The storage this process opened that holds a study of that name (None if not exactly
    one does): how mt-tune finds a study's storage without reaching into the Study object."""
    with _opening:
        storages = list(_opened.values())
    holding = []
    for storage in storages:
        try:
            storage.get_study_id_from_name(study_name)
        except Exception:  # noqa: BLE001 - not there, or a storage no longer reachable (a dropped database)
            continue
        holding.append(storage)
    return holding[0] if len(holding) == 1 else None


def close_storages() -> None:
    """Close every storage this process opened and return their connections to the server."""
    with _opening:
        for storage in _opened.values():
            if isinstance(storage, ResilientStorage):
                storage.close()
        _opened.clear()
