"""Where studies live: resolve the storage URL, mask its password, open it once per process.

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
re-queued by recover_orphaned_trials — the retry resumes from the dead trial's last checkpoint. Every database call is retried with back-off when the error
is transient (connection dropped, server restarting, SQLite busy), so one failed report does
not cost a trial its training; a call whose commit went through but whose reply was lost
does not create a second trial (ResilientStorage). Only public Optuna API is used: the calls
come once per evaluation, seconds to minutes apart, so a few milliseconds saved by reaching
into Optuna's internals are not worth breaking on its next release.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from sqlalchemy.engine import make_url

from mt_tune.errors import UserError
from mt_tune.search.resilience import (  # noqa: F401 - the storage layer's interface, re-exported
    CREATE_TOKEN_KEY,
    GRACE_ENV,
    HEARTBEAT_ENV,
    HEARTBEAT_KEY,
    MAX_RETRY_ENV,
    RETRY_WINDOW_ENV,
    ResilientStorage,
    _one_line,
    heartbeat_settings,
    is_transient,
    last_sign_of_life,
    recover_orphaned_trials,
    retry_window_s,
    with_retry,
)

log = logging.getLogger("mt_tune.storage")

ENV_VAR = "MT_TUNE_STORAGE"
DEFAULT_URL = "sqlite:///mt-tune.db"

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
# failing at once with "database is locked".
SQLITE_ENGINE_KWARGS = {"connect_args": {"timeout": 60}}

SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "journal")


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
            return ResilientStorage(rdb, interval, grace, max_retry)
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
