"""Where studies live: resolve the storage URL, mask its password, open it once per process.

Three kinds of URL are understood:

- `sqlite:///mt-tune.db` — the embedded default: one file in the working directory, no server.
  Chosen over Optuna's journal file by measurement (benchmarks/storage_load.py): both take
  4 local worker processes without lock errors, but only an RDB storage has heartbeats, so
  only SQLite recovers the trial of a worker that was killed.
- `postgresql+psycopg://user@host/db` (plain `postgresql://` means the same) — for many workers
  on many machines.
- `journal:///mt-tune.journal` — Optuna's journal file; no heartbeats, so a killed worker's
  trial stays RUNNING for ever. Offered for file systems where SQLite's locking is unreliable.

Every RDB storage records heartbeats, and a trial whose worker stopped beating for the grace
period is marked FAIL and re-queued (RetryHeartbeatStaleTrialCallback) — the retry resumes from
the dead trial's last checkpoint. Every database call is retried with back-off when the error
is transient (connection dropped, server restarting, SQLite busy), so one failed report does
not cost a trial its training. An RDB storage comes wrapped in FinishedTrialsCache, and reports
are one upsert: the two calls a worker makes at every evaluation (report, should_prune) cost
two small statements (benchmarks/storage_load.py).
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import random
import re
import threading
import time
import warnings
from collections.abc import Callable, Container
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy
import sqlalchemy.dialects.postgresql
import sqlalchemy.dialects.sqlite
import sqlalchemy.exc
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._cached_storage import _CachedStorage  # see FinishedTrialsCache
from optuna.storages._rdb import models as rdb_models
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from mt_tune.errors import UserError

log = logging.getLogger("mt_tune.storage")

ENV_VAR = "MT_TUNE_STORAGE"
DEFAULT_URL = "sqlite:///mt-tune.db"

# Heartbeats: a worker writes one every HEARTBEAT_INTERVAL seconds while a trial runs; a trial
# without one for GRACE_PERIOD seconds is declared dead. The grace must cover a server restart
# and a slow evaluation, hence several intervals. Tests shorten both through the environment.
HEARTBEAT_ENV = "MT_TUNE_HEARTBEAT_INTERVAL"
GRACE_ENV = "MT_TUNE_HEARTBEAT_GRACE"
MAX_RETRY_ENV = "MT_TUNE_MAX_RETRY"
RETRY_WINDOW_ENV = "MT_TUNE_STORAGE_RETRY_S"
DEFAULT_HEARTBEAT_INTERVAL = 60
DEFAULT_GRACE_FACTOR = 3
DEFAULT_MAX_RETRY = 3
# How long a database call keeps retrying a transient error before giving up; long enough
# for a PostgreSQL restart or a failover.
DEFAULT_RETRY_WINDOW_S = 120.0
# Opening a storage retries a few times only: an unreachable server at start is more often a
# wrong host or port than a restart, and the user should hear about it quickly.
OPEN_ATTEMPTS = 4

# Each worker process has one engine and two connections at most: the main thread's held one
# (HeldConnection) and one that Optuna's session and the heartbeat thread take turns with (a
# few milliseconds each): 32 workers need 64 of a default server's 100. pre_ping replaces
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
# failing at once with "database is locked".
SQLITE_ENGINE_KWARGS = {"connect_args": {"timeout": 60}}

SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "journal")

T = TypeVar("T")


class StorageUnavailable(RuntimeError):
    """The storage server could not be reached after retries (a runtime failure: exit 1)."""


# --- URLs ---------------------------------------------------------------------------------


def resolve_url(cli_value: str | None = None) -> str:
    """`--storage URL` > $MT_TUNE_STORAGE > the embedded default in the working directory."""
    return cli_value or os.environ.get(ENV_VAR) or DEFAULT_URL


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, safe to print, log or store.

    The user-info part ends at the last "@" before the host, so a password that itself
    contains "@", ":" or "/" is hidden whole; `password=` query parameters are hidden too.
    """
    masked = url
    scheme_end = masked.find("://")
    if scheme_end >= 0:
        rest = masked[scheme_end + 3 :]
        at = rest.rfind("@")
        if at >= 0 and ":" in rest[:at]:
            user = rest[: rest.index(":")]
            masked = f"{masked[: scheme_end + 3]}{user}:***{rest[at:]}"
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", masked)


