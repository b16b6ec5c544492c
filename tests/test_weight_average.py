"""The moving average of the weights: how it trails, swaps in and out, and reloads."""

from __future__ import annotations

import pytest
import torch

from mt_tune.config import ModelConfig
from mt_tune.model import Seq2SeqTransformer
from mt_tune.weight_average import WeightAverage

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(**kw) -> Seq2SeqTransformer:
    torch.manual_seed(0)
    return Seq2SeqTransformer(ModelConfig(d_model=16, n_heads=2, enc_layers=1, dec_layers=1, ffn_dim=32,
                                          src_vocab_size=30, tgt_vocab_size=30, **kw))


def shift_weights(model: torch.nn.Module, by: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(by)


def test_the_average_trails_the_weights_with_a_short_memory_at_first():
    model = tiny_model()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    average = WeightAverage(model, decay=0.9)
    shift_weights(model, 1.0)
    average.update(steps_done=0)  # decay min(0.9, 1/10): the average moves 90 % of the way
    name = "encoder.0.ffn.fc1.weight"
    torch.testing.assert_close(average.params[name], start[name] + 0.9)
    average.update(steps_done=1000)  # now decay 0.9: 10 % of the remaining 0.1
    torch.testing.assert_close(average.params[name], start[name] + 0.91)


def test_swapped_in_holds_the_average_and_gives_the_weights_back():
    model = tiny_model()
    average = WeightAverage(model, decay=0.9)
    shift_weights(model, 1.0)
    trained = {n: p.detach().clone() for n, p in model.named_parameters()}
    with average.swapped_in():
        for n, p in model.named_parameters():
            assert torch.equal(p, average.params[n])
    for n, p in model.named_parameters():
        assert torch.equal(p, trained[n])


def test_state_dict_is_the_average_under_every_name_of_a_shared_table():
    model = tiny_model()  # shared embeddings: src_embed.weight and tgt_embed.weight are one tensor
    average = WeightAverage(model, decay=0.9)
    shift_weights(model, 1.0)
    state = average.state_dict()
    assert torch.equal(state["tgt_embed.weight"], average.params["src_embed.weight"])
    assert not torch.equal(state["tgt_embed.weight"], model.tgt_embed.weight)
    reloaded = WeightAverage(tiny_model(), decay=0.9)
    reloaded.load(state)
    for n in average.params:
        assert torch.equal(reloaded.params[n], average.params[n])
