"""Typed config sections, loaded from YAML and validated with messages that name the bad key.

Every section is a dataclass whose fields carry their help text and, where the set is closed,
their valid choices (`metadata={"help": ..., "choices": [...]}`): one source for validation,
error messages and docs. A training config is three sections, `data`, `model` and `train`;
a study spec (mt_tune.search.spec) reuses the same sections. ModelConfig is here, not beside
the model it shapes (mt_tune.model), so that reading a config or a study needs no torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mt_tune.errors import ConfigError

# An evaluation's metrics, in its order, and the direction that makes each better.
METRICS = {"val_loss": "minimize", "val_loss_per_char": "minimize", "bleu": "maximize", "chrf": "maximize"}
TRANSLATION_METRICS = ("bleu", "chrf")


def opt(default: Any, help: str, choices: list | None = None, **kw: Any) -> Any:
    """A dataclass field with help text (and choices): the one place a setting is described."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = list(choices)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


# --- scales -------------------------------------------------------------------------------

_SCALE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kKmM]?)$")


def parse_scale(value: Any, where: str = "data.scale") -> int | None:
    """10000, "10k", "1.5M" -> number of training pairs; "full" (or None) -> None (all)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "full"):
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number of pairs like 10000, '10k' or 'full', got {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = _SCALE_RE.match(str(value).strip())
        if not m:
            raise ConfigError(f"{where}: expected a number of pairs like 10000, '10k' or 'full', got {value!r}")
        n = int(float(m.group(1)) * {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()])
    if n <= 0:
        raise ConfigError(f"{where}: must be positive, got {value!r}")
    return n


def format_scale(n: int | None) -> str:
    """None -> 'full', 10000 -> '10k', 1500 -> '1500'."""
    if n is None:
        return "full"
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


# --- the sections -------------------------------------------------------------------------

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")  # train.device, worker --device; --devices: distributed


@dataclass
class DataConfig:
    format: str = opt("auto", "corpus format; auto detects it from the file names and content",
                      choices=["auto", "jsonl", "tsv", "moses", "sample"])
    train: list[str] = opt([], "training corpus: one file (jsonl/tsv) or two (a Moses pair, "
                               "x.zh + x.en); empty for the bundled sample")
    valid: list[str] = opt([], "validation corpus in the same format; empty: hold out `valid_size` "
                               "pairs of the training corpus by hash")
    src_lang: str = opt("zh", "source language code (Moses file suffix, default JSON key)")
    tgt_lang: str = opt("en", "target language code (Moses file suffix, default JSON key)")
    src_key: str = opt("", "JSON key of the source text; empty: src_lang, then 'chinese'")
    tgt_key: str = opt("", "JSON key of the target text; empty: tgt_lang, then 'english'")
    scale: Any = opt("full", "training pairs to use: 1000, '10k', '100k' or 'full'; scales are nested")
    valid_size: int = opt(500, "pairs held out for validation when no `valid` file is given")
    max_chars: int = opt(400, "skip pairs with a side longer than this many characters")
    max_ratio: float = opt(9.0, "skip pairs whose character-length ratio (longer/shorter side, "
                                "after the zh/en script factor) exceeds this")
    dedup: bool = opt(True, "skip exact duplicate pairs")
    nfkc: bool = opt(False, "apply Unicode NFKC normalisation before anything else")
    max_bad_fraction: float = opt(0.5, "a corpus with a larger fraction of bad lines is an error")
    vocab_size: int = opt(8000, "sentencepiece vocabulary size (per side when not joint)")
    vocab_type: str = opt("unigram", "sentencepiece model type", choices=["unigram", "bpe"])
    joint_vocab: bool = opt(True, "one vocabulary for both sides (needed for shared embeddings)")
    character_coverage: float = opt(0.9995, "sentencepiece character coverage (0.9995 suits Chinese)")
    vocab_sample: int = opt(1_000_000, "at most this many sentences per side train the vocabulary")
    cache_dir: str = opt(".mt-tune-cache", "where vocabularies and token shards are cached")

    def validate(self, where: str) -> None:
        if isinstance(self.train, str):
            self.train = [self.train]
        if isinstance(self.valid, str):
            self.valid = [self.valid]
        parse_scale(self.scale, f"{where}.scale")
        if self.format == "sample" and self.train:
            raise ConfigError(f"{where}.train: the 'sample' format takes no files, got {self.train}")
        if self.format != "sample" and not self.train:
            raise ConfigError(f"{where}.train: no training files given (or set {where}.format: sample)")
        if len(self.train) > 2 or len(self.valid) > 2:
            raise ConfigError(f"{where}: give one file, or two for a Moses pair")
        _positive(self, where, "valid_size", "max_chars", "vocab_size", "vocab_sample")
        if not 0 < self.max_bad_fraction <= 1:
            raise ConfigError(f"{where}.max_bad_fraction: must be in (0, 1], got {self.max_bad_fraction}")
        if not 0 < self.character_coverage <= 1:
            raise ConfigError(f"{where}.character_coverage: must be in (0, 1], got {self.character_coverage}")
        if self.max_ratio <= 1:
            raise ConfigError(f"{where}.max_ratio: must be > 1, got {self.max_ratio}")

    @property
    def scale_pairs(self) -> int | None:
        return parse_scale(self.scale)


@dataclass
class ModelConfig:
    d_model: int = opt(256, "width of the model (embedding and residual stream)")
    n_heads: int = opt(4, "attention heads; must divide d_model")
    enc_layers: int = opt(3, "encoder layers")
    dec_layers: int = opt(3, "decoder layers")
    ffn_dim: int = opt(1024, "hidden width of the feed-forward blocks")
    dropout: float = opt(0.1, "dropout on embeddings and residual branches")
    attn_dropout: float = opt(0.0, "dropout on attention weights")
    act_dropout: float = opt(0.0, "dropout after the feed-forward activation")
    norm: str = opt("pre", "layer norm placement", ["pre", "post"])
    positions: str = opt("sinusoidal", "position encoding", ["sinusoidal", "learned"])
    max_positions: int = opt(512, "longest sequence (in tokens) the model accepts")
    share_embeddings: bool = opt(True, "one embedding table for source and target (needs a joint vocab)")
    tie_output: bool = opt(True, "output projection shares the target embedding weights")
    grad_checkpointing: bool = opt(False, "recompute each layer's activations in backward to save memory")
    src_vocab_size: int = opt(0, "source vocabulary size (0: taken from the tokenizer)")
    tgt_vocab_size: int = opt(0, "target vocabulary size (0: taken from the tokenizer)")

    def validate(self, where: str) -> None:
        _positive(self, where, "d_model", "n_heads", "enc_layers", "dec_layers", "ffn_dim", "max_positions")
        if self.d_model % self.n_heads:
            raise ConfigError(f"{where}.n_heads: {self.n_heads} does not divide {where}.d_model ({self.d_model})")
        for name in ("dropout", "attn_dropout", "act_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: must be in [0, 1), got {getattr(self, name)}")
        for name in ("src_vocab_size", "tgt_vocab_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name}: must be >= 0 (0: from the tokenizer), got {getattr(self, name)}")
        if (self.share_embeddings and self.src_vocab_size and self.tgt_vocab_size
                and self.src_vocab_size != self.tgt_vocab_size):
            raise ConfigError(f"{where}.share_embeddings: needs src_vocab_size == tgt_vocab_size, "
                              f"got {self.src_vocab_size} and {self.tgt_vocab_size}")


@dataclass
class TrainConfig:
    device: str = opt("auto", "auto (cuda when available, else cpu), cpu, cuda or cuda:N")
    amp: str = opt("auto", "mixed precision: auto is bf16 on GPUs that support it, fp16 with a "
                           "GradScaler on older GPUs, off on CPU", choices=["auto", "off", "bf16", "fp16"])
    compile: bool = opt(False, "torch.compile the model, shape-generic; pads lengths to multiples of 8; "
                               "compiling is left out of the max_minutes pace")
    seed: int = opt(1, "seed for initialisation, dropout and batch order")
    threads: int = opt(0, "CPU threads for torch (0: torch's default)")
    lr: float = opt(1e-3, "peak learning rate, reached at the end of warmup")
    min_lr: float = opt(0.0, "floor of the decayed learning rate")
    warmup_steps: int = opt(400, "linear warmup from 0 to lr over this many updates")
    schedule: str = opt("inverse_sqrt", "decay after warmup: inverse_sqrt, or cosine / linear down to "
                                        "min_lr at the end of the run (max_steps, or the step at which "
                                        "max_minutes is projected to run out, whichever comes first)",
                        choices=["inverse_sqrt", "cosine", "linear"])
    max_steps: int = opt(2000, "stop after this many updates")
    max_minutes: float = opt(0.0, "stop after this much wall time, counted over resumes (0: no limit)")
    max_tokens: int = opt(4096, "padded tokens (source or target, the larger) per micro-batch")
    accum_steps: int = opt(1, "micro-batches per update (gradient accumulation)")
    clip_norm: float = opt(1.0, "gradient clipping by global norm (0: off)")
    ema_decay: float = opt(0.0, "evaluate, keep and translate with an exponential moving average of the "
                                "weights, updated after every update with this decay (0: off; 0.99 averages "
                                "over roughly the last 100 updates)")
    weight_decay: float = opt(0.0, "AdamW weight decay (not applied to norms, biases, embeddings)")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.98, "AdamW beta2")
    eps: float = opt(1e-9, "AdamW epsilon")
    label_smoothing: float = opt(0.1, "label smoothing of the cross-entropy loss")
    eval_every: int = opt(200, "evaluate every this many updates (and at the end)")
    bleu_sentences: int = opt(200, "validation sentences decoded for BLEU/chrF at each evaluation (0: none)")
    eval_beam: int = opt(1, "beam size of the decoding at evaluation (1: greedy)")
    keep_best_by: str = opt("bleu", "which metric picks the kept best checkpoint", choices=list(METRICS))
    log_every: int = opt(50, "log training loss every this many updates")

    def validate(self, where: str) -> None:
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ConfigError(f"{where}.device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")
        _positive(self, where, "lr", "max_steps", "max_tokens", "accum_steps", "eval_every", "log_every",
                  "eval_beam")
        for name in ("min_lr", "warmup_steps", "max_minutes", "clip_norm", "weight_decay", "bleu_sentences",
                     "threads"):
            if not getattr(self, name) >= 0 or getattr(self, name) == math.inf:  # NaN fails >= too
                raise ConfigError(f"{where}.{name}: must be >= 0 and finite, got {getattr(self, name)}")
        if self.min_lr > self.lr:
            raise ConfigError(f"{where}.min_lr: must not exceed lr ({self.lr}), got {self.min_lr}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"{where}.ema_decay: must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"{where}.label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        if self.keep_best_by in ("bleu", "chrf") and self.bleu_sentences == 0:
            raise ConfigError(f"{where}.keep_best_by: {self.keep_best_by} needs {where}.bleu_sentences > 0")


@dataclass
class RunConfig:
    """A training run: the format `mt-tune train` reads and `mt-tune study export` writes."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def _positive(obj: Any, where: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value > 0 or value == math.inf:  # NaN fails `> 0` too
            raise ConfigError(f"{where}.{name}: must be > 0 and finite, got {value}")