def _scrub(text: str, url: str) -> str:
    """Text (an error message) with the URL's password removed, should a driver echo it."""
    try:
        password = make_url(url).password
    except Exception:  # noqa: BLE001 - an unparsable URL has no password to find
        password = None
    return text.replace(str(password), "***") if password else text


def normalize_url(url: str) -> str:
    """The URL in the form mt-tune opens, or UserError naming what is wrong with it.

    `postgresql://` becomes `postgresql+psycopg://` (the installed driver); other drivers
    and other databases are refused with the list of schemes that work.
    """
    masked = mask_url(url)
    if "://" not in url:
        raise UserError(f"storage URL {masked!r} is not a URL; expected one of: {_scheme_examples()}")
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as e:
        raise UserError(f"storage URL {masked!r} cannot be parsed ({_scrub(str(e), url)}); expected one of: {_scheme_examples()}") from None
    scheme = parsed.drivername
    if scheme not in SCHEMES:
        raise UserError(f"storage URL {masked!r}: unknown scheme {scheme!r}; expected one of: {_scheme_examples()}")
    if scheme in ("sqlite", "journal") and not parsed.database:
        raise UserError(f"storage URL {masked!r} names no file; e.g. {scheme}:///mt-tune.{'db' if scheme == 'sqlite' else 'journal'}")
    if scheme == "postgresql":
        return "postgresql+psycopg" + url[len("postgresql") :]
    return url


def _scheme_examples() -> str:
    return "sqlite:///mt-tune.db, postgresql+psycopg://USER:PASSWORD@HOST:5432/DB, journal:///mt-tune.journal"


# --- transient errors and retry -----------------------------------------------------------


