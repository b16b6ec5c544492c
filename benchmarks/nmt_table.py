"""A table of recorded NMT trainings (Zhang & Duh's NMTHPO / NMTLC format) as a search space.

Read by benchmarks/nmt_tables.py: the grid (one dimension per hyperparameter, those that are
one choice in fact merged), the mt-tune field each dimension is searched on, the trained
configurations, and how trial parameters decode to a configuration's key.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from dataclasses import dataclass
from dataclasses import field as _field
from pathlib import Path

from mt_tune.errors import ConfigError
from mt_tune.search.spec import StudySpec, build_spec

# A plausible mt-tune field for each hyperparameter name the tables use (nothing is trained,
# so a field only names the dimension; num_layers is encoder = decoder, put on the encoder).
FIELDS = {"num_layers": "model.enc_layers", "num_embed": "model.d_model", "model_size": "model.d_model",
          "ff_hidden": "model.ffn_dim", "ff_num_hidden": "model.ffn_dim", "attention_heads": "model.n_heads",
          "initial_lr": "train.lr", "bpe_symbols": "data.vocab_size", "bpe": "data.vocab_size",
          "batch_size": "train.max_tokens"}
# Fields that take any positive integer: a dimension without a plausible field (or whose values
# that field refuses) is searched on one of these, its choices being 1..k (the value's index).
STAND_INS = ["train.seed", "train.log_every", "data.valid_size", "data.max_chars", "model.max_positions",
             "train.accum_steps", "train.eval_beam", "data.vocab_sample", "train.warmup_steps"]
class TableError(Exception):
    """A file that is not a table of this format."""


@dataclass
class Config:
    id: int
    key: tuple  # one value per dimension
    ppl: list[float]
    bleu: list[float] | None  # per checkpoint (fine-tuning tables)
    dev_bleu: float | None  # of the best-perplexity checkpoint (from-scratch tables)
    # Subwords the dev set has under this config's vocabulary, relative to the smallest
    # vocabulary's (1.0 where the vocabulary is not a dimension): ln ppl times this is a loss
    # per unit of text, comparable across vocabularies as mt-tune's val_loss_per_char is.
    relative_length: float = 1.0

    @property
    def credit_at(self) -> int:
        """Checkpoints after which a from-scratch run's dev_bleu exists: its curve's minimum."""
        return self.ppl.index(min(self.ppl)) + 1

    def bleu_after(self, k: int) -> float | None:
        """The trial's BLEU after k checkpoints (None: none yet)."""
        if self.bleu is not None:
            return max(self.bleu[:k]) if k >= 1 else None
        return self.dev_bleu if k >= self.credit_at else None

    def known_at(self, threshold: float) -> int | None:
        """The first checkpoint count after which the trial's BLEU is >= threshold."""
        if self.bleu is not None:
            return next((i + 1 for i, b in enumerate(self.bleu) if b >= threshold), None)
        return self.credit_at if self.dev_bleu >= threshold else None


@dataclass
class Dim:
    names: tuple  # hyperparameters merged into this dimension
    values: list  # tuples, one value per name
    field: str = ""
    choices: list = _field(default_factory=list)


def _sort_key(v: object) -> tuple:
    return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))


def _group(rows: list[dict], names: list[str]) -> list[list[str]]:
    """Hyperparameters that are one choice in fact (fine-tuning's LLM: its width, depth and
    vocabulary come with it) are merged: two groups of which a quarter or more of the joint
    values never occur, where the table would hold each about 5 times over if they were
    independent. A few missing combinations (a region left untrained) keep their dimensions."""
    groups = [[n] for n in names]
    distinct = lambda g: {tuple(r[n] for n in g) for r in rows}  # noqa: E731
    while True:
        best = None
        for a, b in itertools.combinations(range(len(groups)), 2):
            full = len(distinct(groups[a])) * len(distinct(groups[b]))
            ratio = len(distinct(groups[a] + groups[b])) / full
            if ratio <= 0.75 and len(rows) / full >= 5 and (best is None or ratio < best[0]):
                best = (ratio, a, b)
        if best is None:
            return groups
        _, a, b = best
        groups[a] += groups.pop(b)


