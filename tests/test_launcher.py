"""Launched worker processes on real storages: parallel budgets, kill -9, SIGTERM, a database restart.

Every test runs real `mt-tune worker` processes training a tiny Transformer on the bundled
sample (trials of about a second); the data are prepared once for the module, so the worker
processes find them in the cache.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import psycopg
import pytest
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from cli_run import cli as run_cli

from mt_tune.distributed import parse_devices
from mt_tune.errors import UserError
from mt_tune.search.spec import build_spec
from mt_tune.search.study import create_study
from mt_tune.search.storage import close_storages
from mt_tune.search.launcher import EXIT_INTERRUPTED, Slot, plan_slots

BIN = Path(sys.executable).parent


def tiny_spec(cache_dir: Path, trials: int, max_steps: int) -> dict:
    return {
        "name": "tiny",
        "data": {"format": "sample", "scale": "1k", "vocab_size": 1300, "valid_size": 32, "cache_dir": str(cache_dir)},
        "model": {"d_model": 16, "n_heads": 2, "enc_layers": 1, "dec_layers": 1, "ffn_dim": 32},
        "train": {"eval_every": 4, "log_every": 4, "bleu_sentences": 0, "keep_best_by": "val_loss", "threads": 1,
                  "max_tokens": 256, "warmup_steps": 2},
        "search": {"train.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-3, "log": True}},
        "metric": "val_loss",
        "pruner": {"type": "none"},
        # A trial must run as long as the test needs it to: no early stop.
        "stopping": {"divergence_on": "none"},
        "budget": {"trials": trials, "max_steps": max_steps},
    }


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory) -> Path:
    """The tiny spec's vocabulary and shards, built once so worker processes only read them."""
    from mt_tune.config import DataConfig, build_section
    from mt_tune.data import prepare

    cache = tmp_path_factory.mktemp("data-cache")
    prepare(build_section(DataConfig, tiny_spec(cache, 1, 1)["data"], "data"))
    return cache


def env_for(heartbeat: int = 1, grace: int = 30, **extra: str) -> dict:
    # A grace of a few seconds would declare live trials dead on a busy machine (their
    # heartbeat thread waiting for a CPU); only the kill -9 test shortens it.
    env = {**os.environ, "MT_TUNE_HEARTBEAT_INTERVAL": str(heartbeat), "MT_TUNE_HEARTBEAT_GRACE": str(grace),
           "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb", **extra}
    env.pop("MT_TUNE_STORAGE", None)
    return env


def new_study(cache: Path, storage: str, trials: int, max_steps: int) -> None:
    # In this process, as `mt-tune study create` does it; then its connections are closed.
    assert create_study(build_spec(tiny_spec(cache, trials, max_steps)), storage_url=storage).study_name == "tiny"
    close_storages()


def start_worker(workdir: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "mt-tune"), "worker", "tiny", *args], cwd=workdir, env=env or env_for(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(worker: subprocess.Popen, timeout: float = 150) -> tuple[int, str]:
    output, _ = worker.communicate(timeout=timeout)
    return worker.returncode, output


def load(storage: str) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=optuna.storages.RDBStorage(storage, skip_table_creation=True))