def is_transient(error: BaseException) -> bool:
    """True for a database error that a retry may cure: a dropped or refused connection, a
    server shutting down or starting up, a busy SQLite file. Optuna wraps driver errors in
    StorageInternalError, so the whole chain of causes is examined."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return not _is_refused_for_good(current)
        if isinstance(current, sqlalchemy.exc.TimeoutError):  # no pooled connection came free
            return True
        if type(current).__module__.startswith("psycopg") and type(current).__name__ in ("OperationalError", "InterfaceError"):
            return not _is_refused_for_good(current)
        current = current.__cause__ or current.__context__
    return False


# The server answered, and no retry will change its answer: a wrong database, user or
# password, or tables that were never created. (Connection failures carry no SQLSTATE in
# psycopg, so the server's message is what there is to go by.)
_REFUSED_FOR_GOOD = ("does not exist", "authentication failed", "no pg_hba.conf entry", "no such table")


def _is_refused_for_good(error: BaseException) -> bool:
    message = str(error).lower()
    return any(pattern in message for pattern in _REFUSED_FOR_GOOD)


def _is_missing_schema(error: BaseException) -> bool:
    message = str(error).lower()
    return "no such table" in message or ("relation" in message and "does not exist" in message)


def retry_window_s() -> float:
    return _env_number(RETRY_WINDOW_ENV, DEFAULT_RETRY_WINDOW_S, float)


def with_retry(fn: Callable[..., T], *args: Any, retry_for: float | None = None, **kwargs: Any) -> T:
    """fn(*args, **kwargs), retried with exponential back-off (0.2 s doubling to 5 s, with
    jitter so workers do not reconnect in step) while it raises a transient database error,
    for at most `retry_for` seconds (default $MT_TUNE_STORAGE_RETRY_S or 120 s). Any other
    error, or a transient one past the window, is raised as it is."""
    window = retry_window_s() if retry_for is None else retry_for
    deadline = time.monotonic() + window
    delay = 0.2
    attempt = 1
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not is_transient(e) or time.monotonic() + delay > deadline:
                raise
            log.warning(
                "storage call %s failed (%s); retry %d in %.1f s",
                getattr(fn, "__name__", "call"),
                _one_line(e),
                attempt,
                delay,
            )
        time.sleep(delay * random.uniform(0.8, 1.2))
        delay = min(delay * 2, 5.0)
        attempt += 1


def _one_line(error: BaseException) -> str:
    root: BaseException = error
    while root.__cause__ is not None:
        root = root.__cause__
    lines = str(root).strip().splitlines()
    return f"{type(root).__name__}: {lines[0] if lines else ''}"


# --- the RDB storage ----------------------------------------------------------------------


class ResilientRDBStorage(RDBStorage):
    """Optuna's RDBStorage whose every database call goes through with_retry, so a worker
    rides out a server restart instead of dying in the middle of a trial.

    Two calls need more than a plain retry: finishing a trial is not idempotent (if the first
    attempt committed but its reply was lost, the retry finds the trial finished), and the
    heartbeat runs in Optuna's background thread, which dies on the first exception — after
    which live trials would be declared dead — so a failed heartbeat is logged and skipped.
    """

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        first_attempt = True

        def attempt() -> bool:
            nonlocal first_attempt
            try:
                return RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except UpdateFinishedTrialError:
                if not first_attempt and RDBStorage.get_trial(self, trial_id).state == state:
                    return True  # our earlier attempt did commit
                raise
            finally:
                first_attempt = False

        return with_retry(attempt)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        """trial.report in one statement instead of Optuna's three (read the trial, read the
        step, write): an upsert that writes only while the trial is unfinished. When it writes
        nothing, Optuna's own path runs, and raises Optuna's error for a finished trial."""
        dialect = self.engine.dialect.name
        if dialect in _UPSERT:
            stored, kind = rdb_models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(intermediate_value)
            params = {"trial_id": trial_id, "step": step, "value": stored, "kind": kind}

            def attempt() -> int:  # one statement in autocommit: atomic without BEGIN/COMMIT
                return self.statements.run(lambda conn: conn.execute(_report_statement(dialect), params).rowcount)

            if with_retry(attempt) > 0:
                return
        # Another server, or nothing written (the trial is finished, or unknown): Optuna's path,
        # which raises its usual error.
        with_retry(RDBStorage.set_trial_intermediate_value, self, trial_id, step, intermediate_value)

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            with_retry(RDBStorage.record_heartbeat, self, trial_id, retry_for=self.heartbeat_interval or 1)
        except Exception as e:  # noqa: BLE001 - the next beat tries again; see the class docstring
            log.warning("heartbeat for trial id %d not recorded: %s", trial_id, _one_line(e))

    @functools.cached_property
    def statements(self) -> HeldConnection:
        """The connection of mt-tune's own one-statement calls (report, finished-since query)."""
        return HeldConnection(self.engine)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("statements", None)  # a live connection; a copy opens its own
        return state


# Every other call that reaches the database is a read or an idempotent write (an upsert):
# retried as it is. Optuna's study layer calls some private ones (_create_new_trial,
# _get_trials, ...), so those are listed; calls made of these (create_new_trial,
# get_all_trials, ...) inherit the retry.
_RETRIED_CALLS = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "_create_new_trial",
    "_set_trial_param",
    "get_trial_param",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "_get_trials",
    "_get_best_trial_id",
    "_get_stale_trial_ids",
)


def _retrying(method: Callable[..., T]) -> Callable[..., T]:
    def call(self: RDBStorage, *args: Any, **kwargs: Any) -> T:
        return with_retry(method, self, *args, **kwargs)

    call.__name__ = method.__name__
    call.__doc__ = method.__doc__
    return call


for _name in _RETRIED_CALLS:
    setattr(ResilientRDBStorage, _name, _retrying(getattr(RDBStorage, _name)))


def autocommit(engine: sqlalchemy.Engine) -> sqlalchemy.Connection:
    """A pooled connection for one statement, without BEGIN and COMMIT/ROLLBACK round trips."""
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


# How long a held connection may sit unused before it goes back to the pool (see HeldConnection).
HELD_IDLE_S = 5.0


