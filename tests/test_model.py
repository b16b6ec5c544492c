"""The Transformer: shapes, masking, incremental decoding, checkpointing, configuration variants."""

import pytest
import torch
import torch.nn.functional as F

from mt_tune.config import ModelConfig
from mt_tune.model import Seq2SeqTransformer, optimizer_groups

VOCAB = 50


# Tiny models run fastest on one thread (the fixture is in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> ModelConfig:
    base = dict(d_model=32, n_heads=4, enc_layers=2, dec_layers=2, ffn_dim=64, dropout=0.0,
                src_vocab_size=VOCAB, tgt_vocab_size=VOCAB)
    base.update(kw)
    return ModelConfig(**base)


def batch(b=3, s=7, t=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, VOCAB, (b, s), generator=g)
    src[0, 4:] = 0  # padding
    src[1, 6:] = 0
    tgt_in = torch.randint(4, VOCAB, (b, t), generator=g)
    tgt_in[:, 0] = 2  # bos
    return src, tgt_in


VARIANTS = [
    dict(),
    dict(norm="post"),
    dict(positions="learned"),
    dict(share_embeddings=False, tie_output=False),
    dict(share_embeddings=False, tgt_vocab_size=40),
    dict(norm="post", positions="learned", tie_output=False),
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_incremental_decoding_matches_full_forward(variant):
    torch.manual_seed(0)
    model = Seq2SeqTransformer(tiny(**variant)).eval()
    src, tgt_in = batch()
    tgt_in = tgt_in.clamp(max=model.cfg.tgt_vocab_size - 1)
    with torch.no_grad():
        full = model(src, tgt_in)
        memory, src_mask = model.encode(src)
        cache = model.start_decoding(memory, src_mask)
        steps = torch.stack([model.decode_step(tgt_in[:, t], cache) for t in range(tgt_in.shape[1])], dim=1)
    assert full.shape == (3, 6, model.cfg.tgt_vocab_size)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)


def test_cache_reorder_follows_the_chosen_rows():
    torch.manual_seed(0)
    model = Seq2SeqTransformer(tiny()).eval()
    src, tgt_in = batch()
    order = torch.tensor([2, 0, 1])
    with torch.no_grad():
        full = model(src[order], tgt_in[order])
        cache = model.start_decoding(*model.encode(src))
        first = model.decode_step(tgt_in[:, 0], cache)
        cache.reorder(order)
        rest = [model.decode_step(tgt_in[order, t], cache) for t in range(1, tgt_in.shape[1])]
    torch.testing.assert_close(torch.stack([first[order]] + rest, dim=1), full, atol=1e-5, rtol=1e-5)


def test_source_padding_is_masked():
    """Extra padding on the source must not change any logit."""
    torch.manual_seed(0)
    model = Seq2SeqTransformer(tiny()).eval()
    src, tgt_in = batch()
    padded = torch.cat([src, torch.zeros(3, 5, dtype=torch.long)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded, tgt_in), model(src, tgt_in), atol=1e-5, rtol=1e-5)


def test_decoder_is_causal():
    """Changing a later target token must not change the logits of earlier positions."""
    torch.manual_seed(0)
    model = Seq2SeqTransformer(tiny()).eval()
    src, tgt_in = batch()
    changed = tgt_in.clone()
    changed[:, 4] = (changed[:, 4] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(src, tgt_in), model(src, changed)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4], b[:, 4])


def test_gradient_checkpointing_gives_the_same_gradients():
    src, tgt_in = batch()
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = Seq2SeqTransformer(tiny(grad_checkpointing=ckpt, dropout=0.1, act_dropout=0.1)).train()
        torch.manual_seed(1)  # same dropout masks in both runs (non-reentrant checkpoint replays the RNG)
        model(src, tgt_in).logsumexp(-1).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_shared_and_tied_weights_are_one_tensor():
    model = Seq2SeqTransformer(tiny())
    assert model.src_embed is model.tgt_embed and model.out_proj is None
    untied = Seq2SeqTransformer(tiny(share_embeddings=False, tie_output=False))
    assert untied.src_embed is not untied.tgt_embed and untied.out_proj is not None
    assert untied.num_params() - model.num_params() == 2 * VOCAB * 32


def test_weight_decay_applies_to_linear_weights_only():
    """Embeddings (the learned position tables too), norms and biases are not decayed."""
    model = Seq2SeqTransformer(tiny(enc_layers=1, dec_layers=1, positions="learned", share_embeddings=False,
                                    tie_output=False))
    decay, no_decay = optimizer_groups(model, weight_decay=0.1)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = sorted(names[id(p)] for p in decay["params"])
    assert decayed == sorted([
        "encoder.0.self_attn.qkv_proj.weight", "encoder.0.self_attn.out_proj.weight",
        "encoder.0.ffn.fc1.weight", "encoder.0.ffn.fc2.weight",
        "decoder.0.self_attn.qkv_proj.weight", "decoder.0.self_attn.out_proj.weight",
        "decoder.0.cross_attn.q_proj.weight", "decoder.0.cross_attn.kv_proj.weight",
        "decoder.0.cross_attn.out_proj.weight", "decoder.0.ffn.fc1.weight", "decoder.0.ffn.fc2.weight",
        "out_proj.weight"])
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert {"src_embed.weight", "tgt_embed.weight", "src_pos.weight", "tgt_pos.weight",
            "enc_norm.weight", "enc_norm.bias", "encoder.0.ffn.fc1.bias"} <= not_decayed
    assert not_decayed == set(names.values()) - set(decayed)  # every parameter in one group, once
    tied = Seq2SeqTransformer(tiny())  # the shared table that is also the output projection: not decayed
    tied_decay, tied_no_decay = optimizer_groups(tied, 0.1)
    assert any(p is tied.src_embed.weight for p in tied_no_decay["params"])
    assert len(tied_decay["params"]) + len(tied_no_decay["params"]) == len(list(tied.parameters()))


def test_dropout_is_only_active_in_training():
    torch.manual_seed(0)
    model = Seq2SeqTransformer(tiny(dropout=0.3, attn_dropout=0.3, act_dropout=0.3))
    src, tgt_in = batch()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(src, tgt_in), model(src, tgt_in))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(src, tgt_in), model(src, tgt_in))


def test_initial_logits_are_well_scaled_and_it_learns():
    """The init gives unit-scale logits, and a few steps of AdamW fit a fixed batch (no tuning)."""
    torch.manual_seed(0)
    model = Seq2SeqTransformer(tiny())
    src, tgt_in = batch(b=8, s=6, t=6)
    tgt_out = torch.roll(tgt_in, -1, dims=1)
    logits = model(src, tgt_in)
    assert 0.3 < logits.std().item() < 3.0
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(src, tgt_in).flatten(0, 1), tgt_out.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_too_long_input_is_a_clear_error():
    model = Seq2SeqTransformer(tiny(max_positions=8))
    src, tgt_in = batch(s=9)
    with pytest.raises(ValueError, match="max_positions=8"):
        model(src, tgt_in)


def test_building_needs_vocab_sizes():
    with pytest.raises(ValueError, match="vocab_size"):
        Seq2SeqTransformer(ModelConfig())