def wait_for(condition, timeout: float, what: str, every: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def connections(url: str) -> int:
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return conn.execute("select count(*) from pg_stat_activity where datname = current_database() "
                            "and pid <> pg_backend_pid()").fetchone()[0]


def by_state(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


# --- the plan of processes --------------------------------------------------------------------


def test_plan_slots_one_process_per_device():
    assert plan_slots("cpu", 3) == [Slot("cpu:0", "", "cpu"), Slot("cpu:1", "", "cpu"), Slot("cpu:2", "", "cpu")]
    assert plan_slots("cpu:3") == plan_slots("cpu", 3)
    assert plan_slots("0,2", gpu_count=4) == [Slot("cuda:0", "0", "cuda:0"), Slot("cuda:2", "2", "cuda:0")]
    assert [s.label for s in plan_slots("all", gpu_count=2)] == ["cuda:0", "cuda:1"]
    assert [s.label for s in plan_slots("cuda", gpu_count=2)] == ["cuda:0"]
    assert [s.visible_gpus for s in plan_slots("1", 2, gpu_count=2)] == ["1", "1"]


@pytest.mark.parametrize("devices", ["cpu", "cpu:2", "cuda", "all", "0", "1,0", " 0, 1 "])
def test_worker_and_train_read_devices_alike(devices):
    # One grammar: the processes `mt-tune worker --devices` launches are those of `mt-tune train --devices`.
    spec = parse_devices(devices, gpu_count=2)
    slots = plan_slots(devices, gpu_count=2)
    assert len(slots) == spec.n_procs
    assert [s.visible_gpus for s in slots] == (spec.gpu_ids or [""] * spec.n_procs)
    assert {s.device for s in slots} == ({"cpu"} if spec.kind == "cpu" else {"cuda:0"})


@pytest.mark.parametrize("devices, processes, message", [
    ("all", None, "no CUDA GPU is visible on this machine"),
    ("0,5", None, "no GPU 5 on this machine"),
    ("1,1", None, "listed twice"),
    ("gpu0", None, "expected cpu, cpu:N .* or GPU indices"),
    ("cpu:0", None, "expected cpu:N with N >= 1"),
    ("cpu", 0, "--processes: must be >= 1"),
    ("cpu:2", 2, "give the number of CPU processes once"),
])
def test_plan_slots_refuses_bad_devices(devices, processes, message):
    with pytest.raises(UserError, match=message):
        plan_slots(devices, processes, gpu_count=0 if devices == "all" else 4)


@pytest.mark.parametrize("devices", ["gpu0", "cpu:x", "1,1"])
def test_bad_devices_are_the_same_error_for_worker_and_train(devices, tmp_path, capsys):
    # Checked before the study or the config is read: neither needs to exist.
    assert run_cli("worker", "nope", "--devices", devices, "--storage", f"sqlite:///{tmp_path}/none.db") == 2
    worker_error = capsys.readouterr().err
    assert run_cli("train", str(tmp_path / "none.yaml"), "--devices", devices) == 2
    train_error = capsys.readouterr().err
    assert worker_error == train_error and worker_error.startswith(f"error: --devices {devices!r}: ")


def test_cpu_processes_are_given_once(tmp_path, capsys):
    assert run_cli("worker", "nope", "--devices", "cpu:2", "--processes", "2",
                   "--storage", f"sqlite:///{tmp_path}/none.db") == 2
    assert "give the number of CPU processes once" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_worker_command_refuses_a_missing_study_once(tmp_path):
    done = subprocess.run([str(BIN / "mt-tune"), "worker", "nope", "--devices", "cpu", "--processes", "2",
                           "--storage", f"sqlite:///{tmp_path}/none.db"], cwd=tmp_path, env=env_for(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("error:") == 1 and "Traceback" not in done.stderr + done.stdout


# --- four processes share one budget ----------------------------------------------------------


def check_forty_trials(study: optuna.Study, returncode: int, output: str) -> None:
    assert returncode == 0, output
    assert "Traceback" not in output and "error:" not in output, output
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 40, by_state(study)
    # Workers racing for the last trial: the later one gives it up at once, untrained.
    others = [(t.number, t.state.name, t.user_attrs.get("stop_reason")) for t in trials if t.state != TrialState.COMPLETE]
    assert all(reason == "over_budget" for _, _, reason in others), others
    # Each of the four processes ran trials, and they add up to the budget.
    per_process = re.search(r"workers done in \d+ s \((.*?)\);", output).group(1).split("; ")
    ran = [int(re.fullmatch(r"cpu:\d: (\d+) trials", p).group(1)) for p in per_process]
    assert len(ran) == 4 and all(n > 0 for n in ran) and sum(ran) >= 40, output


@pytest.mark.slow
def test_four_processes_share_a_budget_of_40_on_postgresql(tmp_path, data_cache, fresh_postgres_url):
    new_study(data_cache, fresh_postgres_url, trials=40, max_steps=4)
    before = connections(fresh_postgres_url)
    peak = {"n": 0}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak["n"] = max(peak["n"], connections(fresh_postgres_url))
            done.wait(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        returncode, output = finish(start_worker(tmp_path, "--devices", "cpu", "--processes", "4",
                                                 "--storage", fresh_postgres_url), timeout=240)
    finally:
        done.set()
        watcher.join()
    after = connections(fresh_postgres_url)
    check_forty_trials(load(fresh_postgres_url), returncode, output)
    assert after == before  # every process gave its connections back
    assert 4 <= peak["n"] <= 2 * 4 + 1  # at most two per worker (main + heartbeat thread), +1 launcher


@pytest.mark.slow
def test_four_processes_share_a_budget_of_40_on_the_embedded_default(tmp_path, data_cache):
    new_study(data_cache, f"sqlite:///{tmp_path}/mt-tune.db", trials=40, max_steps=4)
    returncode, output = finish(start_worker(tmp_path, "--devices", "cpu", "--processes", "4"), timeout=240)
    assert "sqlite:///mt-tune.db" in output  # no --storage, no $MT_TUNE_STORAGE: the file here
    check_forty_trials(load(f"sqlite:///{tmp_path}/mt-tune.db"), returncode, output)


# --- a killed worker's trial is retried from its checkpoint -----------------------------------


def test_kill_9_mid_trial_is_retried_from_its_last_checkpoint(tmp_path, data_cache):
    storage = f"sqlite:///{tmp_path}/mt-tune.db"
    new_study(data_cache, storage, trials=2, max_steps=40)
    study = load(storage)
    victim = start_worker(tmp_path, "--device", "cpu", env=env_for(grace=2))
    last = tmp_path / "mt-tune-artifacts" / "tiny" / "0" / "last.pt"
    wait_for(lambda: last.is_file() and study.get_trials(deepcopy=False)[0].intermediate_values, 90,
             "a first evaluation and checkpoint")
    victim.kill()
    victim.communicate(timeout=30)
    assert study.get_trials(deepcopy=False)[0].state == TrialState.RUNNING  # nobody told Optuna
    time.sleep(3)  # past the grace period (2 s): the trial's heartbeat has stopped

    returncode, output = finish(start_worker(tmp_path, "--device", "cpu", env=env_for(grace=2)))
    assert returncode == 0, output
    trials = study.get_trials(deepcopy=False)
    assert trials[0].state == TrialState.FAIL
    retry = trials[1]
    assert retry.system_attrs["failed_trial"] == 0 and retry.state == TrialState.COMPLETE
    assert retry.user_attrs["resumed_from_step"] > 0
    assert retry.user_attrs["steps"] == 40
    assert [t.state for t in trials[1:]].count(TrialState.COMPLETE) == 2  # the budget is reached
    assert not any(t.state == TrialState.RUNNING for t in trials)


# --- SIGTERM: nothing is left RUNNING ---------------------------------------------------------


def test_sigterm_records_running_trials_as_interrupted_and_requeues_them(tmp_path, data_cache, fresh_postgres_url):
    new_study(data_cache, fresh_postgres_url, trials=2, max_steps=200)
    study = load(fresh_postgres_url)
    launcher = start_worker(tmp_path, "--devices", "cpu", "--processes", "2", "--storage", fresh_postgres_url)

    def both_evaluated() -> bool:
        trials = study.get_trials(deepcopy=False)
        return len(trials) == 2 and all(t.intermediate_values for t in trials)

    wait_for(both_evaluated, 120, "two running trials with an evaluation each")
    launcher.send_signal(signal.SIGTERM)
    returncode, output = finish(launcher, timeout=60)
    assert returncode == EXIT_INTERRUPTED, output
    assert "Traceback" not in output, output
    trials = study.get_trials(deepcopy=False)
    assert not any(t.state == TrialState.RUNNING for t in trials)
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    seen = [(t.number, t.state.name, t.user_attrs.get("stop_reason"), t.system_attrs) for t in trials]
    assert len(interrupted) == 2 and all(t.user_attrs.get("stop_reason") == "interrupted" for t in interrupted), (seen, output)
    # Each is queued again as a retry of the interrupted trial, as for a dead worker's, so it
    # resumes from the checkpoint it left (resuming is tested with kill -9 above).
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(t.system_attrs["failed_trial"] for t in waiting) == sorted(t.number for t in interrupted)
    assert all((tmp_path / "mt-tune-artifacts" / "tiny" / str(t.number) / "last.pt").is_file() for t in interrupted)


# --- PostgreSQL restarts while workers run ----------------------------------------------------


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of this test's own, which the test may stop and start."""
    import conftest

    bin_dir = conftest._server_bin_dir()
    if bin_dir is None:
        conftest._missing_postgres("no server binaries (initdb) to start a server that the test can restart")
    server = conftest._ThrowawayServer(bin_dir)
    try:
        server.start()
        url = server.url("restart")
        conftest._create_database(url, "restart")
        yield server, url
    finally:
        close_storages()
        server.stop()


def restart(server, down_s: float) -> None:
    server._run("pg_ctl", "-D", str(server.data_dir), "-m", "fast", "-w", "stop")
    time.sleep(down_s)
    options = f"-p {server.port} -k {server.root} -c listen_addresses=127.0.0.1 -c fsync=off"
    server._run("pg_ctl", "-D", str(server.data_dir), "-l", str(server.log_file), "-o", options, "-w", "start")


@pytest.mark.slow
def test_postgresql_restart_while_workers_run_loses_nothing(tmp_path, data_cache, own_postgres):
    server, url = own_postgres
    new_study(data_cache, url, trials=4, max_steps=40)
    study_url = url
    # The grace period must outlast the outage, or live trials would be declared dead.
    launcher = start_worker(tmp_path, "--devices", "cpu", "--processes", "2", "--storage", url,
                            env=env_for(heartbeat=1, grace=30))
    engine_study = load(study_url)
    wait_for(lambda: sum(bool(t.intermediate_values) for t in engine_study.get_trials(deepcopy=False)) >= 2,
             120, "two trials under way")
    restart(server, down_s=4)

    returncode, output = finish(launcher, timeout=180)
    assert returncode == 0, output
    assert "failed (" in output or "not recorded" in output, output  # the workers did hit the outage
    assert "Traceback" not in output, output
    trials = load(study_url).get_trials(deepcopy=False)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4, by_state(load(study_url))
    # Nothing else but a worker that raced another for the last trial and gave it up untrained
    # (two workers finishing together both see one trial left).
    others = [(t.number, t.state.name, t.user_attrs.get("stop_reason")) for t in trials if t.state != TrialState.COMPLETE]
    assert all(state == "FAIL" and reason == "over_budget" for _, state, reason in others), (others, output)
