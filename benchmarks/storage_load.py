"""Storage load and dead-worker recovery: PostgreSQL, SQLite and the journal file.

Two measurements per storage:

1. Load: N worker processes run trials through `study.optimize`, each trial doing
   `trial.report` + `trial.should_prune` (median pruner) in a loop, as a training worker does
   after every evaluation, but back to back. Reported: median and p99 milliseconds per call
   (a report or a should_prune) and the median per evaluation (the two together),
   errors (any exception, "database is locked" included), the most connections the server saw
   (PostgreSQL only), trials finished and whether the trial numbers are unique.
   Lost trials: trials not finished at the end (left RUNNING, or never written) out of
   processes x trials.
2. Recovery: a worker is killed with SIGKILL in the middle of a trial; another worker sweeps
   for orphaned trials as a worker does before asking for its next one
   (recover_orphaned_trials). Reported: whether the dead trial was marked FAIL and re-queued,
   and after how many seconds (heartbeat interval 1 s, grace 2 s).

The embedded default (sqlite:///mt-tune.db vs journal:///mt-tune.journal) was chosen on these
figures; the PostgreSQL target is 8 processes with 0 errors and 0 lost trials (mt-tune uses
only Optuna's public API, so there is no latency target: these calls come once per
evaluation, seconds to minutes apart). The ratio printed is each storage's median call time
over PostgreSQL's (the baseline, measured in the same run).

    python benchmarks/storage_load.py [--postgres URL] [--processes 8] [--trials 5] [--steps 40]

Without --postgres (or $MT_TUNE_TEST_POSTGRES_URL) a throwaway server is started with the
tests' helper (PostgreSQL server binaries needed).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The recovery measurement shortens the heartbeat so that it takes seconds; the load
# measurement keeps mt-tune's defaults (a grace of 2 s would declare live trials dead on a busy
# machine). Worker processes inherit the environment when they start.
SHORT_HEARTBEAT = {"MT_TUNE_HEARTBEAT_INTERVAL": "1", "MT_TUNE_HEARTBEAT_GRACE": "2"}


def _quiet_optuna() -> None:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore")  # ask-outside-optimize and experimental-feature notices


def load_worker(url: str, study_name: str, trials: int, steps: int, out: mp.Queue) -> None:
    """One worker process: `trials` trials of `steps` report + should_prune calls each."""
    _quiet_optuna()
    import optuna

    from mt_tune.search.storage import close_storages, open_storage

    report_ms: list[float] = []
    prune_ms: list[float] = []
    errors: list[str] = []

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -10, 10)
        for step in range(steps):
            value = (x - 2) ** 2 + 10.0 / (step + 1)
            try:
                t0 = time.perf_counter()
                trial.report(value, step)
                t1 = time.perf_counter()
                trial.should_prune()
                t2 = time.perf_counter()
                report_ms.append((t1 - t0) * 1000)
                prune_ms.append((t2 - t1) * 1000)
            except Exception as e:  # noqa: BLE001 - counted, that is the measurement
                errors.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return (x - 2) ** 2

    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(url, create_schema=False))
        study.optimize(objective, n_trials=trials, catch=(Exception,))
    except Exception as e:  # noqa: BLE001
        errors.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    finally:
        close_storages()
    out.put({"report_ms": report_ms, "prune_ms": prune_ms, "errors": errors})


def sleeping_worker(url: str, study_name: str) -> None:
    """A worker whose trial reports once and then trains "for ever" — until it is killed."""
    _quiet_optuna()
    import optuna

    from mt_tune.search.storage import open_storage

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", -10, 10)
        trial.report(1.0, 0)
        time.sleep(600)
        return 0.0

    study = optuna.load_study(study_name=study_name, storage=open_storage(url, create_schema=False))
    study.optimize(objective, n_trials=1)


def _count_connections(url: str) -> int:
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return conn.execute(
            "select count(*) from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()"
        ).fetchone()[0]


def measure_load(url: str, processes: int, trials: int, steps: int) -> dict:
    import optuna

    from mt_tune.search.storage import close_storages, open_storage

    study_name = f"load-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=study_name, storage=open_storage(url, create_schema=True), pruner=optuna.pruners.MedianPruner())
    close_storages()

    peak = {"connections": 0}
    stop = threading.Event()
    is_postgres = url.startswith("postgresql")

    def watch_connections() -> None:
        while not stop.is_set():
            peak["connections"] = max(peak["connections"], _count_connections(url))
            stop.wait(0.05)

    watcher = threading.Thread(target=watch_connections, daemon=True)
    if is_postgres:
        watcher.start()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    start = time.perf_counter()
    workers = [ctx.Process(target=load_worker, args=(url, study_name, trials, steps, queue)) for _ in range(processes)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    wall = time.perf_counter() - start
    stop.set()
    if is_postgres:
        watcher.join()
    leftover = _count_connections(url) if is_postgres else None

    study = optuna.load_study(study_name=study_name, storage=open_storage(url, create_schema=False))
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    numbers = [t.number for t in study.get_trials(deepcopy=False)]
    close_storages()
    call_ms = [m for res in results for m in res["report_ms"] + res["prune_ms"]]
    pair_ms = [r + p for res in results for r, p in zip(res["report_ms"], res["prune_ms"])]
    errors = [e for res in results for e in res["errors"]]
    return {
        "calls": len(call_ms),
        "median_ms": statistics.median(call_ms) if call_ms else float("nan"),
        "p99_ms": statistics.quantiles(call_ms, n=100)[98] if len(call_ms) >= 100 else float("nan"),
        "pair_median_ms": statistics.median(pair_ms) if pair_ms else float("nan"),
        "report_median_ms": statistics.median([m for res in results for m in res["report_ms"]] or [float("nan")]),
        "prune_median_ms": statistics.median([m for res in results for m in res["prune_ms"]] or [float("nan")]),
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:3],
        "finished": len(finished),
        "lost": processes * trials - len(finished),
        "unique_numbers": len(numbers) == len(set(numbers)),
        "peak_connections": peak["connections"] if is_postgres else None,
        "leftover_connections": leftover,
        "wall_s": wall,
    }


def measure_recovery(url: str, wait_s: float = 15.0) -> dict:
    """kill -9 a worker mid-trial; poll as a live worker would before asking for a trial."""
    saved = {k: os.environ.get(k) for k in SHORT_HEARTBEAT}
    os.environ.update(SHORT_HEARTBEAT)
    try:
        return _measure_recovery(url, wait_s)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _measure_recovery(url: str, wait_s: float) -> dict:
    import optuna

    from mt_tune.search.resilience import recover_orphaned_trials
    from mt_tune.search.storage import close_storages, open_storage

    _quiet_optuna()
    study_name = f"recovery-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=study_name, storage=open_storage(url, create_schema=True))
    ctx = mp.get_context("spawn")
    victim = ctx.Process(target=sleeping_worker, args=(url, study_name))
    victim.start()
    deadline = time.monotonic() + 60
    while not any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        if time.monotonic() > deadline:
            raise RuntimeError("the worker never started its trial")
        time.sleep(0.1)
    os.kill(victim.pid, signal.SIGKILL)
    victim.join()
    killed_at = time.monotonic()

    recovered_after = None
    while time.monotonic() - killed_at < wait_s:
        # What a worker does before it asks for a trial (nothing on the journal: no heartbeats).
        recover_orphaned_trials(study)
        trials = study.get_trials(deepcopy=False)
        if trials[0].state == optuna.trial.TrialState.FAIL and any(t.state == optuna.trial.TrialState.WAITING for t in trials):
            recovered_after = time.monotonic() - killed_at
            break
        time.sleep(0.2)
    state = study.get_trials(deepcopy=False)[0].state.name
    close_storages()
    return {"recovered_after_s": recovered_after, "dead_trial_state": state}


def _start_postgres():
    """A throwaway server from the tests' helper; returns (url, stop)."""
    sys.path.insert(0, str(REPO / "tests"))
    import conftest

    bin_dir = conftest._server_bin_dir()
    if bin_dir is None:
        raise SystemExit("no PostgreSQL server binaries; pass --postgres URL")
    server = conftest._ThrowawayServer(bin_dir)
    server.start()
    url = server.url("mt_tune_bench")
    conftest._create_database(url, "mt_tune_bench")
    return url, server.stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", default=os.environ.get("MT_TUNE_TEST_POSTGRES_URL"))
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--embedded-processes", type=int, default=8, help="processes for the SQLite/journal runs")
    parser.add_argument("--trials", type=int, default=5, help="trials per process")
    parser.add_argument("--steps", type=int, default=40, help="report + should_prune calls per trial")
    args = parser.parse_args()

    from mt_tune.search.urls import mask_url

    stop_server = None
    url = args.postgres
    if url is None:
        url, stop_server = _start_postgres()
    workdir = Path(tempfile.mkdtemp(prefix="mt-tune-storage-bench-"))
    storages = {
        "postgresql": (url, args.processes),
        "postgresql, 1 process": (url, 1),
        "sqlite (embedded default)": (f"sqlite:///{workdir / 'mt-tune.db'}", args.embedded_processes),
        "journal file": (f"journal:///{workdir / 'mt-tune.journal'}", args.embedded_processes),
    }
    try:
        rows = {}
        for name, (storage_url, processes) in storages.items():
            print(f"{name}: {mask_url(storage_url)}, {processes} processes x {args.trials} trials x {args.steps} steps", flush=True)
            rows[name] = {"processes": processes, **measure_load(storage_url, processes, args.trials, args.steps)}
            if processes > 1:
                rows[name].update(measure_recovery(storage_url))
            print(f"  {rows[name]}", flush=True)
    finally:
        if stop_server:
            stop_server()

    baseline = rows["postgresql"]["median_ms"]
    print()
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at the end (1 min): "
          "with more processes than cores, the figures include waiting for a CPU")
    print("| storage | processes | calls | median ms per call | p99 ms per call | median ms per evaluation | vs postgresql | errors | lost trials | peak connections | trials finished | dead trial recovered |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        conns = "-" if r["peak_connections"] is None else f"{r['peak_connections']} (after: {r['leftover_connections']})"
        if "dead_trial_state" not in r:
            recovered = "-"
        elif r["recovered_after_s"] is not None:
            recovered = f"after {r['recovered_after_s']:.1f} s"
        else:
            recovered = f"no (still {r['dead_trial_state']})"
        print(
            f"| {name} | {r['processes']} | {r['calls']} | {r['median_ms']:.2f} | {r['p99_ms']:.2f} | {r['pair_median_ms']:.2f} | "
            f"{r['median_ms'] / baseline:.2f}x | {r['errors']} | {r['lost']} | {conns} | {r['finished']} | {recovered} |"
        )
    for name, r in rows.items():
        if r["errors"]:
            print(f"errors on {name}: {r['error_kinds']}")
    print("(a call: one trial.report or one trial.should_prune (median pruner); an evaluation: one of each, back to back."
          " report / should_prune medians:",
          ", ".join(f"{n}: {r['report_median_ms']:.2f} / {r['prune_median_ms']:.2f} ms" for n, r in rows.items()) + ")")


if __name__ == "__main__":
    main()
