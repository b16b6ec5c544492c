"""Riding out a database that drops connections, and trials that nobody runs any more.

with_retry retries a call while it fails with a transient error; ResilientStorage puts every
call of an RDB storage through it, made safe to repeat except taking a queued trial, and writes
mt-tune's heartbeats; recover_orphaned_trials fails and re-queues the RUNNING trials that gave
no sign of life for the grace period. Public Optuna API only.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Container, Sequence
from typing import Any, TypeVar

import optuna
import sqlalchemy.exc
from optuna.exceptions import DuplicatedStudyError, ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState, create_trial

from mt_tune.errors import UserError

log = logging.getLogger("mt_tune.storage")

T = TypeVar("T")

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
                root_cause_line(e),
                attempt,
                delay,
            )
        time.sleep(delay * random.uniform(0.8, 1.2))
        delay = min(delay * 2, 5.0)
        attempt += 1


def root_cause_line(error: BaseException) -> str:
    root: BaseException = error
    while root.__cause__ is not None:
        root = root.__cause__
    lines = str(root).strip().splitlines()
    return f"{type(root).__name__}: {lines[0] if lines else ''}"


# --- the storage workers use ------------------------------------------------------------------
# System attrs mt-tune's storage writes on the trials it creates (see ResilientStorage).
CREATE_TOKEN_KEY = "mt_tune:create_token"
HEARTBEAT_KEY = "mt_tune:heartbeat"


class ResilientStorage(optuna.storages.BaseStorage):
    """An RDBStorage behind Optuna's public storage interface, with every call retried while
    it fails with a transient error, so a worker rides out a server restart mid-trial.

    Why a wrapper and not an RDBStorage subclass: Optuna wraps any RDBStorage it is given in
    its own per-process cache, and that cache calls the storage's private methods, which a
    subclass could only cover by overriding private names. This class is not an RDBStorage,
    so Optuna uses it as it is, and every call a study makes reaches one of the public
    methods below. It asks the RDBStorage only through its public methods.

    A retry after a transient error may follow an attempt that committed and lost only its
    reply. Reads and upserts (attributes, parameters, intermediate values) come out the same; the rest:

    - create_new_trial tags the trial with a fresh token; a retry first looks for a trial
      holding it and returns that one instead of creating a second.
    - set_trial_state_values: finishing a trial that our earlier attempt finished is success.
      Taking a queued trial (WAITING to RUNNING) cannot tell our earlier commit from another
      worker's; it answers "taken" and the trial, RUNNING without a heartbeat, is recovered
      by recover_orphaned_trials after the grace period.
    - create_new_study and delete_study accept on a retry what their first attempt did.

    Heartbeats are mt-tune's (Optuna's need its private heartbeat base class, and miss a trial
    made RUNNING by a commit whose reply was lost): a thread writes the time into HEARTBEAT_KEY
    of every trial this process started, every heartbeat_interval seconds, until it finishes.
    A beat that cannot be written is logged and skipped: the next one tries again.
    """

    def __init__(self, rdb: RDBStorage, heartbeat_interval: int, grace_period: int, max_retry: int):
        self.rdb = rdb
        self.heartbeat_interval, self.grace_period, self.max_retry = heartbeat_interval, grace_period, max_retry
        self._beating: set[int] = set()
        self._beat_lock = threading.Lock()
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None

    # studies

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        # A name of our own when none is given, so that a retry can find the study it made.
        name = study_name or f"no-name-{uuid.uuid4()}"
        return with_retry(_accepting_retry(
            lambda: self.rdb.create_new_study(directions, name), DuplicatedStudyError,
            lambda: self.rdb.get_study_id_from_name(name)))

    def delete_study(self, study_id: int) -> None:
        with_retry(_accepting_retry(lambda: self.rdb.delete_study(study_id), KeyError, lambda: None))

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        with_retry(self.rdb.set_study_user_attr, study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        with_retry(self.rdb.set_study_system_attr, study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return with_retry(self.rdb.get_study_id_from_name, study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return with_retry(self.rdb.get_study_name_from_id, study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return with_retry(self.rdb.get_study_directions, study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return with_retry(self.rdb.get_study_user_attrs, study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return with_retry(self.rdb.get_study_system_attrs, study_id)

    def get_all_studies(self) -> list[optuna.study.FrozenStudy]:
        return with_retry(self.rdb.get_all_studies)

    # trials

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        token = uuid.uuid4().hex
        template = copy.deepcopy(template_trial) if template_trial is not None else create_trial(state=TrialState.RUNNING)
        attrs = {k: v for k, v in template.system_attrs.items() if k != HEARTBEAT_KEY}  # a retry's copy is stale
        if template.state == TrialState.RUNNING:
            attrs[HEARTBEAT_KEY] = time.time()  # alive from its first commit on
        template.system_attrs = {**attrs, CREATE_TOKEN_KEY: token}
        attempts = 0

        def attempt() -> int:
            nonlocal attempts
            attempts += 1
            if attempts > 1:  # the earlier attempt may have committed: is its trial there?
                for t in self.rdb.get_all_trials(study_id, deepcopy=False, states=(template.state,)):
                    if t.system_attrs.get(CREATE_TOKEN_KEY) == token:
                        return self.rdb.get_trial_id_from_study_id_trial_number(study_id, t.number)
            return self.rdb.create_new_trial(study_id, template)

        trial_id = with_retry(attempt)
        if template.state == TrialState.RUNNING:
            self._start_beating(trial_id, first_beat_written=True)
        return trial_id

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: optuna.distributions.BaseDistribution) -> None:
        # Safe to repeat: Optuna ignores the duplicate row (unique per trial and name) a retry would add.
        with_retry(self.rdb.set_trial_param, trial_id, param_name, param_value_internal, distribution)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return with_retry(self.rdb.get_trial_id_from_study_id_trial_number, study_id, trial_number)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        first_attempt = True

        def attempt() -> bool:
            nonlocal first_attempt
            try:
                return self.rdb.set_trial_state_values(trial_id, state, values)
            except UpdateFinishedTrialError:
                if not first_attempt and self.rdb.get_trial(trial_id).state == state:
                    return True  # our earlier attempt did commit
                raise
            finally:
                first_attempt = False

        done = with_retry(attempt)
        if state == TrialState.RUNNING and done:
            self._start_beating(trial_id, first_beat_written=False)
        elif state.is_finished():
            with self._beat_lock:
                self._beating.discard(trial_id)
        return done

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        with_retry(self.rdb.set_trial_intermediate_value, trial_id, step, intermediate_value)  # an upsert

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        with_retry(self.rdb.set_trial_user_attr, trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        with_retry(self.rdb.set_trial_system_attr, trial_id, key, value)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return with_retry(self.rdb.get_trial, trial_id)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return with_retry(self.rdb.get_all_trials, study_id, deepcopy=deepcopy, states=states)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return with_retry(self.rdb.get_best_trial, study_id)

    def remove_session(self) -> None:
        self.rdb.remove_session()

    # heartbeats

    def _start_beating(self, trial_id: int, first_beat_written: bool) -> None:
        if not first_beat_written:
            self._beat(trial_id)
        with self._beat_lock:
            self._beating.add(trial_id)
            if self._beater is None:
                self._beater = threading.Thread(target=self._beat_loop, name="mt-tune-heartbeat", daemon=True)
                self._beater.start()

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            with self._beat_lock:
                trial_ids = sorted(self._beating)
            for trial_id in trial_ids:
                self._beat(trial_id)

    def _beat(self, trial_id: int) -> None:
        try:
            with_retry(self.rdb.set_trial_system_attr, trial_id, HEARTBEAT_KEY, time.time(),
                       retry_for=self.heartbeat_interval)
        except (UpdateFinishedTrialError, KeyError):  # finished elsewhere (or deleted): stop
            with self._beat_lock:
                self._beating.discard(trial_id)
        except Exception as e:  # noqa: BLE001 - the next beat tries again; see the class docstring
            log.warning("heartbeat for trial id %d not recorded: %s", trial_id, root_cause_line(e))

    def close(self) -> None:
        """Stop the heartbeats and return every connection to the server."""
        self._stop.set()
        if self._beater is not None:
            self._beater.join(timeout=5)
        self.rdb.remove_session()
        self.rdb.engine.dispose()

    def __getstate__(self) -> dict:
        return {"rdb": self.rdb, "heartbeat": (self.heartbeat_interval, self.grace_period, self.max_retry)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["rdb"], *state["heartbeat"])  # a copy beats for its own trials only


def _accepting_retry(call: Callable[[], T], error: type[Exception], result: Callable[[], T]) -> Callable[[], T]:
    """call, such that on a second attempt `error` means the first one committed: result()."""
    attempts = 0

    def attempt() -> T:
        nonlocal attempts
        attempts += 1
        try:
            return call()
        except error:
            if attempts == 1:
                raise
            return result()

    return attempt


def last_sign_of_life(trial: FrozenTrial) -> float:
    """When the trial was last known alive (seconds since the epoch): its latest heartbeat, or
    when it became RUNNING (Optuna's datetime_start, this machine's local time: worker
    machines' clocks and time zones must agree to well within the grace period)."""
    started = trial.datetime_start.timestamp() if trial.datetime_start is not None else float("-inf")
    beat = trial.system_attrs.get(HEARTBEAT_KEY)
    return max(started, beat) if isinstance(beat, (int, float)) else started


def recover_orphaned_trials(study: optuna.Study, grace_period: float | None = None,
                            max_retry: int | None = None) -> list[int]:
    """Fail, and queue a retry of (RetryHeartbeatStaleTrialCallback: same params, fixed_params
    included, retry_history recorded), every RUNNING trial mt-tune's storage created that gave
    no sign of life for the grace period: a killed worker's, or one taken from the queue by a
    commit whose reply was lost, which no process beats for. Returns the failed trials' numbers.

    Only public study API: a trial without CREATE_TOKEN_KEY (made by another tool, or on the
    journal file, which has no heartbeats) is left alone. When two workers sweep at once, the
    second one's tell fails on a finished trial and it queues nothing.
    """
    _, default_grace, default_retry = heartbeat_settings()
    grace = default_grace if grace_period is None else grace_period
    now, failed = time.time(), []
    with warnings.catch_warnings():  # the retry callback is experimental (Optuna 2.8), and what we need
        warnings.simplefilter("ignore", ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=default_retry if max_retry is None else max_retry)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            silent_s = now - last_sign_of_life(trial)
            if CREATE_TOKEN_KEY not in trial.system_attrs or silent_s <= grace:
                continue
            try:
                study.tell(trial.number, state=TrialState.FAIL)
            except (ValueError, UpdateFinishedTrialError):
                continue  # finished meanwhile, by its worker or by another sweep
            log.warning("trial %d gave no sign of life for %.0f s: failed and queued again", trial.number, silent_s)
            retry(study, trial)
            failed.append(trial.number)
    return failed

# --- settings -----------------------------------------------------------------------------


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
