"""Study specs: the YAML that says what to search, how to rank trials and when to stop them.

A spec is validated completely before anything is written to a storage; every failure is a
ConfigError that names the key. The validated spec is stored as JSON in the study's user
attrs ("spec"), so a worker anywhere needs only the study name and the storage URL.

    name: demo
    data: {format: sample, scale: 1k}
    model: {d_model: 128}
    train: {max_steps: 1200}
    search:
      train.lr: {type: float, low: 1.0e-4, high: 2.0e-3, log: true}
      model.n_heads: {type: categorical, choices: [4, 8], when: {model.d_model: 256}}
    search_start: [{train.lr: 1.5e-3, model.d_model: 256, model.n_heads: 4}]   # tried first
    metric: bleu
    sampler: {type: tpe, seed: 1}
    pruner: {type: median}
    stopping: {patience: 3}
    budget: {trials: 12, max_steps: 1200, max_minutes: 3}
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mt_tune.config import (
    METRICS,
    SECTIONS,
    TRANSLATION_METRICS,
    RunConfig,
    apply_overrides,
    build_run_config,
    build_section,
    did_you_mean,
    opt,
    parse_scale,
    read_yaml,
)
from mt_tune.errors import ConfigError
from mt_tune.search.space import Dimension, check_space, parse_space, possible_values, sample, split_search_overrides
from mt_tune.search.warmstart import parse_search_start


# Data settings that change the tokenization: a loss per subword is not comparable across them.
TOKENIZATION_FIELDS = ("vocab_size", "vocab_type", "joint_vocab", "character_coverage", "vocab_sample", "nfkc")

TOP_KEYS = ["name", "data", "model", "train", "search", "search_start", "metric", "direction", "sampler",
            "pruner", "stopping", "budget", "storage"]


# --- the small sections: built and checked by config.build_section ------------------------


@dataclass
class SamplerSpec:
    type: str = opt("tpe", "how trials pick their parameters", choices=["tpe", "random", "gp", "cmaes"])
    seed: int | None = opt(1, "sampler seed (null: not reproducible)")
    n_startup_trials: int | None = opt(None, "random trials before the model-based sampler takes over "
                                             "(null: a third of budget.trials, at least 2, at most 10)")

    def validate(self, where: str) -> None:
        if self.n_startup_trials is not None:
            _at_least(self, where, 0, "n_startup_trials")


@dataclass
class PrunerSpec:
    type: str = opt("median", "ranking pruner: stops trials worse than their peers at the same step",
                    choices=["median", "successive_halving", "hyperband", "none"])
    n_startup_trials: int = opt(3, "median: trials that run to their end before any is pruned")
    n_warmup_evals: int = opt(2, "median: evaluations of a trial before it can be pruned")
    warmup_fraction: float = opt(0.1, "median: the warm-up grows with the runs: no pruning before a "
                                      "trial has run this fraction of the steps of the study's median "
                                      "complete trial")
    patience: int | None = opt(1, "median: a trial below the median is pruned only once it has stopped "
                                  "improving: no new best of its own in its last patience + 1 evaluations "
                                  "(Optuna's PatientPruner; null: pruned at once)")
    min_resource_evals: int = opt(1, "successive_halving / hyperband: evaluations in the first rung")
    reduction_factor: int = opt(3, "successive_halving / hyperband: 1/N of the trials go on at each rung")

    def validate(self, where: str) -> None:
        _at_least(self, where, 0, "n_startup_trials", "n_warmup_evals")
        _at_least(self, where, 1, "min_resource_evals")
        _at_least(self, where, 2, "reduction_factor")
        _fraction(self, where, "warmup_fraction")
        if self.patience is not None:
            _at_least(self, where, 0, "patience")


@dataclass
class StoppingSpec:
    patience: int = opt(1, "evaluations without improvement before a trial stops as diverged, early in "
                           "the run (patience_fraction takes over later)")
    patience_fraction: float = opt(0.2, "the patience grows with the run: at least this fraction of the "
                                        "evaluations so far (0: a fixed patience)")
    min_delta: float = opt(0.0, "an improvement must exceed this (loss in nats, BLEU/chrF in points)")
    divergence_on: str = opt("both", "stop when neither loss nor translation metric improves (both), "
                                     "only the loss stalls (loss), only the metric stalls (metric), or never (none)",
                             choices=["both", "loss", "metric", "none"])
    on_divergence: str = opt("complete", "a diverged trial completes with its best value, or is marked pruned",
                             choices=["complete", "prune"])

    def validate(self, where: str) -> None:
        _at_least(self, where, 1, "patience")
        _at_least(self, where, 0, "min_delta")
        _fraction(self, where, "patience_fraction")


@dataclass
class BudgetSpec:
    trials: int = opt(12, "total trials of the study, across all workers")
    max_steps: int = opt(0, "updates per trial (0: train.max_steps)")
    max_minutes: float = opt(0.0, "wall time per trial (0: train.max_minutes)")
    max_consecutive_failures: int = opt(3, "a worker stops (exit 1) after this many FAIL trials in a row: "
                                           "a systematic error must not spend the whole budget")

    def validate(self, where: str) -> None:
        _at_least(self, where, 1, "trials", "max_consecutive_failures")
        _at_least(self, where, 0, "max_steps", "max_minutes")


def _at_least(obj: Any, where: str, minimum: float, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < minimum:
            raise ConfigError(f"{where}.{name}: must be >= {minimum}, got {getattr(obj, name)}")


def _fraction(obj: Any, where: str, name: str) -> None:
    if not 0 <= getattr(obj, name) < 1:
        raise ConfigError(f"{where}.{name}: must be in [0, 1), got {getattr(obj, name)}")


# --- the spec -----------------------------------------------------------------------------


@dataclass
class StudySpec:
    name: str
    data: dict
    model: dict
    train: dict
    search: list[Dimension]
    metric: str
    direction: str
    sampler: SamplerSpec
    pruner: PrunerSpec
    stopping: StoppingSpec
    budget: BudgetSpec
    storage: str | None = None  # never stored in the study (it may hold a password)
    search_start: list[dict] = field(default_factory=list)  # tried first, in order (warmstart.py)

    @property
    def scale(self) -> int | None:
        return parse_scale(self.data.get("scale", "full"))

    @property
    def has_conditions(self) -> bool:
        return any(d.when for d in self.search)

    @property
    def translation_metric(self) -> str | None:
        """The translation metric every evaluation computes: the study's metric, else BLEU."""
        if self.fixed("train.bleu_sentences") == 0:
            return None
        return self.metric if self.metric in TRANSLATION_METRICS else "bleu"

    def fixed(self, path: str) -> Any:
        """The value a field has when it is not sampled: from the spec, else the default."""
        section, _, name = path.partition(".")
        raw = getattr(self, section)
        if name in raw:
            return raw[name]
        return getattr(SECTIONS[section](), name)

    def suggest(self, trial: Any) -> dict:
        """Sample this trial's parameters; a conditional dimension only where its condition holds."""
        return sample(self.search, trial, self.fixed)

    def run_config(self, params: dict | None = None) -> RunConfig:
        """Fixed values + sampled params + budget limits -> a validated RunConfig."""
        raw = {"data": copy.deepcopy(self.data), "model": copy.deepcopy(self.model),
               "train": copy.deepcopy(self.train)}
        for path, value in (params or {}).items():
            section, _, name = path.partition(".")
            if section not in raw:
                raise ConfigError(f"parameter {path}: names no config field")
            raw[section][name] = value
        if self.budget.max_steps:
            raw["train"]["max_steps"] = self.budget.max_steps
        if self.budget.max_minutes:
            raw["train"]["max_minutes"] = self.budget.max_minutes
        raw["train"]["keep_best_by"] = self.metric
        return build_run_config(raw)

    def to_dict(self) -> dict:
        """JSON-safe; what the study stores. The storage URL is left out (it may hold a password)."""
        return {
            "name": self.name,
            "data": copy.deepcopy(self.data),
            "model": copy.deepcopy(self.model),
            "train": copy.deepcopy(self.train),
            "search": {d.path: d.to_dict() for d in self.search},
            "metric": self.metric,
            "direction": self.direction,
            "sampler": dataclasses.asdict(self.sampler),
            "pruner": dataclasses.asdict(self.pruner),
            "stopping": dataclasses.asdict(self.stopping),
            "budget": dataclasses.asdict(self.budget),
            # Left out when empty: specs stored before warm starts existed compare equal.
            **({"search_start": copy.deepcopy(self.search_start)} if self.search_start else {}),
        }

    @classmethod
    def from_dict(cls, d: dict, check_files: bool = False) -> StudySpec:
        return build_spec(copy.deepcopy(d), check_files=check_files)


