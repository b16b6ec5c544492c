"""Launch a study's worker processes on this machine: one per device, each a `run_worker`.

    mt-tune worker NAME --devices 0,1,2,3          four processes, one per GPU
    mt-tune worker NAME --devices all              one per visible GPU
    mt-tune worker NAME --devices cpu:4            four processes on the CPU
    mt-tune worker NAME --devices 0,1 --processes 2   two processes per GPU

`--devices` is the grammar of `mt-tune train --devices` (mt_tune.distributed.parse_devices).

Each process sees only its GPU (CUDA_VISIBLE_DEVICES), so it trains on `cuda:0` of its own;
its output lines are prefixed with the device (`[cuda:2]`, `[cpu:1]`). The storage URL reaches
the processes through the environment, not their command lines, where `ps` would show a
password. Processes share nothing but the storage, so workers on other machines pointed at
the same storage join the same study, and the study's trial budget holds across all of them.

Ctrl-C or SIGTERM: every process abandons its running trial — recorded as FAIL with
stop_reason=interrupted and queued again, to resume from its last checkpoint — and exits.
A second signal to this launcher kills the processes outright; their trials are then
recovered by the heartbeat, after the grace period, by whichever worker asks next.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mt_tune.distributed import parse_devices
from mt_tune.errors import UserError
from mt_tune.search.samplers import STREAM_ENV
from mt_tune.search.storage import close_storages
from mt_tune.search.urls import ENV_VAR, mask_url, resolve_url

SUMMARY_MARK = "mt-tune-worker-summary "
EXIT_INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C


@dataclass(frozen=True)
class Slot:
    """One worker process: its log label, the GPUs it may see, and the device it trains on."""

    label: str
    visible_gpus: str  # CUDA_VISIBLE_DEVICES; "" hides every GPU
    device: str


def plan_slots(devices: str, processes: int | None = None, gpu_count: int | None = None) -> list[Slot]:
    """The processes for `--devices` (parse_devices' grammar) and `--processes` (processes per
    device; not with cpu:N, which says the number itself). gpu_count: GPUs on this machine
    (asked of torch when None)."""
    if processes is not None and processes < 1:
        raise UserError(f"--processes: must be >= 1, got {processes}")
    if devices.strip().lower().startswith("cpu:") and processes is not None:
        raise UserError(f"--devices {devices} --processes {processes}: give the number of CPU processes once, "
                        f"as --devices cpu:N or as --devices cpu --processes N")
    per_device = processes or 1
    spec = parse_devices(devices, gpu_count)
    if spec.kind == "cpu":
        return [Slot(f"cpu:{i}", "", "cpu") for i in range(spec.n_procs * per_device)]
    return [
        Slot(f"cuda:{i}" if per_device == 1 else f"cuda:{i}.{k}", i, "cuda:0")
        for i in spec.gpu_ids
        for k in range(per_device)
    ]


# --- one worker process ---------------------------------------------------------------------


def run_this_process(
    study_name: str,
    storage_url: str | None = None,
    n_trials: int | None = None,
    device: str = "auto",
    artifacts: str = "mt-tune-artifacts",
    log: Callable[[str], None] = print,
    max_consecutive_failures: int | None = None,
    seed_exact: bool = False,
) -> tuple[int, dict[str, Any] | None]:
    """run_worker in this process, with Ctrl-C/SIGTERM ending it cleanly.

    Returns (exit status, summary): 0 and run_worker's summary when the budget or n_trials
    is reached, 1 and None when too many trials in a row failed (WorkerStopped),
    EXIT_INTERRUPTED and None when a signal ended it. The interrupted trial was
    re-queued by run_worker; a second signal during that cleanup is ignored, so the trial is
    not left RUNNING half-recorded."""
    import optuna

    from mt_tune.search.worker import WorkerStopped, run_worker

    # run_worker writes one line per trial; Optuna's own per-trial warnings (with the
    # traceback of an interrupt) would repeat them.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    signals_seen = []

    def on_signal(signum: int, _frame: Any) -> None:
        signals_seen.append(signum)
        if len(signals_seen) == 1:
            log(f"{signal.Signals(signum).name}: stopping; a running trial is re-queued to resume from its last checkpoint")
            raise KeyboardInterrupt
        log(f"{signal.Signals(signum).name} again: still recording the interrupted trial, please wait")

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return 0, run_worker(study_name, storage_url, n_trials=n_trials, device=device, artifacts=artifacts, log=log,
                             max_consecutive_failures=max_consecutive_failures, seed_exact=seed_exact)
    except WorkerStopped as e:
        log(f"error: {e}")
        return 1, None
    except KeyboardInterrupt:
        log("worker interrupted")
        return EXIT_INTERRUPTED, None
    finally:
        close_storages()
        for s, handler in previous.items():
            signal.signal(s, handler)


def _child_main(argv: list[str]) -> int:
    """Entry point of a launched process: `python -m mt_tune.search.launcher STUDY N_TRIALS
    DEVICE ARTIFACTS MAX_CONSECUTIVE_FAILURES` ("-" for a default); the storage URL comes
    from $MT_TUNE_STORAGE."""
    study_name, n_trials, device, artifacts, max_failures = argv
    try:
        status, summary = run_this_process(
            study_name,
            os.environ.get(ENV_VAR),
            n_trials=int(n_trials) if n_trials != "-" else None,
            device=device,
            artifacts=artifacts,
            log=lambda line: print(line, flush=True),
            max_consecutive_failures=int(max_failures) if max_failures != "-" else None,
        )
    except UserError as e:
        print(f"error: {e}", flush=True)
        return 2
    if summary is not None:
        print(SUMMARY_MARK + json.dumps(summary), flush=True)
    return status


# --- the launcher -----------------------------------------------------------------------------


def launch_workers(
    study_name: str,
    storage_url: str | None = None,
    devices: str = "cpu",
    processes: int | None = None,
    n_trials: int | None = None,
    artifacts: str = "mt-tune-artifacts",
    log: Callable[[str], None] = print,
    gpu_count: int | None = None,
    max_consecutive_failures: int | None = None,
) -> dict[str, Any]:
    """Start one worker process per slot of `plan_slots(devices, processes)`, relay their
    output prefixed by device, stop them cleanly on Ctrl-C/SIGTERM, wait for all, and return
    a summary: per process its exit status and trials run; the study's trials by state.

    n_trials is per process. The study must exist (checked here, before any process starts).
    """
    from mt_tune.search.study import load_study

    start = time.perf_counter()
    url = resolve_url(storage_url)
    slots = plan_slots(devices, processes, gpu_count)
    load_study(study_name, url)  # a missing study is one error here, not one per process
    close_storages()  # the processes open their own; this one holds no connection meanwhile

    log(f"{len(slots)} worker process{'es' if len(slots) > 1 else ''} for study {study_name!r} "
        f"in {mask_url(url)}: {', '.join(s.label for s in slots)}")
    print_lock = threading.Lock()
    children: list[tuple[Slot, subprocess.Popen]] = []
    summaries: dict[str, dict] = {}
    relays = []
    for slot in slots:
        env = {**os.environ, ENV_VAR: url, "CUDA_VISIBLE_DEVICES": slot.visible_gpus, "PYTHONUNBUFFERED": "1",
               # distinct sampler seeds per process, on this and every other machine
               STREAM_ENV: f"{socket.gethostname()}/{slot.label}"}
        child = subprocess.Popen(
            [sys.executable, "-m", "mt_tune.search.launcher", study_name, str(n_trials or "-"), slot.device, str(artifacts),
             str(max_consecutive_failures or "-")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            # Own process group: a Ctrl-C in the terminal reaches only this launcher, which
            # passes one SIGTERM on, so no process gets the signal twice.
            start_new_session=True,
        )
        children.append((slot, child))
        relay = threading.Thread(target=_relay, args=(slot, child, log, print_lock, summaries), daemon=True)
        relay.start()
        relays.append(relay)

    signals_seen: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        signals_seen.append(signum)
        name = signal.Signals(signum).name
        if len(signals_seen) == 1:
            with print_lock:
                log(f"{name}: stopping the workers; each records its running trial as interrupted and re-queues it")
            _signal_all(children, signal.SIGTERM)
        else:
            with print_lock:
                log(f"{name} again: killing the workers; their trials are recovered by the heartbeat later")
            _signal_all(children, signal.SIGKILL)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for _, child in children:
            _wait(child)
        for relay in relays:
            relay.join()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

    return _summary(study_name, url, children, summaries, interrupted=bool(signals_seen), log=log,
                    wall_s=time.perf_counter() - start)


def _relay(slot: Slot, child: subprocess.Popen, log: Callable[[str], None], lock: threading.Lock, summaries: dict) -> None:
    """Copy a process's output lines to `log`, prefixed by its device; keep its summary."""
    assert child.stdout is not None
    for line in child.stdout:
        line = line.rstrip("\n")
        if line.startswith(SUMMARY_MARK):
            summaries[slot.label] = json.loads(line[len(SUMMARY_MARK) :])
            continue
        with lock:
            log(f"[{slot.label}] {line}")


