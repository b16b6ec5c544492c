"""The encoder-decoder Transformer (one file, nanoGPT-style; its ModelConfig is in config.py).

Shapes: B batch, S source length, T target length, D d_model, H heads, V vocabulary.
Padding is the tokenizers' PAD_ID (data/vocab.py: every mt-tune sentencepiece model has pad=0).

Choices worth knowing:
- Attention is `F.scaled_dot_product_attention`. The source padding mask is built once per
  forward as a [B, 1, 1, S] bool tensor (True = a real token that may be attended to) and shared
  by every encoder self-attention and decoder cross-attention. Decoder self-attention uses
  `is_causal=True` and no padding mask: padded target positions only ever look at earlier
  positions and their outputs are ignored by the loss, so they cannot leak into real tokens.
- Dropout is applied with `F.dropout` only when its probability is > 0 and the model is training:
  a no-op dropout still costs time on CPU.
- Initialisation (as in fairseq's transformer, which trains without tuning): embeddings
  N(0, D**-0.5), so after the sqrt(D) scale a token vector has unit variance like the sinusoids;
  with a tied output projection the initial logits then also have unit variance. Linear weights
  are Xavier-uniform, biases zero, LayerNorms one/zero, the padding row of each embedding zero.
- Incremental decoding (`start_decoding` + `decode_step`) keeps each decoder layer's self-attention
  keys/values and the precomputed cross-attention keys/values of the encoder memory, so one step
  costs one token's worth of compute per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mt_tune.config import ModelConfig
from mt_tune.data.vocab import PAD_ID


def _dropout(x: Tensor, p: float, training: bool) -> Tensor:
    return F.dropout(x, p, True) if p > 0 and training else x


def sinusoid_table(n_positions: int, dim: int) -> Tensor:
    """The fixed position encodings of "Attention Is All You Need": [n_positions, dim]."""
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n_positions, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


# --- blocks -------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head attention. Self-attention projects q, k, v with one fused matmul; cross-attention
    projects q from the decoder and k, v (fused) from the encoder memory."""

    def __init__(self, cfg: ModelConfig, cross: bool):
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.attn_dropout = cfg.attn_dropout
        self.cross = cross
        if cross:
            self.q_proj = nn.Linear(d, d)
            self.kv_proj = nn.Linear(d, 2 * d)
        else:
            self.qkv_proj = nn.Linear(d, 3 * d)
        self.out_proj = nn.Linear(d, d)

    def _heads(self, x: Tensor, n: int) -> list[Tensor]:
        """[B, L, n*D] -> n tensors [B, H, L, D/H] (views, no copy)."""
        b, length, _ = x.shape
        return x.view(b, length, n, self.n_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)

    def memory_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values of the encoder memory (computed once per sentence)."""
        k, v = self._heads(self.kv_proj(memory), 2)
        return k, v

    def forward(self, x: Tensor, mask: Tensor | None = None, causal: bool = False,
                memory: Tensor | None = None, kv: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Self-attention over x, or cross-attention to `memory` (or its precomputed `kv`)."""
        if self.cross:
            (q,) = self._heads(self.q_proj(x), 1)
            k, v = kv if kv is not None else self.memory_kv(memory)
        else:
            q, k, v = self._heads(self.qkv_proj(x), 3)
        p = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        b, _, length, _ = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(b, length, -1))

    def step(self, x: Tensor, cache: dict) -> Tensor:
        """Self-attention of one new position [B, 1, D] over all earlier ones; extends the cache."""
        q, k, v = self._heads(self.qkv_proj(x), 3)
        if "k" in cache:
            k = torch.cat([cache["k"], k], dim=2)
            v = torch.cat([cache["v"], v], dim=2)
        cache["k"], cache["v"] = k, v
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(y.transpose(1, 2).reshape(x.shape[0], 1, -1))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.d_model)
        self.act_dropout = cfg.act_dropout

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(_dropout(F.relu(self.fc1(x)), self.act_dropout, self.training))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.dropout = cfg.dropout
        self.self_attn = Attention(cfg, cross=False)
        self.self_attn_norm = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg)
        self.ffn_norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: Tensor, src_mask: Tensor) -> Tensor:
        x = _residual(x, self.self_attn_norm, self.pre_norm, self.dropout, self.training,
                      lambda h: self.self_attn(h, mask=src_mask))
        return _residual(x, self.ffn_norm, self.pre_norm, self.dropout, self.training, self.ffn)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.dropout = cfg.dropout
        self.self_attn = Attention(cfg, cross=False)
        self.self_attn_norm = nn.LayerNorm(cfg.d_model)
        self.cross_attn = Attention(cfg, cross=True)
        self.cross_attn_norm = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg)
        self.ffn_norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: Tensor, memory: Tensor, src_mask: Tensor) -> Tensor:
        x = _residual(x, self.self_attn_norm, self.pre_norm, self.dropout, self.training,
                      lambda h: self.self_attn(h, causal=True))
        x = _residual(x, self.cross_attn_norm, self.pre_norm, self.dropout, self.training,
                      lambda h: self.cross_attn(h, mask=src_mask, memory=memory))
        return _residual(x, self.ffn_norm, self.pre_norm, self.dropout, self.training, self.ffn)

    def step(self, x: Tensor, src_mask: Tensor, cache: dict) -> Tensor:
        """One decoding position [B, 1, D], using and extending this layer's cache (eval only)."""
        x = _residual(x, self.self_attn_norm, self.pre_norm, 0.0, False, lambda h: self.self_attn.step(h, cache))
        x = _residual(x, self.cross_attn_norm, self.pre_norm, 0.0, False,
                      lambda h: self.cross_attn(h, mask=src_mask, kv=cache["memory_kv"]))
        return _residual(x, self.ffn_norm, self.pre_norm, 0.0, False, self.ffn)


