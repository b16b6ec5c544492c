"""TensorBoard event files of `mt-tune train`: read back with TensorBoard's own reader."""

from __future__ import annotations

import sys

import pytest
import yaml

from mt_tune.config import build_run_config
from mt_tune.data import prepare
from mt_tune.train import Trainer

TINY = {
    "data": {"format": "sample", "vocab_size": 2000, "valid_size": 100},
    "model": {"d_model": 32, "n_heads": 2, "enc_layers": 1, "dec_layers": 1, "ffn_dim": 64},
    "train": {"device": "cpu", "threads": 1, "warmup_steps": 2, "max_steps": 8, "eval_every": 4, "log_every": 2,
              "max_tokens": 600, "bleu_sentences": 4, "seed": 3},
}


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    raw = yaml.safe_load(yaml.safe_dump(TINY))
    raw["data"]["cache_dir"] = str(tmp_path_factory.mktemp("cache"))
    return build_run_config(raw)


@pytest.fixture(scope="module")
def data(cfg):
    return prepare(cfg.data)


def scalars(directory) -> dict[str, list[int]]:
    """Tag -> the update numbers of its values, as TensorBoard reads them."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = event_accumulator.EventAccumulator(str(directory))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_training_writes_losses_lr_and_scores_by_update(cfg, data, tmp_path):
    Trainer(cfg, tmp_path, data, log=lambda *a: None, tensorboard=True).fit()
    assert scalars(tmp_path / "tensorboard") == {
        "train/loss": [2, 4, 6, 8], "train/lr": [2, 4, 6, 8],
        "valid/loss": [4, 8], "valid/loss_per_char": [4, 8], "valid/bleu": [4, 8], "valid/chrf": [4, 8]}


def test_without_tensorboard_training_goes_on_and_says_so_once(cfg, data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if it were not installed
    lines = []
    result = Trainer(cfg, tmp_path, data, log=lines.append, tensorboard=True).fit()
    assert result.steps == 8 and not (tmp_path / "tensorboard").exists()
    assert [line for line in lines if "event files" in line] == [
        "event files off: tensorboard is not installed (pip install 'mt-tune[tensorboard]')"]


def test_only_asked_for_runs_write_event_files(cfg, data, tmp_path):
    Trainer(cfg, tmp_path, data, log=lambda *a: None).fit()  # as a search trial's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]
