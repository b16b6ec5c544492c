"""Parameter count and memory estimate against the built model and measured CPU memory."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import profile

from mt_tune.config import ModelConfig, TrainConfig
from mt_tune.memory import (
    amp_for_device,
    count_params,
    estimate_memory,
    format_bytes,
    with_vocab_sizes,
)
from mt_tune.model import Seq2SeqTransformer

VOCAB, BATCH, LENGTH = 300, 8, 12


# Tiny models run fastest on one thread (the fixture is in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> ModelConfig:
    base = dict(d_model=32, n_heads=4, enc_layers=2, dec_layers=2, ffn_dim=128, src_vocab_size=VOCAB,
                tgt_vocab_size=VOCAB, max_positions=LENGTH + 1)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("variant", [
    dict(),
    dict(share_embeddings=False),
    dict(share_embeddings=False, tie_output=False, tgt_vocab_size=200),
    dict(positions="learned"),
    dict(norm="post"),
    dict(norm="post", positions="learned", tie_output=False, enc_layers=3, dec_layers=1),
])
def test_count_params_equals_the_built_model(variant):
    cfg = tiny(**variant)
    assert count_params(cfg) == Seq2SeqTransformer(cfg).num_params()


def measure(cfg: ModelConfig, amp: bool) -> tuple[int, int]:
    """(bytes autograd saves for backward, CPU peak allocation during forward + backward) for one
    training step on a batch of exactly BATCH * LENGTH tokens a side, as the Trainer computes it."""
    torch.manual_seed(0)
    src = torch.randint(4, VOCAB, (BATCH, LENGTH))
    tgt = torch.randint(4, VOCAB, (BATCH, LENGTH + 1))
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    model = Seq2SeqTransformer(cfg).train()
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def loss_of_step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = model(src, tgt_in)
            return F.cross_entropy(logits.view(-1, VOCAB), tgt_out.reshape(-1), ignore_index=0,
                                   label_smoothing=0.1, reduction="sum")

    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_of_step()
    loss_of_step().backward()  # warm-up, then measure a step with no gradients allocated yet
    model.zero_grad(set_to_none=True)
    with profile(profile_memory=True) as prof:
        loss_of_step().backward()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    current = peak = 0
    for e in events:
        current += e.self_cpu_memory_usage
        peak = max(peak, current)
    return sum(saved.values()), peak


@pytest.mark.parametrize("variant, amp", [
    (dict(), False),
    (dict(), True),
    (dict(dropout=0.0, act_dropout=0.2, norm="post"), False),
    (dict(grad_checkpointing=True), False),
    (dict(grad_checkpointing=True), True),
    (dict(attn_dropout=0.1, share_embeddings=False, tie_output=False), False),
])
def test_activation_estimate_matches_measured_cpu_memory(variant, amp):
    cfg = tiny(**variant)
    est = estimate_memory(cfg, TrainConfig(device="cpu", max_tokens=BATCH * LENGTH), "bf16" if amp else None)
    saved, peak = measure(cfg, amp)
    # Saved for backward: activations, autocast's weight copies and the fp32 log-probabilities.
    predicted_saved = est["activations"] + est["amp_weight_copies"] + 4 * BATCH * LENGTH * VOCAB
    assert predicted_saved == pytest.approx(saved, rel=0.05)
    # The step's peak (weights and optimizer state were allocated before it): the gradients
    # grow during the backward pass, so they count fully only at its end.
    predicted_peak = est["activations"] + est["amp_weight_copies"] + max(est["logits"], est["recompute"])
    assert 0.9 * predicted_peak <= peak <= 1.1 * (predicted_peak + est["gradients"])


def test_parameter_state_bytes_are_exact():
    cfg = tiny()
    n = Seq2SeqTransformer(cfg).num_params()
    est = estimate_memory(cfg, TrainConfig(device="cpu"))
    assert (est["weights"], est["gradients"], est["optimizer"]) == (4 * n, 4 * n, 8 * n)
    assert est["workspace"] == 0 and est["amp_weight_copies"] == 0
    assert est["total"] == sum(est[k] for k in ("weights", "gradients", "optimizer", "activations", "logits"))


def test_estimate_moves_the_right_way():
    cfg = tiny(max_positions=512, d_model=256, ffn_dim=1024, enc_layers=6, dec_layers=6)
    small, big = TrainConfig(max_tokens=2048), TrainConfig(max_tokens=8192)
    base = estimate_memory(cfg, small)
    assert estimate_memory(cfg, big)["total"] > base["total"]
    assert estimate_memory(cfg, big)["logits"] == 4 * base["logits"]
    ckpt = estimate_memory(dataclasses.replace(cfg, grad_checkpointing=True), small)
    assert ckpt["activations"] < base["activations"] / 3 and ckpt["total"] < base["total"]
    bf16 = estimate_memory(cfg, small, "bf16")
    assert bf16["activations"] < base["activations"] and bf16["logits"] < base["logits"]
    assert bf16["workspace"] == base["workspace"] > 0  # a CUDA device (train.device auto)


def test_helpers():
    with pytest.raises(ValueError, match="vocab"):
        count_params(ModelConfig())
    with pytest.raises(ValueError, match="amp_dtype"):
        estimate_memory(tiny(), TrainConfig(), "int8")
    filled = with_vocab_sizes(ModelConfig(tgt_vocab_size=500), 8000)
    assert (filled.src_vocab_size, filled.tgt_vocab_size) == (8000, 500)
    assert amp_for_device(TrainConfig(device="cpu")) is None
    assert amp_for_device(TrainConfig(device="auto")) == "bf16"
    assert amp_for_device(TrainConfig(device="cuda", amp="fp16")) == "fp16"
    assert format_bytes(3 * 2**30) == "3.00 GiB" and format_bytes(512) == "512 B"


def test_estimate_command(tmp_path, capsys):
    from mt_tune.cli import main

    config = tmp_path / "run.yaml"
    config.write_text("data: {format: sample, vocab_size: 1000}\n"
                      "model: {d_model: 64, n_heads: 4, enc_layers: 1, dec_layers: 1, ffn_dim: 128}\n", encoding="utf-8")

    def run(*argv):
        try:
            main(["estimate", str(config), *argv])
            code = 0
        except SystemExit as e:
            code = e.code or 0
        return code, capsys.readouterr()

    code, captured = run("model.grad_checkpointing=true", "train.device=cpu")
    expected = count_params(ModelConfig(d_model=64, n_heads=4, enc_layers=1, dec_layers=1, ffn_dim=128,
                                        src_vocab_size=1000, tgt_vocab_size=1000))
    assert code == 0
    assert f"parameters: {expected:,}" in captured.out
    for component in ("weights", "activations", "logits", "recompute", "total"):
        assert component in captured.out
    code, captured = run("model.norm=middle")
    assert code == 2 and "model.norm" in captured.err and "pre, post" in captured.err



def run_estimate(argv, capsys):
    from mt_tune.cli import main

    try:
        main(["estimate", *argv])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    return code, capsys.readouterr()


def test_estimate_command_on_a_study_spec(capsys):
    from mt_tune.search.extremes import extreme_configs
    from mt_tune.search.spec import load_spec

    code, captured = run_estimate(["studies/demo.yaml", "model.n_heads=8"], capsys)
    out = captured.out
    extremes = extreme_configs(load_spec("studies/demo.yaml", ["model.n_heads=8"]))
    assert code == 0 and "study demo: the largest and the smallest configuration" in out
    for label in ("largest", "smallest"):
        result = extremes[label]
        assert f"{label}: " + ", ".join(f"{k}={v}" for k, v in result["sampled"].items()) in out
        assert f"parameters: {result['params']:,}" in out
        assert f"peak training memory {format_bytes(result['memory']['total'])} for max_tokens 640" in out
    assert "4+4 layers" in out and "2+2 layers" in out


def test_estimate_command_on_a_bad_study_spec(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: s\ndata: {format: sample}\nsearch: {model.d_model: {type: categorical, choices: [90]}}\n",
                    encoding="utf-8")
    code, captured = run_estimate([str(spec)], capsys)
    assert code == 2 and "spec.yaml" in captured.err and "does not divide" in captured.err
    assert "Traceback" not in captured.err
