"""The CUDA path: mixed precision, resume, decoding, out-of-memory and several workers on one GPU.

Skipped without a CUDA device; `benchmarks/gpu_suite.sh` sets MT_TUNE_TEST_REQUIRE_CUDA=1,
under which a machine without CUDA fails these tests instead of skipping them (a GPU check
must never pass by skipping).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import optuna
import pytest
import torch
from optuna.trial import TrialState

from mt_tune.checkpoint import load_checkpoint
from mt_tune.config import build_run_config
from mt_tune.data import prepare
from mt_tune.search.spec import build_spec
from mt_tune.search.study import create_study
from mt_tune.search.worker import run_worker
from mt_tune.train import Trainer

if not torch.cuda.is_available():
    if os.environ.get("MT_TUNE_TEST_REQUIRE_CUDA") == "1":
        pytest.fail("MT_TUNE_TEST_REQUIRE_CUDA=1 but torch sees no CUDA device", pytrace=False)
    pytest.skip("needs a CUDA device", allow_module_level=True)

RUN = {
    "data": {"format": "sample", "vocab_size": 2000, "valid_size": 100},
    "model": {"d_model": 64, "n_heads": 4, "enc_layers": 2, "dec_layers": 2, "ffn_dim": 256, "dropout": 0.1},
    "train": {"device": "cuda", "lr": 3e-3, "warmup_steps": 5, "max_steps": 10, "eval_every": 5,
              "max_tokens": 2048, "bleu_sentences": 8, "log_every": 5, "seed": 3},
}


def quiet(*args, **kwargs) -> None:
    pass


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict:
    raw = copy.deepcopy(RUN)
    raw["data"]["cache_dir"] = str(tmp_path_factory.mktemp("cache"))
    return raw


@pytest.fixture(scope="module")
def data(raw):
    return prepare(build_run_config(raw).data)


def config(raw: dict, **train):
    raw = copy.deepcopy(raw)
    raw["train"].update(train)
    return build_run_config(raw)


@pytest.mark.parametrize("amp, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_trains_on_the_gpu(raw, data, amp, dtype):
    trainer = Trainer(config(raw, amp=amp, max_steps=5), None, data=data, log=quiet)
    assert trainer.amp_dtype == dtype and trainer.scaler.is_enabled() == (amp == "fp16")
    result = trainer.fit()
    assert result.steps == 5 and result.history[-1].val_loss < 20
    assert result.peak_memory_bytes > 0 and next(trainer.model.parameters()).is_cuda


def test_amp_auto_picks_native_bf16_or_fp16():
    trainer_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    from mt_tune.device import pick_amp_dtype

    assert pick_amp_dtype("auto", torch.device("cuda")) == trainer_dtype


def test_resume_on_the_gpu_continues_the_same_curve(raw, data, tmp_path):
    cfg = config(raw, max_steps=20, eval_every=5)
    full = Trainer(cfg, tmp_path / "full", data=data, log=quiet).fit()
    Trainer(config(raw, max_steps=10, eval_every=5), tmp_path / "half", data=data, log=quiet).fit()
    resumed = Trainer(cfg, tmp_path / "half", data=data, log=quiet, resume=True).fit()
    assert resumed.steps == 20
    # Same batches, same RNG streams: the resumed run's evaluations repeat the full run's (up
    # to the GPU's nondeterministic reductions).
    assert [r.step for r in resumed.history] == [r.step for r in full.history] == [5, 10, 15, 20]
    for a, b in zip(full.history, resumed.history):
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-2)


def test_translate_and_evaluate_on_the_gpu(raw, data, tmp_path):
    Trainer(config(raw), tmp_path, data=data, log=quiet).fit()
    model, _, _, _ = load_checkpoint(tmp_path / "last.pt", device="cuda")
    assert next(model.parameters()).is_cuda
    src, ref = tmp_path / "src.txt", tmp_path / "ref.txt"
    src.write_text("\n".join(data.valid_src[:5]) + "\n", encoding="utf-8")
    ref.write_text("\n".join(data.valid_ref[:5]) + "\n", encoding="utf-8")
    cli = [sys.executable, "-m", "mt_tune.cli"]
    out = subprocess.run(cli + ["translate", str(tmp_path / "last.pt"), "-i", str(src), "--device", "cuda",
                                "--beam", "2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 5
    out = subprocess.run(cli + ["evaluate", str(tmp_path / "last.pt"), "--src", str(src), "--ref", str(ref),
                                "--device", "cuda"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "BLEU" in out.stdout and "chrF" in out.stdout


# --- the search on a GPU ------------------------------------------------------------------------


def study_spec(raw: dict, **budget) -> dict:
    return {"name": "gpu", "data": raw["data"], "model": raw["model"],
            "train": {**raw["train"], "max_steps": 10},
            "search": {"train.lr": {"type": "float", "low": 1e-3, "high": 3e-3, "log": True}},
            "metric": "val_loss", "pruner": {"type": "none"}, "budget": {"trials": 2, "max_steps": 10, **budget}}


def test_an_out_of_memory_trial_is_followed_by_one_that_fits(raw, data, tmp_path, monkeypatch):
    """A real CUDA OOM (the first update asks the allocator for twice the free memory), then a
    trial that fits, in one worker: the first trial's memory is free when the second starts."""
    url = f"sqlite:///{tmp_path}/gpu.db"
    create_study(build_spec(study_spec(raw)), name="gpu", storage_url=url)
    real_update, started_with = Trainer._update, []

    def update(self):
        if not started_with:
            started_with.append(torch.cuda.memory_allocated())
            free, _ = torch.cuda.mem_get_info()
            torch.empty(2 * free, dtype=torch.uint8, device=self.device)  # raises OutOfMemoryError
        elif len(started_with) == 1 and self.step == 0:
            started_with.append(torch.cuda.memory_allocated())
        return real_update(self)

    monkeypatch.setattr(Trainer, "_update", update)
    run_worker("gpu", url, device="cuda", artifacts=str(tmp_path / "artifacts"), log=quiet)
    oom, fits = optuna.load_study(study_name="gpu", storage=url).trials
    assert oom.state == TrialState.PRUNED and oom.user_attrs["stop_reason"] == "oom"
    assert fits.state == TrialState.COMPLETE
    # The second trial starts with as little allocated as the first did (its model only).
    assert started_with[1] <= started_with[0] * 1.1 + 2**20


