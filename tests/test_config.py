"""Run configs: validation names the key and refuses values a run cannot use."""

from __future__ import annotations

import pytest

from test_train import cache_dir, make_config, raw_config  # noqa: F401 (cache_dir, raw_config: fixtures)

from mt_tune.config import ModelConfig
from mt_tune.errors import ConfigError


@pytest.mark.parametrize("change, key", [
    (dict(n_heads=5), "model.n_heads"),
    (dict(dropout=1.0), "model.dropout"),
    (dict(src_vocab_size=10, tgt_vocab_size=12), "model.share_embeddings"),
    (dict(d_model=0), "model.d_model"),
])
def test_validate_names_the_key(change, key):
    with pytest.raises(ConfigError, match=key):
        ModelConfig(**change).validate("model")



@pytest.mark.parametrize("lr", ["nan", "inf"])
def test_a_learning_rate_that_is_not_a_finite_number_is_refused(raw_config, lr):
    with pytest.raises(ConfigError, match=f"train.lr: must be > 0 and finite, got {lr}"):
        make_config(raw_config, lr=float(lr))