# --- generic loading ----------------------------------------------------------------------


def did_you_mean(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(value: Any, tp: Any, where: str, choices: list | None) -> Any:
    """Check (and gently coerce) one value against a field's type annotation."""
    origin = typing.get_origin(tp)
    if tp is Any:
        out = value
    elif tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        out = value
    elif tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        out = value
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        out = float(value)
    elif tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        out = str(value)
    elif origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]", None) for i, v in enumerate(value)]
    elif origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for a in args:
            try:
                return _coerce(value, a, where, choices)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    else:
        out = value
    if choices is not None and out not in choices:
        raise ConfigError(f"{where}: {out!r} is not one of {', '.join(map(str, choices))}"
                          + (did_you_mean(str(out), [str(c) for c in choices]) if isinstance(out, str) else ""))
    return out


def build_section(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping; errors name `where.key` and the valid keys."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(f"{where}.{key}: unknown key{did_you_mean(str(key), list(fields))}. "
                              f"Valid keys: {', '.join(fields)}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}", fields[key].metadata.get("choices"))
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(where)
    return obj


def build_run_config(raw: Any, where: str = "") -> RunConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping with sections data, model, train")
    allowed = set(SECTIONS) | {"provenance"}  # provenance: written by `study export`, informative only
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{where}{key}: unknown section{did_you_mean(str(key), list(allowed))}. "
                              f"Valid sections: {', '.join(sorted(allowed))}")
    parts = {name: build_section(cls, raw.get(name), f"{where}{name}") for name, cls in SECTIONS.items()}
    cfg = RunConfig(**parts)
    check_run_config(cfg)
    return cfg


def check_run_config(cfg: RunConfig) -> None:
    """Checks that span sections."""
    if cfg.model.share_embeddings and not cfg.data.joint_vocab:
        raise ConfigError("model.share_embeddings: needs data.joint_vocab: true (one vocabulary for both sides)")


def to_dict(obj: Any) -> dict:
    """A config (or RunConfig) as plain YAML-ready data."""
    return dataclasses.asdict(obj)


# --- files and overrides ------------------------------------------------------------------


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{p}: invalid YAML{at}: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a YAML mapping at the top level")
    return data


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `key.path=value` overrides (values parsed as YAML scalars) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.path=value")
        key, _, text = item.partition("=")
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r}: empty key")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a training config YAML, apply overrides, validate: the entry of `mt-tune train`."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    try:
        return build_run_config(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