def test_predicted_oom_uses_the_free_memory(raw, data, tmp_path):
    """With most of the GPU taken by another allocation, a config that fits the card's total
    memory but not what is free is pruned before it starts, and the message says free."""
    url = f"sqlite:///{tmp_path}/gpu.db"
    spec = study_spec(raw, trials=1)
    spec["train"]["max_tokens"] = 262144  # logits alone: 2 GiB
    create_study(build_spec(spec), name="gpu", storage_url=url)
    free, _ = torch.cuda.mem_get_info()
    hog = torch.empty(free - 2**30, dtype=torch.uint8, device="cuda")  # leaves ~1 GiB free
    try:
        run_worker("gpu", url, device="cuda", artifacts=str(tmp_path / "artifacts"), log=quiet)
    finally:
        del hog
        torch.cuda.empty_cache()
    (trial,) = optuna.load_study(study_name="gpu", storage=url).trials
    assert trial.state == TrialState.PRUNED and trial.user_attrs["stop_reason"] == "predicted_oom"
    assert "free" in trial.user_attrs["error"] and trial.user_attrs["memory_free"] < 2 * 2**30


def test_two_worker_processes_share_one_gpu(raw, data, tmp_path):
    url = f"sqlite:///{tmp_path}/gpu.db"
    create_study(build_spec(study_spec(raw, trials=4)), name="gpu", storage_url=url)
    out = subprocess.run([sys.executable, "-m", "mt_tune.cli", "worker", "gpu", "--storage", url, "--devices", "0",
                          "--processes", "2", "--artifacts", str(tmp_path / "artifacts")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    trials = optuna.load_study(study_name="gpu", storage=url).trials
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert all(t.user_attrs["device"].startswith("cuda") for t in trials)
    assert len({t.params["train.lr"] for t in trials}) == 4  # two processes, two sampler streams


def test_the_checkpoint_of_a_gpu_run_loads_on_a_cpu(raw, data, tmp_path):
    """Saved from CUDA tensors, read on the CPU (the machine that translates may have no GPU)."""
    Trainer(config(raw), tmp_path, data=data, log=quiet).fit()
    model, _, _, _ = load_checkpoint(tmp_path / "last.pt", device="cpu")
    assert not next(model.parameters()).is_cuda
