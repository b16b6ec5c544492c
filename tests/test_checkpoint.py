"""Checkpoint files: plain-data RNG states, atomic writes, safe loading with clear errors."""

from __future__ import annotations

import os
import random
import signal

import numpy as np
import pytest
import torch

from mt_tune.checkpoint import (CHECKPOINT_VERSION, bytes_to_tensor, read_checkpoint, rng_state, save_atomic,
                                set_rng_state, tensor_to_bytes)
from mt_tune.errors import UserError


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
