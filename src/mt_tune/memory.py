"""Parameter count and peak training memory of a config, without building the model.

count_params(model_cfg) follows the layer shapes of mt_tune.model exactly (a test checks it
against the built model for every variant).

estimate_memory(model_cfg, train_cfg, amp_dtype) adds up, in bytes (P parameters, N =
train.max_tokens, the padded tokens of a micro-batch on each side, D d_model, F ffn_dim, H heads,
V target vocabulary, a = bytes of an activation: 2 under bf16/fp16 autocast, else 4):

- weights      4P (fp32 master weights, also under AMP)
- gradients    4P (counted whole: with gradient accumulation they live through the backward pass)
- optimizer    8P (AdamW: two fp32 moments), plus 4P with train.ema_decay (the averaged weights)
- amp_weight_copies  2 bytes per weight of every matmul (the linears, and the target embedding
               when the output projection is tied): autocast's low-precision copies, which the
               backward pass keeps
- activations  what autograd saves between forward and backward, per token and layer; the
               residual stream and LayerNorm inputs stay fp32 under autocast:
               encoder layer, per source token:  2 norms x (4D + 8) + a(6D + F) + 4H
               decoder layer, per target token:  3 norms x (4D + 8) + a(9D + F) + 8H
               decoder layer, per source token:  a*2D cross-attention K/V (+ a*D: autocast's copy
                                                 of the encoder output for that layer)
               plus dropout masks (1 byte an element on CUDA, the element size on CPU) where
               dropout > 0, the final LayerNorms, the encoder output, the token ids and the
               attention masks. With gradient checkpointing a layer keeps only its input (4D per
               token); CPU attention dropout falls back to attention that materialises the
               [B, H, L, L] weights (counted for the worst case, sentences of max_positions).
- logits       N*V*(a + 8): the logits, the fp32 log-probabilities the loss saves, and their
               fp32 gradient at the start of the backward pass. Often the largest item for MT.
- recompute    with checkpointing: one layer's activations, rebuilt during its backward pass
               (it coincides with the logits' peak or comes after it, so the peak takes the larger)
- workspace    64 MiB on CUDA for cuBLAS workspaces and allocator rounding; 0 on CPU
- total        weights + gradients + optimizer + amp_weight_copies + activations
               + max(logits, recompute) + workspace

The per-layer terms were read off the tensors autograd saves for this model (the tests measure
them on CPU with saved-tensor hooks, and the CPU peak with the profiler);
benchmarks/memory_check.py compares the total with torch.cuda.max_memory_allocated on a GPU.
"""

from __future__ import annotations

import copy

from mt_tune.config import ModelConfig

WORKSPACE_CUDA = 64 * 2**20
# The config fields estimate_run reads: the ones that change a configuration's size.
ESTIMATE_INPUTS = frozenset({
    "model.d_model", "model.n_heads", "model.enc_layers", "model.dec_layers", "model.ffn_dim", "model.dropout",
    "model.attn_dropout", "model.act_dropout", "model.norm", "model.positions", "model.max_positions",
    "model.share_embeddings", "model.tie_output", "model.grad_checkpointing", "model.src_vocab_size",
    "model.tgt_vocab_size", "train.max_tokens", "train.device", "train.amp", "train.ema_decay", "data.vocab_size",
})
_AMP_BYTES = {None: 4, "off": 4, "bf16": 2, "fp16": 2}


def count_params(cfg: ModelConfig) -> int:
    """Trainable parameters of Seq2SeqTransformer(cfg), each shared tensor once."""
    d, f = cfg.d_model, cfg.ffn_dim
    _check_vocab(cfg)
    embeddings = cfg.src_vocab_size * d + (0 if cfg.share_embeddings else cfg.tgt_vocab_size * d)
    positions = 2 * cfg.max_positions * d if cfg.positions == "learned" else 0
    attention = 4 * d * d + 4 * d  # q, k, v and output projections with biases (self or cross)
    ffn = 2 * d * f + f + d
    norm = 2 * d
    encoder_layer = attention + ffn + 2 * norm
    decoder_layer = 2 * attention + ffn + 3 * norm
    final_norms = 2 * norm if cfg.norm == "pre" else 0
    output = 0 if cfg.tie_output else cfg.tgt_vocab_size * d
    return (embeddings + positions + cfg.enc_layers * encoder_layer + cfg.dec_layers * decoder_layer
            + final_norms + output)


def _layer_matmul_weights(cfg: ModelConfig) -> tuple[int, int]:
    """Matmul weights (no biases) of one encoder layer and of one decoder layer."""
    d, f = cfg.d_model, cfg.ffn_dim
    return 4 * d * d + 2 * d * f, 8 * d * d + 2 * d * f


