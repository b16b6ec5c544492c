"""Device, precision and batch placement: the choices a run makes before it trains."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from mt_tune.config import DataConfig, build_run_config
from mt_tune.data import BatchIterator, prepare
from mt_tune.data.batching import TrainBatches
from mt_tune.device import (AMP_NAMES, amp_name, batch_tensors, peak_flops, peak_memory_bytes, pick_amp_dtype,
                            place_training, resolve_device, to_device)
from mt_tune.errors import ConfigError


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    cfg = DataConfig(format="sample", vocab_size=4000, cache_dir=str(tmp_path_factory.mktemp("cache")))
    cfg.validate("data")
    return prepare(cfg)


def test_device_names_resolve_and_missing_devices_are_config_errors():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        with pytest.raises(ConfigError, match="this machine has"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(ConfigError, match="train.device: cuda asked for, but no CUDA device"):
            resolve_device("cuda")


def test_amp_on_the_cpu_and_its_names():
    cpu = torch.device("cpu")
    assert pick_amp_dtype("auto", cpu) is None and pick_amp_dtype("off", cpu) is None
    assert pick_amp_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        pick_amp_dtype("fp16", cpu)
    assert amp_name(torch.bfloat16) == "bf16" and amp_name(torch.float16) == "fp16" and amp_name(None) is None
    assert set(AMP_NAMES.values()) == {"bf16", "fp16"}


def test_a_cpu_run_is_placed_on_the_cpu_without_a_process_group():
    tc = build_run_config({"data": {"format": "sample"}, "train": {"device": "cpu", "amp": "bf16"}}).train
    placement = place_training(tc)
    assert placement.device.type == "cpu" and not placement.dist.enabled and placement.dist.is_main
    assert placement.amp_dtype == torch.bfloat16
    with placement.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    assert peak_flops(placement.device) is None and peak_memory_bytes(placement.device) > 0


def test_numpy_batches_become_tensors_that_share_their_memory(sample):
    batch = next(iter(BatchIterator(sample.train, 1024, seed=1)))
    tensors = batch_tensors(batch)
    assert tensors.src.dtype == torch.long and tensors.src.data_ptr() == batch.src.ctypes.data
    assert (tensors.n_src_tokens, tensors.n_tgt_tokens, tensors.size) == (batch.n_src_tokens, batch.n_tgt_tokens,
                                                                          batch.size)
    on_cpu = to_device(tensors, "cpu")
    assert on_cpu.src.data_ptr() == tensors.src.data_ptr()  # already there: no copy
    assert np.array_equal(to_device(batch, "cpu").tgt_out.numpy(), batch.tgt_out)  # numpy in, tensors out


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("MT_TUNE_TEST_REQUIRE_CUDA") != "1",
                    reason="needs CUDA")
def test_batches_for_cuda_are_pinned_and_copy_asynchronously(sample):
    """What the Trainer does on CUDA: tensors pinned in the batch thread, copied non-blocking."""
    stream = TrainBatches(BatchIterator(sample.train, 1024, seed=1), convert=lambda b: batch_tensors(b, pin=True))
    try:
        b = next(stream)
        assert b.src.is_pinned() and b.tgt_in.is_pinned() and b.tgt_out.is_pinned()
        on_gpu = to_device(b, "cuda", non_blocking=True)
        torch.cuda.synchronize()
        assert on_gpu.src.is_cuda and torch.equal(on_gpu.tgt_out.cpu(), b.tgt_out)
        assert on_gpu.update_tokens == b.update_tokens == (b.n_src_tokens, b.n_tgt_tokens)
    finally:
        stream.close()
    cpu = next(iter(TrainBatches(BatchIterator(sample.train, 1024, seed=1), convert=batch_tensors)))
    assert not cpu.src.is_pinned()