def build_spec(raw: Any, check_files: bool = True) -> StudySpec:
    """Validate a spec mapping completely; a ConfigError names the first bad key."""
    if not isinstance(raw, dict):
        raise ConfigError("expected a mapping with name, data, model, train, search, metric, ...")
    for key in raw:
        if key not in TOP_KEYS:
            raise ConfigError(f"{key}: unknown key{did_you_mean(str(key), TOP_KEYS)}. Valid keys: {', '.join(TOP_KEYS)}")
    name = raw.get("name", "")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"name: expected a non-empty study name, got {name!r}")
    sections = {}
    for section in SECTIONS:
        value = raw.get(section) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{section}: expected a mapping of settings, got {value!r}")
        sections[section] = value

    search = parse_space(raw.get("search"))

    metric = raw.get("metric", "bleu")
    if metric not in METRICS:
        raise ConfigError(f"metric: {metric!r} is not one of {', '.join(METRICS)}{did_you_mean(str(metric), list(METRICS))}")
    direction = raw.get("direction", METRICS[metric])
    if direction not in ("minimize", "maximize"):
        raise ConfigError(f"direction: {direction!r} is not one of minimize, maximize")
    if direction != METRICS[metric]:
        raise ConfigError(f"direction: {metric} is better when it is {'lower' if METRICS[metric] == 'minimize' else 'higher'}; "
                          f"direction must be {METRICS[metric]} (or left out), got {direction}")
    storage = raw.get("storage")
    if storage is not None and (not isinstance(storage, str) or not storage.strip()):
        raise ConfigError(f"storage: expected a storage URL or null, got {storage!r}")

    spec = StudySpec(
        name=name.strip(), data=sections["data"], model=sections["model"], train=sections["train"],
        search=search, metric=metric, direction=direction,
        sampler=build_section(SamplerSpec, raw.get("sampler"), "sampler"),
        pruner=build_section(PrunerSpec, raw.get("pruner"), "pruner"),
        stopping=build_section(StoppingSpec, raw.get("stopping"), "stopping"),
        budget=build_section(BudgetSpec, raw.get("budget"), "budget"),
        storage=storage,
    )
    _check_spec(spec, check_files)
    spec.search_start = parse_search_start(raw.get("search_start"), spec)  # needs the checked space
    return spec


