"""The encoder-decoder Transformer and its ModelConfig (one file, nanoGPT-style)."""

from __future__ import annotations

from dataclasses import dataclass, field


def _opt(default, help, choices=None):
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = list(choices)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    d_model: int = _opt(256, "width of the model (embedding and residual stream)")
    n_heads: int = _opt(4, "attention heads; must divide d_model")
    enc_layers: int = _opt(3, "encoder layers")
    dec_layers: int = _opt(3, "decoder layers")
    ffn_dim: int = _opt(1024, "hidden width of the feed-forward blocks")
    dropout: float = _opt(0.1, "dropout on embeddings and residual branches")
    attn_dropout: float = _opt(0.0, "dropout on attention weights")
    act_dropout: float = _opt(0.0, "dropout after the feed-forward activation")
    norm: str = _opt("pre", "layer norm placement", ["pre", "post"])
    positions: str = _opt("sinusoidal", "position encoding", ["sinusoidal", "learned"])
    max_positions: int = _opt(512, "longest sequence (in tokens) the model accepts")
    share_embeddings: bool = _opt(True, "one embedding table for source and target (needs a joint vocab)")
    tie_output: bool = _opt(True, "output projection shares the target embedding weights")
    grad_checkpointing: bool = _opt(False, "recompute each layer's activations in backward to save memory")
    src_vocab_size: int = _opt(0, "source vocabulary size (0: taken from the tokenizer)")
    tgt_vocab_size: int = _opt(0, "target vocabulary size (0: taken from the tokenizer)")

    def validate(self, where: str) -> None:
        from mt_tune.errors import ConfigError

        for name in ("d_model", "n_heads", "enc_layers", "dec_layers", "ffn_dim", "max_positions"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{where}.{name}: must be > 0, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"{where}.n_heads: {self.n_heads} does not divide {where}.d_model ({self.d_model})")
        for name in ("dropout", "attn_dropout", "act_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: must be in [0, 1), got {getattr(self, name)}")
