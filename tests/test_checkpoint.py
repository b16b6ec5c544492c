"""Checkpoint files: plain-data RNG states, atomic writes, safe loading with clear errors."""

from __future__ import annotations

import os
import random
import signal

import numpy as np
import pytest
import torch

from mt_tune.checkpoint import (
    CHECKPOINT_VERSION,
    bytes_to_tensor,
    read_checkpoint,
    restore_training,
    rng_state,
    save_atomic,
    save_run_checkpoints,
    set_rng_state,
    tensor_to_bytes,
    training_checkpoint,
)
from mt_tune.config import ModelConfig, to_dict
from mt_tune.errors import UserError
from mt_tune.model import Seq2SeqTransformer


def draws() -> tuple:
    return random.random(), random.gauss(0, 1), float(np.random.rand()), float(np.random.randn()), torch.rand(3)


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    random.gauss(0, 1)  # leaves a cached Gaussian in python's generator
    np.random.randn()
    state = rng_state()
    expected = draws()
    torch.save({"rng": state}, tmp_path / "rng.pt")
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = draws()
    assert again[:4] == expected[:4]
    assert torch.equal(again[4], expected[4])


def test_bytes_round_trip_through_a_tensor():
    blob = bytes(range(256)) * 3
    t = bytes_to_tensor(blob)
    assert t.dtype == torch.uint8 and tensor_to_bytes(t) == blob


def minimal_checkpoint(**extra) -> dict:
    return {"version": CHECKPOINT_VERSION, "config": {}, "model": {}, "step": 0,
            "src_spm": torch.zeros(1, dtype=torch.uint8), "tgt_spm": torch.zeros(1, dtype=torch.uint8), **extra}


def test_save_atomic_replaces_whole_files_and_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic(minimal_checkpoint(step=1), path)
    save_atomic(minimal_checkpoint(step=2), path)
    assert read_checkpoint(path)["step"] == 2

    with pytest.raises(Exception):
        save_atomic(minimal_checkpoint(step=3, unsaveable=lambda: None), path)  # a lambda cannot be pickled
    assert read_checkpoint(path)["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class Interrupted(BaseException):
    pass


def test_a_signal_during_the_write_is_delivered_once_the_checkpoint_is_whole(tmp_path, monkeypatch):
    # A signal handler raising inside torch.save's writes would surface as a RuntimeError from
    # C++; held back, it is raised after the rename, and the file is complete.
    def on_signal(_signum, _frame):
        raise Interrupted

    real_save = torch.save

    def save_with_a_signal_midway(obj, f):
        os.kill(os.getpid(), signal.SIGTERM)
        real_save(obj, f)

    previous = signal.signal(signal.SIGTERM, on_signal)
    monkeypatch.setattr(torch, "save", save_with_a_signal_midway)
    try:
        with pytest.raises(Interrupted):
            save_atomic(minimal_checkpoint(step=7), tmp_path / "last.pt")
    finally:
        signal.signal(signal.SIGTERM, previous)
    monkeypatch.undo()
    assert read_checkpoint(tmp_path / "last.pt")["step"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_read_checkpoint_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(UserError, match="missing.pt: no such checkpoint file"):
        read_checkpoint(tmp_path / "missing.pt")

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x02 definitely not a checkpoint")
    with pytest.raises(UserError, match="garbage.pt: not a readable mt-tune checkpoint"):
        read_checkpoint(garbage)

    good = tmp_path / "good.pt"
    save_atomic(minimal_checkpoint(model={"w": torch.randn(64, 64)}), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated.pt: not a readable mt-tune checkpoint"):
        read_checkpoint(truncated)

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(UserError, match="foreign.pt: not an mt-tune checkpoint .missing version, config"):
        read_checkpoint(foreign)

    future = tmp_path / "future.pt"
    save_atomic(minimal_checkpoint(version=CHECKPOINT_VERSION + 1), future)
    with pytest.raises(UserError, match="format version"):
        read_checkpoint(future)


class Pickled:
    """An arbitrary class: a file holding it must be refused, never unpickled."""


def test_a_file_with_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save(minimal_checkpoint(payload=Pickled()), path)
    with pytest.raises(UserError, match="evil.pt: not a readable mt-tune checkpoint"):
        read_checkpoint(path)


class Position:
    """What restore_training needs of the training batches: their position as a state dict."""

    def __init__(self, state=None):
        self.state = state

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        if state["pairs"] != 100:
            raise ValueError("another corpus")
        self.state = state


def tiny_run(seed: int):
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=16, n_heads=2, enc_layers=1, dec_layers=1, ffn_dim=32, src_vocab_size=30,
                      tgt_vocab_size=30)
    model = Seq2SeqTransformer(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[5, 6, 3]]), torch.tensor([[2, 7]])).sum().backward()
    optimizer.step()
    return cfg, model, optimizer, torch.amp.GradScaler("cuda", enabled=False)


def test_a_run_saved_and_restored_continues_where_it_was(tmp_path):
    cfg, model, optimizer, scaler = tiny_run(seed=0)
    ckpt = training_checkpoint(config={"model": to_dict(cfg)}, weights=model.state_dict(), train_weights=None,
                               optimizer=optimizer, scaler=scaler, step=7, data_state={"position": 3, "pairs": 100},
                               best={"bleu": (12.5, 5)}, history=[{"step": 5}], elapsed_s=9.0,
                               src_spm=b"src", tgt_spm=b"tgt")
    save_run_checkpoints(ckpt, tmp_path, improved=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    save_run_checkpoints(ckpt, tmp_path, improved=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]
    expected = torch.rand(3)
    _, fresh, fresh_optimizer, fresh_scaler = tiny_run(seed=1)
    batches = Position()
    restored = restore_training(tmp_path, model_config=to_dict(cfg), model=fresh, optimizer=fresh_optimizer,
                                scaler=fresh_scaler, batches=batches)
    assert (restored.step, restored.best, restored.history, restored.elapsed_s) == (7, {"bleu": (12.5, 5)},
                                                                                   [{"step": 5}], 9.0)
    assert batches.state == {"position": 3, "pairs": 100}
    for (name, a), b in zip(fresh.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    assert fresh_optimizer.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    assert torch.equal(torch.rand(3), expected)  # the RNGs are back where they were at the save


def test_restoring_another_model_or_corpus_is_a_user_error(tmp_path):
    cfg, model, optimizer, scaler = tiny_run(seed=0)
    with pytest.raises(UserError, match="no checkpoint to resume from"):
        restore_training(tmp_path, model_config=to_dict(cfg), model=model, optimizer=optimizer, scaler=scaler,
                         batches=Position())
    ckpt = training_checkpoint(config={"model": to_dict(cfg)}, weights=model.state_dict(), train_weights=None,
                               optimizer=optimizer, scaler=scaler, step=1, data_state={"position": 0, "pairs": 99},
                               best={}, history=[], elapsed_s=0.0, src_spm=b"s", tgt_spm=b"t")
    save_run_checkpoints(ckpt, tmp_path, improved=False)
    with pytest.raises(UserError, match="model config differs"):
        restore_training(tmp_path, model_config={**to_dict(cfg), "d_model": 32}, model=model, optimizer=optimizer,
                         scaler=scaler, batches=Position())
    with pytest.raises(UserError, match="last.pt: another corpus"):
        restore_training(tmp_path, model_config=to_dict(cfg), model=model, optimizer=optimizer, scaler=scaler,
                         batches=Position())