def _check_spec(spec: StudySpec, check_files: bool) -> None:
    # Checked first: run_config() sets train.keep_best_by to the metric, whose own check is vaguer.
    if spec.metric in TRANSLATION_METRICS and 0 in possible_values(spec.search, "train.bleu_sentences", spec.fixed):
        raise ConfigError(f"metric: {spec.metric} is computed on train.bleu_sentences validation sentences at "
                          f"each evaluation; set train.bleu_sentences > 0")
    # The fixed values alone must make a valid run (this also checks every key and type).
    spec.run_config({})
    check_space(spec.search, {"data": spec.data, "model": spec.model, "train": spec.train}, spec.fixed)

    if spec.stopping.divergence_on == "metric" and spec.translation_metric is None:
        raise ConfigError("stopping.divergence_on: metric needs a translation metric; set train.bleu_sentences > 0")
    if spec.metric == "val_loss":
        for dim in spec.search:
            section, _, name = dim.path.partition(".")
            if section == "data" and name in TOKENIZATION_FIELDS:
                raise ConfigError(f"search.{dim.path}: changes the tokenization, so val_loss (per subword) is not "
                                  f"comparable across trials; use metric: val_loss_per_char, bleu or chrf")
    if spec.pruner.type != "none" and any(d.path == "train.eval_every" for d in spec.search):
        raise ConfigError("search.train.eval_every: a pruner compares trials at the same steps; "
                          "keep eval_every fixed or set pruner.type: none")
    if check_files:
        for key in ("train", "valid"):
            files = spec.data.get(key) or []
            for i, f in enumerate([files] if isinstance(files, str) else files):
                if not Path(f).is_file():
                    raise ConfigError(f"data.{key}[{i}]: {f}: no such file")


def load_spec(path: str | Path, overrides: list[str] | None = None) -> StudySpec:
    """Read a spec YAML, apply overrides, validate everything; ConfigError names file and key."""
    raw = read_yaml(path)
    if _is_training_config(raw):
        raise ConfigError(f"{path} is a training config (no search: section); a study spec needs a search: "
                          f"section — see studies/demo.yaml")
    try:
        rest = split_search_overrides(raw, overrides or [])
        apply_overrides(raw, rest)
        return build_spec(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _is_training_config(raw: dict) -> bool:
    """Sections of a training config (what `mt-tune train` reads, `study export` writes) and
    nothing of a study spec: given where a spec is expected, it would fail on a missing name."""
    return bool(set(raw) & set(SECTIONS)) and set(raw) <= {*SECTIONS, "provenance"}


def spec_from_study(study: Any) -> StudySpec:
    """The spec a study was created with (stored in its user attrs)."""
    stored = study.user_attrs.get("spec")
    if not isinstance(stored, dict):
        raise ConfigError(f"study {study.study_name}: has no mt-tune spec (was it made with `mt-tune study create`?)")
    return StudySpec.from_dict(stored)

