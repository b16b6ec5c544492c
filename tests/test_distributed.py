"""DDP through torchrun: device specs, and two gloo processes on the CPU training one model."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from mt_tune.config import build_run_config
from mt_tune.data import prepare
from mt_tune.distributed import parse_devices
from mt_tune.errors import UserError

TINY = {
    "data": {"format": "sample", "vocab_size": 2000, "valid_size": 100},
    "model": {"d_model": 32, "n_heads": 2, "enc_layers": 1, "dec_layers": 1, "ffn_dim": 64, "dropout": 0.1},
    "train": {"device": "cpu", "lr": 3e-3, "warmup_steps": 2, "max_steps": 6, "eval_every": 3, "log_every": 3,
              "max_tokens": 600, "bleu_sentences": 8, "keep_best_by": "bleu", "seed": 3},
}

WORKER = textwrap.dedent("""
    import os, sys, torch, yaml
    from mt_tune.config import build_run_config
    from mt_tune.data import prepare
    from mt_tune.train import Trainer

    raw = yaml.safe_load(open(sys.argv[1]))
    rank = int(os.environ["RANK"])
    cfg = build_run_config(raw)
    trainer = Trainer(cfg, os.path.join(sys.argv[2], f"rank{rank}"), prepare(cfg.data), log=lambda *a: None)
    result = trainer.fit()
    torch.save({"params": trainer.model.state_dict(), "steps": result.steps},
               os.path.join(sys.argv[2], f"params{rank}.pt"))
""")


def test_device_specs():
    assert (parse_devices("cpu").kind, parse_devices("cpu").n_procs) == ("cpu", 1)
    assert (parse_devices("cpu:2").kind, parse_devices("cpu:2").n_procs) == ("cpu", 2)
    for bad in ("cpu:0", "cpu:x", "gpu", "0,0", ""):
        with pytest.raises(UserError, match="--devices"):
            parse_devices(bad)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU is visible"):
            parse_devices("all")
        with pytest.raises(UserError, match="no GPU 0"):
            parse_devices("0")


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    """The tiny config, with its data prepared once so that the processes find it cached."""
    raw = yaml.safe_load(yaml.safe_dump(TINY))
    raw["data"]["cache_dir"] = str(tmp_path_factory.mktemp("cache"))
    prepare(build_run_config(raw).data)
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_two_gloo_processes_train_one_model_and_only_process_0_writes(config_file, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(worker), str(config_file), str(tmp_path)], env=env, check=True, timeout=180,
                   capture_output=True)
    ranks = [torch.load(tmp_path / f"params{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 6
    for name, p0 in ranks[0]["params"].items():
        torch.testing.assert_close(p0, ranks[1]["params"][name], rtol=0, atol=0, msg=name)
    assert (tmp_path / "rank0" / "last.pt").is_file() and (tmp_path / "rank0" / "best.pt").is_file()
    assert not (tmp_path / "rank1").exists()


def test_cli_devices_cpu_2_relaunches_under_torchrun(config_file, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "mt_tune.cli", "train", str(config_file), "--devices", "cpu:2",
                           "--out", str(out)], env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=180,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "x2 processes" in done.stderr and "training run" in done.stdout
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 6 and ckpt["config"]["train"]["device"] == "cpu"


COUNTING_WORKER = textwrap.dedent("""
    import os, sys, torch, yaml
    from mt_tune.config import build_run_config
    from mt_tune.data import prepare
    from mt_tune.data.batching import BatchIterator
    from mt_tune.train import Trainer

    built, make_batch = [], BatchIterator.make_batch

    def recording(self, indices):  # the training batches this process builds
        if self.shuffle:
            built.append([int(i) for i in indices])
        return make_batch(self, indices)

    BatchIterator.make_batch = recording
    raw = yaml.safe_load(open(sys.argv[1]))
    raw["train"].update(accum_steps=2, max_steps=4, eval_every=4)
    rank = int(os.environ["RANK"])
    cfg = build_run_config(raw)
    result = Trainer(cfg, None, prepare(cfg.data), log=lambda *a: None).fit()
    torch.save({"built": built, "steps": result.steps}, os.path.join(sys.argv[2], f"built{rank}.pt"))
""")


def test_each_process_builds_only_its_own_batches(config_file, tmp_path):
    from mt_tune.data import BatchIterator

    worker = tmp_path / "worker.py"
    worker.write_text(COUNTING_WORKER)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(worker), str(config_file), str(tmp_path)], env=dict(os.environ, OMP_NUM_THREADS="1"),
                   check=True, timeout=180, capture_output=True)
    raw = yaml.safe_load(config_file.read_text())
    cfg = build_run_config(raw)
    plan = [b.tolist() for b in BatchIterator(prepare(cfg.data).train, cfg.train.max_tokens, seed=cfg.train.seed)
            .batches_of_epoch(0)]
    for rank in (0, 1):
        record = torch.load(tmp_path / f"built{rank}.pt", weights_only=True)
        assert record["steps"] == 4
        positions = [plan.index(b) for b in record["built"]]
        # 4 updates x 2 micro-batches of its own, each every other batch of the plan (perhaps a
        # few more built ahead), never one of the other process's
        assert positions[:8] == list(range(rank, 16, 2))
        assert all(p % 2 == rank for p in positions)