def estimate_memory(model_cfg: ModelConfig, train_cfg, amp_dtype: str | None = None) -> dict[str, int]:
    """Peak training memory in bytes, by component, and "total" (see the module docstring).

    amp_dtype: None/"off" (fp32), "bf16" or "fp16". train_cfg gives max_tokens and the device
    ("cpu" uses CPU rules, anything else CUDA's).
    """
    if amp_dtype not in _AMP_BYTES:
        raise ValueError(f"amp_dtype must be None, 'off', 'bf16' or 'fp16', got {amp_dtype!r}")
    cfg = model_cfg
    amp = _AMP_BYTES[amp_dtype] == 2
    a = _AMP_BYTES[amp_dtype]
    cuda = train_cfg.device != "cpu"
    n = train_cfg.max_tokens
    d, f, h, v = cfg.d_model, cfg.ffn_dim, cfg.n_heads, cfg.tgt_vocab_size
    p = count_params(cfg)

    def mask(elements: int, elem_bytes: int, prob: float) -> int:
        """Bytes of a dropout mask over `elements` values (none when the dropout is off)."""
        return elements * (1 if cuda else elem_bytes) if prob > 0 else 0

    norm = 4 * d + 8  # a LayerNorm's fp32 input plus its mean and rstd
    resid, act = cfg.dropout, cfg.act_dropout
    ffn_dropout = mask(f, a, act) + a * f if act > 0 else 0  # its mask and its output, kept apart
    enc_layer = 2 * norm + a * (6 * d + f) + 4 * h + mask(2 * d, a, resid) + ffn_dropout + 4
    dec_layer = 3 * norm + a * (9 * d + f) + 8 * h + mask(3 * d, a, resid) + ffn_dropout
    dec_layer_src = a * 2 * d + (a * d if amp else 0) + 4  # cross K/V, autocast's memory copy, mask

    # Token ids (src, tgt_in, tgt_out), the embedding dropout, the output projection's input, with
    # pre-LN the final LayerNorms' inputs, and the fp32 encoder output where something keeps it
    # (the cross-attention K/V projections in fp32; checkpointed decoder layers as their input).
    per_token = 3 * 8 + 2 * mask(d, 4, resid) + a * d + (2 * norm if cfg.norm == "pre" else 0)
    if not amp or cfg.grad_checkpointing:
        per_token += 4 * d
    if cfg.grad_checkpointing:
        layers = n * (cfg.enc_layers + cfg.dec_layers) * 4 * d
        recompute = n * max(enc_layer, dec_layer + dec_layer_src)
    else:
        layers = n * (cfg.enc_layers * enc_layer + cfg.dec_layers * (dec_layer + dec_layer_src))
        recompute = 0
    # Autocast's weight copies are kept for the backward pass; inside checkpointed layers they
    # are rebuilt with the layer, so only the output projection's copy is kept throughout.
    amp_copies = 0
    if amp:
        enc_w, dec_w = _layer_matmul_weights(cfg)
        amp_copies = 2 * cfg.tgt_vocab_size * d  # the output projection (tied or not)
        if cfg.grad_checkpointing:
            recompute += 2 * max(enc_w, dec_w)
        else:
            amp_copies += 2 * (cfg.enc_layers * enc_w + cfg.dec_layers * dec_w)
    attention_matrices = 0
    if cfg.attn_dropout > 0 and not cuda:
        length = min(cfg.max_positions, n)
        calls = cfg.enc_layers + 2 * cfg.dec_layers
        attention_matrices = (n // length) * h * length * length * (17 if amp else 12) * calls
        if cfg.grad_checkpointing:
            recompute += attention_matrices // calls * 2  # a decoder layer's two attentions
            attention_matrices = 0
    activations = n * per_token + layers + attention_matrices

    parts = {
        "weights": 4 * p,
        "gradients": 4 * p,
        "optimizer": (12 if getattr(train_cfg, "ema_decay", 0) > 0 else 8) * p,
        "amp_weight_copies": amp_copies,
        "activations": activations,
        "logits": n * v * (a + 8),
        "recompute": recompute,
        "workspace": WORKSPACE_CUDA if cuda else 0,
    }
    parts["total"] = (parts["weights"] + parts["gradients"] + parts["optimizer"] + parts["amp_weight_copies"]
                      + activations + max(parts["logits"], recompute) + parts["workspace"])
    return parts


def _check_vocab(cfg: ModelConfig) -> None:
    if cfg.src_vocab_size <= 0 or cfg.tgt_vocab_size <= 0:
        raise ValueError("src_vocab_size and tgt_vocab_size must be set (> 0); see with_vocab_sizes()")


def with_vocab_sizes(model_cfg: ModelConfig, vocab_size: int) -> ModelConfig:
    """A copy of model_cfg with unset (0) vocabulary sizes taken as `vocab_size` (data.vocab_size)."""
    cfg = copy.copy(model_cfg)
    cfg.src_vocab_size = cfg.src_vocab_size or vocab_size
    cfg.tgt_vocab_size = cfg.tgt_vocab_size or vocab_size
    return cfg


def amp_for_device(train_cfg) -> str | None:
    """The autocast dtype train.amp means, assuming a GPU with bf16 unless train.device is cpu."""
    if train_cfg.amp == "auto":
        return None if train_cfg.device == "cpu" else "bf16"
    return None if train_cfg.amp == "off" else train_cfg.amp


def estimate_run(run_cfg) -> dict:
    """What `mt-tune estimate` shows for a training config: the model config (vocabulary sizes
    filled from data.vocab_size where unset), the autocast dtype assumed, the parameter count and
    the memory breakdown."""
    model_cfg = with_vocab_sizes(run_cfg.model, run_cfg.data.vocab_size)
    amp = amp_for_device(run_cfg.train)
    return {"model": model_cfg, "amp": amp, "params": count_params(model_cfg),
            "memory": estimate_memory(model_cfg, run_cfg.train, amp)}


def format_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