class HeldConnection:
    """One autocommit connection kept for back-to-back statements of the main thread.

    Checking a connection out of the pool costs a round trip of its own (pool_pre_ping) plus
    the pool's bookkeeping: about a third of a report or a should_prune, which a worker makes
    back to back at every evaluation. Statements less than HELD_IDLE_S apart share one
    connection; after a pause it goes back to the pool and the next statement checks out a
    fresh, pinged one, so a connection the server dropped during a long epoch is never used.
    Any error closes it, and the caller's retry starts on a new one. Other threads (the
    heartbeat) check out per statement as before, so a worker still needs at most two
    connections: this one, and one that Optuna's session and the heartbeat take turns with.
    """

    def __init__(self, engine: sqlalchemy.Engine):
        self.engine = engine
        self._conn: sqlalchemy.Connection | None = None
        self._used_at = 0.0

    def run(self, use: Callable[[sqlalchemy.Connection], T]) -> T:
        if threading.current_thread() is not threading.main_thread():
            with autocommit(self.engine) as conn:
                return use(conn)
        if self._conn is not None and time.monotonic() - self._used_at > HELD_IDLE_S:
            self.close()
        if self._conn is None:
            self._conn = autocommit(self.engine)
        try:
            result = use(self._conn)
        except BaseException:
            self.close()
            raise
        self._used_at = time.monotonic()
        return result

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a dead connection is discarded by the pool all the same
                pass


# INSERT ... ON CONFLICT DO UPDATE, by dialect (both servers Optuna's RDB storage is used on here)
_UPSERT = {"postgresql": sqlalchemy.dialects.postgresql.insert, "sqlite": sqlalchemy.dialects.sqlite.insert}
_UPDATABLE = [TrialState.RUNNING, TrialState.WAITING]


@functools.cache
def _report_statement(dialect: str) -> sqlalchemy.Executable:
    """The report upsert, built once: an intermediate value written only while its trial is
    unfinished (parameters trial_id, step, value, kind)."""
    values, trials = rdb_models.TrialIntermediateValueModel, rdb_models.TrialModel
    columns = values.__table__.c
    source = sqlalchemy.select(
        sqlalchemy.bindparam("trial_id", type_=columns.trial_id.type),
        sqlalchemy.bindparam("step", type_=columns.step.type),
        sqlalchemy.bindparam("value", type_=columns.intermediate_value.type),
        sqlalchemy.bindparam("kind", type_=columns.intermediate_value_type.type),
    ).where(sqlalchemy.exists().where(trials.trial_id == sqlalchemy.bindparam("trial_id"),
                                      trials.state.in_(_UPDATABLE)))
    insert = _UPSERT[dialect](values.__table__).from_select(
        ["trial_id", "step", "intermediate_value", "intermediate_value_type"], source)
    return insert.on_conflict_do_update(
        index_elements=["trial_id", "step"],
        set_={"intermediate_value": insert.excluded.intermediate_value,
              "intermediate_value_type": insert.excluded.intermediate_value_type},
    ).execution_options(preserve_rowcount=True)  # else psycopg's rowcount of an INSERT is -1


# Has any trial of the study finished since the cache's last refresh? (parameters study_id,
# last: the last finished trial id the cache knows, running: the ids it holds as unfinished)
_FINISHED_SINCE = (
    sqlalchemy.select(rdb_models.TrialModel.trial_id)
    .where(rdb_models.TrialModel.study_id == sqlalchemy.bindparam("study_id"))
    .where(rdb_models.TrialModel.state.in_([s for s in TrialState if s.is_finished()]))
    .where(sqlalchemy.or_(rdb_models.TrialModel.trial_id > sqlalchemy.bindparam("last"),
                          rdb_models.TrialModel.trial_id.in_(sqlalchemy.bindparam("running", expanding=True))))
    .limit(1)
)