class Table:
    def __init__(self, path: str | Path):
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TableError(f"{path}: not readable as JSON: {e}") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("configs"), list) or not raw["configs"]:
            raise TableError(f"{path}: expected an object with a non-empty list 'configs'")
        self.path, self.corpus = str(path), str(raw.get("corpus") or Path(path).stem)
        self.every = int(raw.get("checkpoint_every_updates") or 1)
        rows, self.skipped = [], 0
        for i, c in enumerate(raw["configs"]):
            hp = c.get("hyperparams") if isinstance(c, dict) else None
            if not isinstance(hp, dict) or not hp:
                raise TableError(f"{path}: configs[{i}]: no 'hyperparams' mapping")
            curve, bleu = c.get("ppl_curve"), c.get("bleu_curve")
            if not curve:
                self.skipped += 1  # trained, but no curve to replay
                continue
            try:
                ppl = [float(v) for v in curve]
                bleu = [float(v) for v in bleu] if bleu else None
                dev = None if bleu else float(c["dev_bleu"])
            except (KeyError, TypeError, ValueError):
                raise TableError(f"{path}: configs[{i}]: needs a ppl_curve of numbers and a dev_bleu or "
                                 f"a bleu_curve") from None
            if min(ppl) <= 0 or (bleu is not None and len(bleu) != len(ppl)):
                raise TableError(f"{path}: configs[{i}]: perplexities must be > 0 and the bleu_curve as long "
                                 f"as the ppl_curve")
            rows.append((c.get("id", i), hp, ppl, bleu, dev))
        if not rows:
            raise TableError(f"{path}: no config has a ppl_curve")
        kinds = {r[3] is None for r in rows}
        if len(kinds) > 1:
            raise TableError(f"{path}: mixes configs with and without a bleu_curve")
        self.scratch = kinds == {True}
        names = list(dict.fromkeys(n for r in rows for n in r[1]))
        missing = [n for n in names if any(n not in r[1] for r in rows)]
        if missing:
            raise TableError(f"{path}: hyperparameter {missing[0]!r} is missing from some configs")
        varying = [n for n in names if len({json.dumps(r[1][n]) for r in rows}) > 1]
        hps = [r[1] for r in rows]
        self.dims = [Dim(tuple(g), sorted({tuple(h[n] for n in g) for h in hps},
                                          key=lambda t: [_sort_key(v) for v in t]))
                     for g in _group(hps, varying)]
        self.configs, self.by_key = [], {}
        for cid, hp, ppl, bleu, dev in rows:
            key = tuple(tuple(hp[n] for n in d.names) for d in self.dims)
            if key in self.by_key:
                continue  # the same configuration twice: the first is kept
            self.by_key[key] = cfg = Config(len(self.configs), key, ppl, bleu, dev)  # id: its position
            self.configs.append(cfg)
        self.relative_lengths = self._relative_lengths()
        self.stand_in = self._stand_in_fit()
        self.mean_len = statistics.fmean(len(c.ppl) for c in self.configs)
        self.max_len = max(len(c.ppl) for c in self.configs)
        per = [c.bleu_after(len(c.ppl)) for c in self.configs]
        self.best_bleu, self.worst_bleu = max(per), min(per)
        self.grid_size = math.prod(len(d.values) for d in self.dims)
        self._map_fields()

    def _relative_lengths(self) -> dict:
        """The dev set's length in subwords under each vocabulary size, relative to the smallest.
        The tables record perplexity per subword only, and a dev set's subword count is a fact
        of its text and vocabulary, not of the model (mt-tune's trainer counts it). It is
        estimated here from pairs of configurations that differ in the vocabulary alone: their
        total dev log-likelihood (ln ppl x length) is taken as equal, so length(s) / length(s0)
        is the median of ln ppl(s0) / ln ppl(s) over such pairs."""
        vocab = [i for i, d in enumerate(self.dims) if len(d.names) == 1 and FIELDS.get(d.names[0]) == "data.vocab_size"]
        if not self.scratch or not vocab:
            return {}
        v = vocab[0]
        groups: dict = {}
        for c in self.configs:
            groups.setdefault(c.key[:v] + c.key[v + 1:], {})[c.key[v]] = math.log(min(c.ppl))
        sizes = self.dims[v].values
        out = {sizes[0]: 1.0}
        for size in sizes[1:]:
            ratios = [g[sizes[0]] / g[size] for g in groups.values() if sizes[0] in g and size in g and g[size] > 0]
            out[size] = statistics.median(ratios) if ratios else 1.0
        for c in self.configs:
            c.relative_length = out[c.key[v]]
        return {s[0]: round(r, 3) for s, r in out.items()}

    def _stand_in_fit(self) -> tuple[float, float]:
        """(intercept, slope) of the stand-in BLEU a from-scratch checkpoint shows the pruner: only
        the final model's BLEU was recorded, so per checkpoint the replay shows a + b x the loss per
        unit of text, fitted (least squares) to the configurations' dev_bleu against their lowest
        such loss. With b < 0 the median and the patience see the order the loss gives: the fit
        only puts the values in BLEU's units. Where the loss does not predict BLEU, -loss."""
        if not self.scratch:
            return 0.0, -1.0
        losses = [math.log(min(c.ppl)) * c.relative_length for c in self.configs]
        try:
            fit = statistics.linear_regression(losses, [c.dev_bleu for c in self.configs])
        except statistics.StatisticsError:  # one configuration, or all with the same loss
            return 0.0, -1.0
        return (fit.intercept, fit.slope) if fit.slope < 0 else (0.0, -1.0)

    def stand_in_bleu(self, loss_per_text: float) -> float:
        a, b = self.stand_in
        return a + b * loss_per_text

    def base_spec(self) -> dict:
        return {"name": f"nmt-{self.corpus}", "data": {"format": "sample"},
                "train": {"eval_every": self.every, "max_steps": self.max_len * self.every},
                "metric": "bleu"}  # mt-tune's default metric

    def _map_fields(self) -> None:
        """Each dimension on its plausible field if the spec accepts its values there, else on
        a stand-in field with the values' indices."""
        search: dict = {}
        for d in self.dims:
            plain = [v[0] for v in d.values] if len(d.names) == 1 else None
            tries = [(FIELDS[d.names[0]], plain)] if plain and d.names[0] in FIELDS else []
            tries += [(f, list(range(1, len(d.values) + 1))) for f in STAND_INS]
            for path, choices in tries:
                if path in search:
                    continue
                try:
                    build_spec(dict(self.base_spec(), search={**search, path: {"type": "categorical",
                                                                               "choices": choices}}),
                               check_files=False)
                except ConfigError:
                    continue
                d.field, d.choices = path, choices
                search[path] = {"type": "categorical", "choices": choices}
                break
            else:
                raise TableError(f"{self.path}: more hyperparameters than fields to search them on")
        self.search = search

    def spec(self, sections: dict, seed: int, budget: float, sets: dict) -> StudySpec:
        """The study's spec: the table's space, `sections` (sampler, pruner, stopping) over the
        defaults, then `sets` ("section.key": value)."""
        raw = dict(self.base_spec(), search=self.search, budget={"trials": max(1, round(budget))})
        for section, values in sections.items():
            raw[section] = dict(values)
        raw.setdefault("sampler", {})["seed"] = seed
        for key, value in sets.items():
            section, _, name = key.partition(".")
            raw.setdefault(section, {})[name] = value
        return build_spec(raw, check_files=False)

    def decode(self, params: dict) -> tuple:
        return tuple(d.values[d.choices.index(params[d.field])] for d in self.dims)
