"""The largest and smallest configurations of a search space, checked against built models."""

import yaml

from mt_tune.memory import estimate_run
from mt_tune.model import Seq2SeqTransformer
from mt_tune.search.extremes import extreme_configs
from mt_tune.search.spec import load_spec

SPEC = {
    "name": "sizes",
    "data": {"format": "sample", "vocab_size": 500, "joint_vocab": False},
    "model": {"d_model": 64, "n_heads": 4, "enc_layers": 1, "dec_layers": 1, "ffn_dim": 256,
              "share_embeddings": False},
    "train": {"max_tokens": 256, "device": "cpu"},
    "search": {
        "train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-3, "log": True},  # no effect on size
        "model.d_model": {"type": "categorical", "choices": [64, 96]},
        # Heads must divide the width: 3 heads only with d_model 96 (else the fixed 4).
        "model.n_heads": {"type": "categorical", "choices": [3], "when": {"model.d_model": 96}},
        "model.norm": {"type": "categorical", "choices": ["pre", "post"]},
        # Only sampled with pre-LN; post-LN keeps the fixed 256.
        "model.ffn_dim": {"type": "int", "low": 64, "high": 512, "step": 64, "when": {"model.norm": "pre"}},
        "model.enc_layers": {"type": "int", "low": 1, "high": 3},
        "model.tie_output": {"type": "categorical", "choices": [True, False]},
        "train.max_tokens": {"type": "int", "low": 128, "high": 1024, "step": 128},
        "data.vocab_size": {"type": "categorical", "choices": [300, 500]},
    },
    "metric": "val_loss_per_char",
}


def spec_file(tmp_path, raw=SPEC):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def built_params(result) -> int:
    return Seq2SeqTransformer(result["model"]).num_params()


def test_largest_and_smallest_take_the_extremes_the_space_allows(tmp_path):
    spec = load_spec(spec_file(tmp_path))
    extremes = extreme_configs(spec)
    largest, smallest = extremes["largest"], extremes["smallest"]
    assert largest["sampled"] == {"model.d_model": 96, "model.n_heads": 3, "model.norm": "pre", "model.ffn_dim": 512,
                                  "model.enc_layers": 3, "model.tie_output": False, "train.max_tokens": 1024,
                                  "data.vocab_size": 500}
    assert smallest["sampled"] == {"model.d_model": 64, "model.norm": "pre", "model.ffn_dim": 64,
                                   "model.enc_layers": 1, "model.tie_output": True, "train.max_tokens": 128,
                                   "data.vocab_size": 300}
    for result in (largest, smallest):
        assert result["params"] == built_params(result)
        assert result == dict(estimate_run(result["run_config"]), sampled=result["sampled"],
                              run_config=result["run_config"])
    assert largest["model"].src_vocab_size == 500 and largest["run_config"].train.max_tokens == 1024
    assert smallest["memory"]["total"] < largest["memory"]["total"]


def test_a_condition_that_does_not_hold_leaves_the_fixed_value(tmp_path):
    raw = dict(SPEC, search={
        "model.norm": {"type": "categorical", "choices": ["post"]},
        "model.ffn_dim": {"type": "int", "low": 512, "high": 1024, "when": {"model.norm": "pre"}},
    })
    extremes = extreme_configs(load_spec(spec_file(tmp_path, raw)))
    for result in extremes.values():
        assert result["sampled"] == {"model.norm": "post"} and result["model"].ffn_dim == 256
        assert result["params"] == built_params(result)


def test_a_space_with_nothing_size_related(tmp_path):
    raw = dict(SPEC, search={"train.lr": SPEC["search"]["train.lr"]})
    extremes = extreme_configs(load_spec(spec_file(tmp_path, raw)))
    assert extremes["largest"]["sampled"] == extremes["smallest"]["sampled"] == {}
    assert extremes["largest"]["params"] == built_params(extremes["largest"])


def test_the_demo_study(tmp_path):
    extremes = extreme_configs(load_spec("studies/demo.yaml"))
    largest, smallest = extremes["largest"], extremes["smallest"]
    assert largest["sampled"] == {"model.dropout": 0.4, "model.d_model": 256, "model.ffn_dim": 1024,
                                  "model.enc_layers": 4, "model.dec_layers": 4}
    assert smallest["sampled"] == {"model.dropout": 0.0, "model.d_model": 128, "model.ffn_dim": 512,
                                   "model.enc_layers": 2, "model.dec_layers": 2}
    assert largest["params"] == built_params(largest)