def _wait(child: subprocess.Popen) -> None:
    # wait() in short slices: a signal handler of this process runs between them.
    while True:
        try:
            child.wait(timeout=0.5)
            return
        except subprocess.TimeoutExpired:
            continue


def _signal_all(children: list[tuple[Slot, subprocess.Popen]], signum: int) -> None:
    for _, child in children:
        if child.poll() is None:
            try:
                child.send_signal(signum)
            except ProcessLookupError:
                pass


def _summary(study_name: str, url: str, children: list[tuple[Slot, subprocess.Popen]], summaries: dict,
             interrupted: bool, log: Callable[[str], None], wall_s: float) -> dict[str, Any]:
    import optuna

    from mt_tune.search.repeats import is_repeat
    from mt_tune.search.storage import open_storage

    study = optuna.load_study(study_name=study_name, storage=open_storage(url, create_schema=False))
    states: dict[str, int] = {}
    repeats = 0
    for t in study.get_trials(deepcopy=False):
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
        repeats += is_repeat(t)
    close_storages()
    per_process = [
        {"device": slot.label, "exit": child.returncode, "trials_run": summaries.get(slot.label, {}).get("trials_run")}
        for slot, child in children
    ]
    failed = [p for p in per_process if p["exit"] not in (0, EXIT_INTERRUPTED)]
    summary = {"study": study_name, "storage": mask_url(url), "processes": per_process, "states": states,
               "repeats": repeats, "interrupted": interrupted, "failed_processes": len(failed), "wall_s": round(wall_s, 1)}
    lines = [f"{p['device']}: " + (f"{p['trials_run']} trials" if p["trials_run"] is not None else
                                   "interrupted" if p["exit"] == EXIT_INTERRUPTED else f"exit {p['exit']}")
             for p in per_process]
    log(f"workers done in {wall_s:.0f} s ({'; '.join(lines)}); study {study_name!r}: "
        + (", ".join(f"{k} {v}" for k, v in sorted(states.items())) or "no trials")
        + (f" ({repeats} of the fail trials repeats, untrained)" if repeats else ""))
    return summary


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