def _residual(x: Tensor, norm: nn.LayerNorm, pre_norm: bool, p: float, training: bool, sublayer) -> Tensor:
    """Pre-LN: x + sublayer(norm(x)); post-LN: norm(x + sublayer(x)); dropout on the branch."""
    if pre_norm:
        return x + _dropout(sublayer(norm(x)), p, training)
    return norm(x + _dropout(sublayer(x), p, training))


# --- the model ----------------------------------------------------------------------------


def optimizer_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on the weight matrices of linear layers only, not
    on embeddings (token tables, learned position tables, a tied output projection), norms or
    biases. Decided by the kind of module a parameter belongs to, not by its name."""
    decayed = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    decay, no_decay = [], []
    for p in model.parameters():  # each shared tensor once
        if p.requires_grad:
            (decay if id(p) in decayed else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class DecoderCache:
    """State of incremental decoding for a batch of N hypotheses: the source padding mask, each
    layer's self-attention keys/values so far and cross-attention keys/values of the memory."""

    src_mask: Tensor  # [N, 1, 1, S]
    layers: list[dict]  # per decoder layer: "memory_kv" (k, v) and, after a step, "k", "v"
    step: int = 0  # positions decoded so far (the next token's position)

    def reorder(self, index: Tensor) -> None:
        """Keep hypotheses `index` (a [N'] long tensor), e.g. the parents of the surviving beams."""
        self.src_mask = self.src_mask.index_select(0, index)
        for layer in self.layers:
            for key, value in layer.items():
                if key == "memory_kv":
                    layer[key] = tuple(t.index_select(0, index) for t in value)
                else:
                    layer[key] = value.index_select(0, index)


