"""Trainer tests on the bundled sample with a tiny model (d_model 32, one layer each side)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from mt_tune.checkpoint import load_checkpoint, read_checkpoint
from mt_tune.cli import main
from mt_tune.config import RunConfig, build_run_config, to_dict
from mt_tune.data import Batch, prepare
from mt_tune.errors import ConfigError, UserError
from mt_tune.memory import estimate_memory
from mt_tune.train import NaNLossError, OutOfMemoryError, StopTraining, Trainer

TINY = {
    "data": {"format": "sample", "vocab_size": 2000, "valid_size": 100},
    "model": {"d_model": 32, "n_heads": 2, "enc_layers": 1, "dec_layers": 1, "ffn_dim": 64, "dropout": 0.1},
    "train": {"device": "cpu", "threads": 1, "lr": 3e-3, "warmup_steps": 5, "max_steps": 20, "eval_every": 10,
              "max_tokens": 600, "bleu_sentences": 8, "keep_best_by": "bleu", "log_every": 5, "seed": 3},
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def raw_config(cache_dir) -> dict:
    raw = yaml.safe_load(yaml.safe_dump(TINY))
    raw["data"]["cache_dir"] = str(cache_dir)
    return raw


@pytest.fixture(scope="module")
def data(raw_config):
    return prepare(build_run_config(raw_config).data)


def make_config(raw: dict, **train) -> RunConfig:
    raw = yaml.safe_load(yaml.safe_dump(raw))
    raw["train"].update(train)
    return build_run_config(raw)


def quiet(*args, **kwargs) -> None:
    pass


# --- time budgets -------------------------------------------------------------------------


def test_a_time_limited_run_ends_with_the_learning_rate_decayed(raw_config, data):
    # No warmup: however few updates a slow machine makes in the 1.2 s, the last one is past it.
    cfg = make_config(raw_config, max_steps=100_000, max_minutes=0.02, schedule="linear", min_lr=1e-5,
                      warmup_steps=0, eval_every=10_000)
    result = Trainer(cfg, None, data=data, log=quiet).fit()
    assert result.stop_reason == "max_minutes" and 1 <= result.steps < 100_000
    assert result.history[-1].lr == pytest.approx(1e-5)


def test_time_running_out_during_an_evaluation_ends_the_run_there(raw_config, data):
    import time

    budget_s = 6.0  # the 10 updates before the evaluation take a small fraction of it anywhere
    started = time.perf_counter()

    def slow_first_eval(trainer, result):  # the evaluation outlasts the budget
        if result.step == 10:
            time.sleep(max(0.0, started + budget_s + 0.2 - time.perf_counter()))

    cfg = make_config(raw_config, max_steps=100_000, max_minutes=budget_s / 60)
    result = Trainer(cfg, None, data=data, log=quiet, hooks=[slow_first_eval]).fit()
    assert result.stop_reason == "max_minutes" and result.steps == 10
    assert [r.step for r in result.history] == [10]


def test_max_minutes_counts_the_time_before_a_resume(raw_config, data, tmp_path):
    Trainer(make_config(raw_config, max_steps=10), tmp_path, data=data, log=quiet).fit()
    spent = read_checkpoint(tmp_path / "last.pt")["elapsed_s"]
    assert spent > 0
    budget_min = spent / 60 / 2  # already spent: the resumed run stops after one update
    resumed = Trainer(make_config(raw_config, max_minutes=budget_min), tmp_path, data=data, log=quiet,
                      resume=True).fit()
    assert resumed.stop_reason == "max_minutes" and resumed.steps == 11


# --- the update -----------------------------------------------------------------------------


def concat(a: Batch, b: Batch) -> Batch:
    """One batch holding the sentences of both, padded with 0 to the longer length."""

    def cat(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        width = max(x.size(1), y.size(1))
        return torch.cat([torch.nn.functional.pad(t, (0, width - t.size(1))) for t in (x, y)])

    return Batch(src=cat(a.src, b.src), tgt_in=cat(a.tgt_in, b.tgt_in), tgt_out=cat(a.tgt_out, b.tgt_out),
                 n_src_tokens=a.n_src_tokens + b.n_src_tokens, n_tgt_tokens=a.n_tgt_tokens + b.n_tgt_tokens)


def first_update_gradients(trainer: Trainer) -> dict[str, torch.Tensor]:
    grads = {}

    def capture(optimizer, args, kwargs):
        grads.update({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})

    trainer.optimizer.register_step_pre_hook(capture)
    trainer._update()
    return grads


def test_accumulating_two_batches_equals_one_batch_of_both(raw_config, data):
    # No dropout and no clipping: the gradient of the update is then a pure function of its batches.
    raw = yaml.safe_load(yaml.safe_dump(raw_config))
    raw["model"]["dropout"] = 0.0
    accumulating = Trainer(make_config(raw, accum_steps=2, clip_norm=0.0), None, data=data, log=quiet)
    single = Trainer(make_config(raw, accum_steps=1, clip_norm=0.0), None, data=data, log=quiet)
    first, second = next(accumulating._stream), next(accumulating._stream)
    assert first.n_tgt_tokens != second.n_tgt_tokens  # unequal batches: a mean of means would differ
    accumulating._stream = iter([first, second])
    single._stream = iter([concat(first, second)])

    grads_accum, grads_single = first_update_gradients(accumulating), first_update_gradients(single)
    assert grads_accum.keys() == grads_single.keys()
    for name in grads_accum:
        torch.testing.assert_close(grads_accum[name], grads_single[name], rtol=1e-4, atol=1e-6, msg=name)
    assert accumulating._loss_sum.item() == pytest.approx(single._loss_sum.item(), rel=1e-5)


def test_bf16_autocast_trains_on_cpu_and_fp16_needs_cuda(raw_config, data):
    result = Trainer(make_config(raw_config, amp="bf16", max_steps=4, eval_every=4), None, data=data,
                     log=quiet).fit()
    assert result.steps == 4 and math.isfinite(result.history[-1].val_loss)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.amp: fp16 needs a CUDA device"):
            Trainer(make_config(raw_config, amp="fp16"), None, data=data, log=quiet)


# --- a whole run, checkpoints and resume ---------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(raw_config, data, tmp_path_factory):
    """An uninterrupted 20-step run with the training loss of every step."""
    out = tmp_path_factory.mktemp("full")
    losses = {}
    trainer = Trainer(make_config(raw_config, log_every=1), out, data=data, log=quiet,
                      on_step=lambda step, info: losses.__setitem__(step, info["loss"]))
    return trainer, trainer.fit(), losses, out


def test_run_reports_metrics_and_writes_checkpoints(finished_run):
    trainer, result, losses, out = finished_run
    assert result.stop_reason == "max_steps" and result.steps == 20
    assert [r.step for r in result.history] == [10, 20]
    assert losses[20] < losses[1]
    last = result.history[-1]
    assert last.val_loss > 0 and last.val_loss_per_char > 0 and last.bleu is not None and last.chrf is not None
    assert set(result.best) == {"val_loss", "val_loss_per_char", "bleu", "chrf"}
    assert result.tokens_per_s > 0 and result.updates_per_s > 0 and result.peak_memory_bytes > 0
    assert result.n_params == sum(p.numel() for p in trainer.model.parameters())
    assert result.mfu is None  # CPU
    assert result.tokens_per_update > 0 and "tok:13a" in result.bleu_signature
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()
    assert not [p for p in out.iterdir() if p.name not in ("last.pt", "best.pt")]  # no temp files left


def test_checkpoint_is_self_contained_and_loads_safely(finished_run, data):
    trainer, result, _, out = finished_run
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 20 and ckpt["config"] == to_dict(trainer.cfg)
    assert ckpt["config"]["model"]["src_vocab_size"] == data.src_tok.vocab_size
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["step"] == result.best["bleu"][1]

    model, cfg, src_tok, tgt_tok = load_checkpoint(out / "last.pt")
    assert cfg.model == trainer.cfg.model and not model.training
    assert src_tok.encode(["你好"]) == data.src_tok.encode(["你好"])
    batch = next(iter(trainer.valid_batches()))
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(batch.src, batch.tgt_in), trainer.model(batch.src, batch.tgt_in))


def test_a_truncated_checkpoint_is_a_user_error(tmp_path, finished_run):
    _, _, _, out = finished_run
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((out / "last.pt").read_bytes()[:5000])
    with pytest.raises(UserError, match="truncated.pt: not a readable mt-tune checkpoint"):
        load_checkpoint(truncated)


def test_resumed_run_continues_the_same_curve(finished_run, raw_config, data, tmp_path):
    full_trainer, full_result, full_losses, _ = finished_run
    losses = {}
    record = lambda step, info: losses.__setitem__(step, info["loss"])  # noqa: E731
    Trainer(make_config(raw_config, log_every=1, max_steps=10), tmp_path, data=data, log=quiet,
            on_step=record).fit()
    resumed = Trainer(make_config(raw_config, log_every=1), tmp_path, data=data, log=quiet, on_step=record,
                      resume=True)
    assert resumed.step == 10
    result = resumed.fit()
    assert result.steps == 20
    for step in range(1, 21):
        assert losses[step] == pytest.approx(full_losses[step], abs=1e-6), step
    assert result.history[-1].val_loss == pytest.approx(full_result.history[-1].val_loss, abs=1e-6)
    for (name, a), b in zip(resumed.model.state_dict().items(), full_trainer.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_weight_average_is_evaluated_saved_and_resumed(raw_config, data, tmp_path):
    full = Trainer(make_config(raw_config, ema_decay=0.9), tmp_path / "full", data=data, log=quiet)
    result = full.fit()
    ckpt = read_checkpoint(tmp_path / "full" / "last.pt")
    for name, p in full.model.named_parameters():
        torch.testing.assert_close(ckpt["model"][name], full.average.params[name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(ckpt["train_weights"][name], p.detach(), rtol=0, atol=0, msg=name)
    assert any(not torch.equal(ckpt["model"][n], ckpt["train_weights"][n]) for n in full.average.params)
    model = load_checkpoint(tmp_path / "full" / "last.pt")[0]  # what translate uses: the average
    torch.testing.assert_close(dict(model.named_parameters())["encoder.0.ffn.fc1.weight"].detach(),
                               full.average.params["encoder.0.ffn.fc1.weight"])
    averaged = full.evaluate()
    assert averaged[0] == pytest.approx(result.history[-1].val_loss, abs=1e-6)
    full.average = None
    assert full.evaluate()[0] != pytest.approx(averaged[0], abs=1e-6)  # the trained weights differ

    Trainer(make_config(raw_config, ema_decay=0.9, max_steps=10), tmp_path / "half", data=data, log=quiet).fit()
    resumed = Trainer(make_config(raw_config, ema_decay=0.9), tmp_path / "half", data=data, log=quiet, resume=True)
    resumed.fit()
    ckpt = read_checkpoint(tmp_path / "half" / "last.pt")
    for name in resumed.average.params:
        torch.testing.assert_close(resumed.average.params[name], ckpt["model"][name], rtol=0, atol=0)
    full_ckpt = read_checkpoint(tmp_path / "full" / "last.pt")
    for name in resumed.average.params:
        torch.testing.assert_close(ckpt["model"][name], full_ckpt["model"][name], rtol=0, atol=1e-6, msg=name)


def test_resume_without_a_checkpoint_is_a_user_error(raw_config, data, tmp_path):
    with pytest.raises(UserError, match="no checkpoint to resume"):
        Trainer(make_config(raw_config), tmp_path, data=data, log=quiet, resume=True)


# --- stopping: hooks and NaN ----------------------------------------------------------------


def test_a_hook_sees_each_evaluation_and_can_stop_the_run(raw_config, data):
    seen = []

    def stop_at_second(trainer, result):
        seen.append(result.step)
        if len(seen) == 2:
            raise StopTraining("enough")

    result = Trainer(make_config(raw_config, eval_every=5), None, data=data, log=quiet,
                     hooks=[stop_at_second]).fit()
    assert result.stop_reason == "enough" and result.steps == 10 and seen == [5, 10]
    assert len(result.history) == 2


def test_other_hook_exceptions_propagate(raw_config, data):
    class Pruned(Exception):
        pass

    def prune(trainer, result):
        raise Pruned()

    with pytest.raises(Pruned):
        Trainer(make_config(raw_config), None, data=data, log=quiet, hooks=[prune]).fit()


def test_nan_loss_stops_with_a_typed_error_and_is_never_saved_as_best(raw_config, data, tmp_path):
    def poison(trainer, result):  # weights turn NaN after the first evaluation
        with torch.no_grad():
            for p in trainer.model.parameters():
                p.fill_(float("nan"))

    trainer = Trainer(make_config(raw_config, eval_every=5, keep_best_by="val_loss"), tmp_path, data=data,
                      log=quiet, hooks=[poison])
    with pytest.raises(NaNLossError) as caught:
        trainer.fit()
    assert caught.value.stop_reason == "nan_loss" and caught.value.step == 10  # checked at the next log point
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(tmp_path / name, weights_only=True)
        assert ckpt["step"] == 5 and all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_huge_learning_rate_ends_in_nan_loss(raw_config, data):
    """A real divergence, caught. AdamW's first step moves every weight by about lr; at 1e30 the
    next forward pass multiplies such weights together, past float32's 3.4e38, so the loss
    is inf or NaN on any CPU (1e4 overflowed on one CPU and stayed finite on another)."""
    with pytest.raises(NaNLossError, match="lower train.lr"):
        Trainer(make_config(raw_config, lr=1e30, warmup_steps=0, clip_norm=0.0), None, data=data, log=quiet).fit()


def test_cuda_out_of_memory_becomes_a_typed_error_with_the_estimate(raw_config, data):
    # Without a GPU the error is raised where one would surface (here: from a hook after an evaluation).
    def out_of_memory(trainer, result):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    trainer = Trainer(make_config(raw_config), None, data=data, log=quiet, hooks=[out_of_memory])
    with pytest.raises(OutOfMemoryError, match="CUDA out of memory at step 10") as caught:
        trainer.fit()
    assert caught.value.stop_reason == "oom" and caught.value.step == 10
    assert caught.value.estimate_bytes == estimate_memory(trainer.cfg.model, trainer.cfg.train)["total"] > 0
    # Nothing chained: the original error's traceback would keep the failed step's frames
    # (and on a GPU its activations) alive after the trial.
    assert caught.value.__context__ is None and caught.value.__cause__ is None


def test_a_checkpoint_loads_to_the_cpu_and_then_moves_to_the_device(raw_config, data, tmp_path):
    """RNG states and tokenizer bytes must stay CPU tensors; only the model moves. The meta
    device stands in for CUDA here: a tensor on it has no data, like a GPU one for .numpy()."""
    Trainer(make_config(raw_config, max_steps=2, eval_every=2), tmp_path, data=data, log=quiet).fit()
    ckpt = read_checkpoint(tmp_path / "last.pt")
    assert ckpt["rng"]["torch"].device.type == "cpu" and ckpt["src_spm"].device.type == "cpu"
    model, _, src_tok, _ = load_checkpoint(tmp_path / "last.pt", device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert src_tok.encode(["你好"])[0]  # the tokenizer was read from CPU bytes


# --- the command line ----------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code or 0


def test_cli_trains_with_overrides(raw_config, data, tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw_config))
    out = tmp_path / "run"
    assert run_cli(["train", str(config), "train.max_steps=4", "train.eval_every=2", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "training run" in printed.out and "max_steps" in printed.out
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 4
    # A second run into the same directory must not clobber it without --resume.
    assert run_cli(["train", str(config), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert run_cli(["train", str(config), "train.max_steps=6", "train.eval_every=2", "--out", str(out),
                    "--resume"]) == 0
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 6


def test_cli_rejects_a_bad_key_with_exit_2(raw_config, tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw_config))
    assert run_cli(["train", str(config), "train.max_stepz=3", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "train.max_stepz" in err and "max_steps" in err and "Traceback" not in err
    assert run_cli(["train", str(config), "train.amp=fast"]) == 2
    assert "auto, off, bf16, fp16" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cli_nan_loss_exits_1_with_a_message(raw_config, tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw_config))
    code = run_cli(["train", str(config), "train.lr=1e30", "train.warmup_steps=0", "train.clip_norm=0",
                    "--out", str(tmp_path / "run")])
    assert code == 1
    assert "nan_loss" in capsys.readouterr().err


# --- the batch thread, time budgets under torch.compile -------------------------------------


def batch_threads() -> set:
    import threading

    return {t for t in threading.enumerate() if t.name == "mt-tune-batches"}


def test_fit_ends_the_batch_thread_also_when_it_fails(raw_config, data, tmp_path):
    before = batch_threads()  # (of trainers other tests made and never fitted, if any)
    trainer = Trainer(make_config(raw_config, max_steps=10), tmp_path, data=data, log=quiet)
    trainer.fit()
    assert batch_threads() <= before
    # the checkpoint holds the position of the 10 batches trained on, not of those built ahead
    assert read_checkpoint(tmp_path / "last.pt")["data_state"]["position"] == 10

    def broken(trainer, result):
        raise KeyError("hook")

    with pytest.raises(KeyError):
        Trainer(make_config(raw_config, max_steps=10, eval_every=5), None, data=data, log=quiet,
                hooks=[broken]).fit()
    assert batch_threads() <= before


def test_compile_pads_lengths_to_multiples_of_8_and_times_the_budget_after_compiling(raw_config, data):
    before = batch_threads()
    trainer = Trainer(make_config(raw_config, compile=True, max_minutes=5), None, data=data, log=quiet)
    trainer.train_model = trainer.model  # what compiling produces, without the minutes it takes on a CPU
    for _ in range(4):
        trainer._update()
        trainer.step += 1
        if trainer.step == 1:
            assert trainer._pace_since == (0, 0.0)
    assert trainer._pace_since[0] == 2 and trainer._pace_since[1] > 0
    batch = next(trainer._stream)
    assert batch.src.shape[1] % 8 == 0 and batch.tgt_in.shape[1] % 8 == 0
    trainer.batches.close()
    assert batch_threads() <= before
    plain = Trainer(make_config(raw_config, max_minutes=5), None, data=data, log=quiet)
    plain._update()
    assert plain._pace_since == (0, 0.0)
    plain.batches.close()


def test_a_model_compiled_shape_generic_is_traced_once_for_all_bucketed_batches(raw_config, data):
    # torch.compile(dynamic=True), as the Trainer does with train.compile, traced by a backend
    # that counts graphs and runs them as they are (Inductor would take minutes on a CPU).
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    trainer = Trainer(make_config(raw_config, compile=True), None, data=data, log=quiet)
    compiled = torch.compile(trainer.model, backend=counting, dynamic=True)
    seen = set()
    for _ in range(6):
        batch = next(trainer._stream)
        seen.add((batch.size, batch.src.shape[1], batch.tgt_in.shape[1]))
        compiled(batch.src, batch.tgt_in).sum().backward()
        if len(seen) == 1:
            first = len(graphs)
    trainer.batches.close()
    assert len(seen) > 2 and first >= 1 and len(graphs) == first
