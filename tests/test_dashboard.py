"""The dashboard: `mt-tune dashboard` serving a study's trials and their notes over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
from optuna.distributions import FloatDistribution

from mt_tune.search.notes import write_study_note, write_trial_note
from mt_tune.search.spec import build_spec

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # set_metric_names

SPEC = {
    "name": "dash",
    "data": {"format": "sample", "scale": "1k", "vocab_size": 1000},
    "model": {"d_model": 64, "n_heads": 2, "enc_layers": 1, "dec_layers": 1, "ffn_dim": 128},
    "train": {"eval_every": 100, "bleu_sentences": 20},
    "search": {"train.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}},
    "metric": "bleu",
    "budget": {"trials": 4, "max_steps": 300},
}
ATTRS = {"scale": 1000, "n_params": 1_234_567, "tokens_per_s": 2345.6, "steps": 300, "best_step": 200,
         "stop_reason": "diverged", "bleu": 7.25, "chrf": 30.5, "val_loss": 4.1, "device": "cpu", "wall_s": 21.0}


def make_study(storage) -> optuna.Study:
    spec = build_spec(dict(SPEC), check_files=False)
    study = optuna.create_study(study_name="dash", storage=storage, direction="maximize")
    study.set_user_attr("spec", spec.to_dict())
    study.set_metric_names(["bleu"])
    for lr, bleu in ((1e-3, 7.25), (2e-3, 5.0)):
        study.add_trial(optuna.trial.create_trial(
            value=bleu, params={"train.lr": lr}, distributions={"train.lr": FloatDistribution(1e-4, 3e-3, log=True)},
            intermediate_values={100: bleu - 1, 200: bleu, 300: bleu - 0.5}, user_attrs=dict(ATTRS, bleu=bleu)))
    for t in study.trials:
        write_trial_note(study, t, storage)
    write_study_note(study)
    return study


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_dashboard_serves_study_trials_and_notes(tmp_path):
    url = f"sqlite:///{tmp_path}/dash.db"
    make_study(url)
    port = _free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "mt_tune.cli", "dashboard", "--storage", url, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = _get(f"{base}/api/studies")["study_summaries"]
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"dashboard did not come up: {proc.stdout.read()}") from None
                time.sleep(0.3)
        (summary,) = studies
        assert summary["study_name"] == "dash"
        detail = _get(f"{base}/api/studies/{summary['study_id']}")
        assert detail["objective_names"] == ["bleu"]  # shown instead of "Objective 0"
        assert [t["number"] for t in detail["trials"]] == [0, 1]
        assert detail["trials"][0]["note"]["body"].startswith("## Trial 0 · complete · bleu 7.25")
        assert "| stop reason | diverged |" in detail["trials"][1]["note"]["body"]
        assert detail["note"]["body"].startswith("# dash")
        with urllib.request.urlopen(f"{base}/dashboard/", timeout=10) as r:
            assert r.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    assert f"http://127.0.0.1:{port}/dashboard/" in output, output
    assert proc.returncode == 0, output


def test_dashboard_port_in_use_is_a_clean_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = subprocess.run([sys.executable, "-m", "mt_tune.cli", "dashboard", "--storage",
                              f"sqlite:///{tmp_path}/d.db", "--port", str(port)],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 2
    assert f"--port {port}" in run.stderr and "already in use" in run.stderr
    assert "Traceback" not in run.stderr