class Seq2SeqTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.src_vocab_size <= 0 or cfg.tgt_vocab_size <= 0:
            raise ValueError("ModelConfig.src_vocab_size and tgt_vocab_size must be set (> 0) to build a model")
        if cfg.share_embeddings and cfg.src_vocab_size != cfg.tgt_vocab_size:
            raise ValueError("share_embeddings needs src_vocab_size == tgt_vocab_size")
        self.cfg = cfg
        d = cfg.d_model
        self.embed_scale = math.sqrt(d)
        self.src_embed = nn.Embedding(cfg.src_vocab_size, d, padding_idx=PAD_ID)
        self.tgt_embed = self.src_embed if cfg.share_embeddings else nn.Embedding(cfg.tgt_vocab_size, d,
                                                                                  padding_idx=PAD_ID)
        if cfg.positions == "learned":
            self.src_pos = nn.Embedding(cfg.max_positions, d)
            self.tgt_pos = nn.Embedding(cfg.max_positions, d)
        else:
            # A buffer, not saved in checkpoints: it is a pure function of the config.
            self.register_buffer("sinusoids", sinusoid_table(cfg.max_positions, d), persistent=False)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.dec_layers))
        # Pre-LN leaves the residual stream unnormalised: normalise it once at the end of each stack.
        self.enc_norm = nn.LayerNorm(d) if cfg.norm == "pre" else None
        self.dec_norm = nn.LayerNorm(d) if cfg.norm == "pre" else None
        self.out_proj = None if cfg.tie_output else nn.Linear(d, cfg.tgt_vocab_size, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, self.cfg.d_model ** -0.5)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()

    def num_params(self) -> int:
        """Trainable parameters, each shared tensor counted once."""
        return sum(p.numel() for p in self.parameters())

    # --- pieces ---

    def _embed(self, tokens: Tensor, table: nn.Embedding, pos_table: nn.Embedding | None, start: int = 0) -> Tensor:
        length = tokens.shape[1]
        if start + length > self.cfg.max_positions:
            raise ValueError(f"sequence of {start + length} tokens exceeds max_positions={self.cfg.max_positions}")
        x = table(tokens) * self.embed_scale
        if pos_table is not None:
            x = x + pos_table.weight[start:start + length]
        else:
            x = x + self.sinusoids[start:start + length]
        return _dropout(x, self.cfg.dropout, self.training)

    def _run_layer(self, layer: nn.Module, *args: Tensor) -> Tensor:
        if self.cfg.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def _logits(self, x: Tensor) -> Tensor:
        if self.out_proj is None:
            return F.linear(x, self.tgt_embed.weight)
        return self.out_proj(x)

    # --- training / scoring ---

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """src [B, S] -> (memory [B, S, D], src_mask [B, 1, 1, S] bool, True at real tokens)."""
        src_mask = (src != PAD_ID)[:, None, None, :]
        x = self._embed(src, self.src_embed, getattr(self, "src_pos", None))
        for layer in self.encoder:
            x = self._run_layer(layer, x, src_mask)
        if self.enc_norm is not None:
            x = self.enc_norm(x)
        return x, src_mask

    def decode(self, tgt_in: Tensor, memory: Tensor, src_mask: Tensor) -> Tensor:
        """tgt_in [B, T] (bos + ids) -> logits [B, T, V], every position at once (teacher forcing)."""
        x = self._embed(tgt_in, self.tgt_embed, getattr(self, "tgt_pos", None))
        for layer in self.decoder:
            x = self._run_layer(layer, x, memory, src_mask)
        if self.dec_norm is not None:
            x = self.dec_norm(x)
        return self._logits(x)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """src [B, S], tgt_in [B, T] -> logits [B, T, V]."""
        memory, src_mask = self.encode(src)
        return self.decode(tgt_in, memory, src_mask)

    # --- incremental decoding ---

    def start_decoding(self, memory: Tensor, src_mask: Tensor) -> DecoderCache:
        """A fresh cache for decoding against `memory`; cross-attention K/V are computed here once."""
        layers = [{"memory_kv": layer.cross_attn.memory_kv(memory)} for layer in self.decoder]
        return DecoderCache(src_mask=src_mask, layers=layers)

    def decode_step(self, tokens: Tensor, cache: DecoderCache) -> Tensor:
        """The latest target token of each hypothesis [N] -> next-token logits [N, V]; advances the cache.

        Call in eval mode (no dropout); the first call takes the bos tokens.
        """
        x = self._embed(tokens[:, None], self.tgt_embed, getattr(self, "tgt_pos", None), start=cache.step)
        for layer, layer_cache in zip(self.decoder, cache.layers):
            x = layer.step(x, cache.src_mask, layer_cache)
        if self.dec_norm is not None:
            x = self.dec_norm(x)
        cache.step += 1
        return self._logits(x[:, 0])