class FinishedTrialsCache(_CachedStorage):
    """Optuna's per-process cache of an RDB storage, with one shortcut for the pruners.

    A median pruner asks for the study's COMPLETE trials at every report. Optuna's cache then
    reloads every trial that was still running at its last refresh — intermediate values and
    attributes included — so each call costs (running trials x reports so far) rows. Finished
    trials never change, though: when a call asks only for finished states, one small query
    first asks the server whether any trial finished since the last refresh, and if none did,
    the cache answers alone. Every other call goes through Optuna's cache unchanged.
    """

    @property
    def backend(self) -> ResilientRDBStorage:
        return self._backend  # type: ignore[return-value]

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        if states is not None and all(s.is_finished() for s in states) and not self._finished_since_refresh(study_id):
            with self._lock:
                cached = self._studies[study_id].trials.values()
                trials = sorted((t for t in cached if t.state in states), key=lambda t: t.number)
            return copy.deepcopy(trials) if deepcopy else trials
        return super().get_all_trials(study_id, deepcopy=deepcopy, states=states)

    def _finished_since_refresh(self, study_id: int) -> bool:
        with self._lock:
            if study_id not in self._studies:
                return True  # never loaded: take Optuna's path
            info = self._studies[study_id]
            running, last = list(info.unfinished_trial_ids), info.last_finished_trial_id

        def query() -> bool:
            params = {"study_id": study_id, "last": last, "running": running}
            return self.backend.statements.run(lambda conn: conn.execute(_FINISHED_SINCE, params).first() is not None)

        return with_retry(query)


# --- opening ------------------------------------------------------------------------------


def heartbeat_settings() -> tuple[int, int, int]:
    """(interval s, grace s, max retries of a dead worker's trial) from the environment:
    $MT_TUNE_HEARTBEAT_INTERVAL (default 60), $MT_TUNE_HEARTBEAT_GRACE (default 3 intervals,
    at least 2), $MT_TUNE_MAX_RETRY (default 3)."""
    interval = _env_number(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_INTERVAL, int)
    grace = _env_number(GRACE_ENV, DEFAULT_GRACE_FACTOR * interval, int)
    max_retry = _env_number(MAX_RETRY_ENV, DEFAULT_MAX_RETRY, int, minimum=0)
    if grace < 2 * interval:
        raise UserError(f"${GRACE_ENV}={grace} is shorter than two heartbeat intervals ({2 * interval} s): live trials would be declared dead")
    return interval, grace, max_retry


def _env_number(name: str, default: T, kind: type, minimum: float = 1) -> T:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise UserError(f"${name}={raw!r} is not a {'whole ' if kind is int else ''}number") from None
    if value < minimum:
        raise UserError(f"${name}={raw!r} must be at least {minimum}")
    return value


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
            with warnings.catch_warnings():
                # Optuna flags heartbeats as experimental on every open; they are the point here.
                warnings.simplefilter("ignore", ExperimentalWarning)
                return FinishedTrialsCache(ResilientRDBStorage(
                    url,
                    engine_kwargs={k: (dict(v) if isinstance(v, dict) else v) for k, v in engine_kwargs.items()},
                    heartbeat_interval=interval,
                    grace_period=grace,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
                    skip_table_creation=not create_schema,
                ))
        except Exception as e:
            if _is_missing_schema_anywhere(e):
                raise _no_studies(url) from None
            if not is_transient(e):
                raise UserError(f"storage {mask_url(url)}: {_scrub(_one_line(e), url)}") from None
            if attempt == OPEN_ATTEMPTS:
                raise StorageUnavailable(
                    f"storage {mask_url(url)} unreachable after {OPEN_ATTEMPTS} attempts: {_scrub(_one_line(e), url)}"
                ) from None
            # INFO, not WARNING: what the user sees of an unreachable server is one error line.
            log.info("storage %s unreachable (%s); attempt %d of %d in %.1f s", mask_url(url), _scrub(_one_line(e), url), attempt + 1, OPEN_ATTEMPTS, delay)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


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


def close_storages() -> None:
    """Close every storage this process opened and return their connections to the server."""
    with _opening:
        for storage in _opened.values():
            if isinstance(storage, FinishedTrialsCache):
                storage.backend.statements.close()
                storage.backend.scoped_session.remove()
                storage.backend.engine.dispose()
        _opened.clear()
