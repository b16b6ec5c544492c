"""The search space of a study: the `search:` section of a spec, its grammar and its checks.

    search:
      train.lr: {type: float, low: 1.0e-4, high: 2.0e-3, log: true}
      model.n_heads: {type: categorical, choices: [4, 8], when: {model.d_model: 256}}

Each "section.field" path maps to a distribution, a Dimension, sampled under that path in
Optuna; `when:` samples it only where other fields (fixed, or searched above it) have the given
values. parse_space checks each dimension on its own; check_space checks the space against the
spec's fixed values, over every combination the search can sample. `search.<section>.<field>`
overrides on the command line edit the space before it is parsed (split_search_overrides).
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mt_tune.config import SECTIONS, _coerce, apply_overrides, build_section, did_you_mean
from mt_tune.errors import ConfigError

# Fields the study itself sets, or that cannot be a single sampled value.
NOT_SEARCHABLE = {
    "data.train": "corpus files are fixed for a study",
    "data.valid": "the validation set is fixed for a study",
    "data.format": "corpus files are fixed for a study",
    "data.scale": "the scale is a property of the study (promotion changes it)",
    "data.cache_dir": "it changes where data is cached, not the model",
    "train.device": "the worker picks the device",
    "train.keep_best_by": "it is set from the spec's metric",
    "train.max_steps": "set it in budget.max_steps",
    "train.max_minutes": "set it in budget.max_minutes",
}


@dataclass
class Dimension:
    """One searched field: `path` is "section.field", sampled under that name in Optuna."""

    path: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list = field(default_factory=list)
    when: dict[str, list] = field(default_factory=dict)  # path -> values for which it is sampled

    def suggest(self, trial: Any) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.path, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.path, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))
        return trial.suggest_categorical(self.path, self.choices)

    def values(self, limit: int = 10_000) -> list:
        """Every value it can take (ranges: the bounds only when there are too many)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            step = int(self.step or 1)
            n = (int(self.high) - int(self.low)) // step + 1
            if n <= limit:
                return list(range(int(self.low), int(self.high) + 1, step))
        return [self.low, self.high]

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"type": self.type}
        if self.type == "categorical":
            d["choices"] = list(self.choices)
        else:
            d.update(low=self.low, high=self.high, log=self.log)
            if self.step is not None:
                d["step"] = self.step
        if self.when:
            d["when"] = {k: list(v) for k, v in self.when.items()}
        return d


_DIM_KEYS = ["type", "low", "high", "log", "step", "choices", "when"]


def _field_info(path: str, where: str) -> tuple[str, dataclasses.Field, Any]:
    """(section, field, type annotation) for "section.field", or a ConfigError naming `where`."""
    section, _, name = path.partition(".")
    if section not in SECTIONS:
        raise ConfigError(f"{where}: '{path}' names no config field; use section.field with a section "
                          f"of {', '.join(SECTIONS)}{did_you_mean(section, list(SECTIONS))}")
    cls = SECTIONS[section]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields:
        raise ConfigError(f"{where}: '{path}' names no config field{did_you_mean(name, list(fields))}. "
                          f"Fields of {section}: {', '.join(fields)}")
    return section, fields[name], typing.get_type_hints(cls)[name]


def _number(value: Any, where: str) -> float:
    return _coerce(value, float, where, None)


def parse_space(raw: Any) -> list[Dimension]:
    """The dimensions of a spec's `search:` mapping, in its order (conditions look upward)."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"search: expected a mapping of field path -> distribution, got {raw!r}")
    paths = [str(p) for p in raw]
    return [parse_dimension(path, dim_raw, paths[:i], paths[i + 1:]) for i, (path, dim_raw) in enumerate(raw.items())]


def parse_dimension(path: Any, raw: Any, earlier: list[str], later: list[str]) -> Dimension:
    where = f"search.{path}"
    if not isinstance(path, str):
        raise ConfigError(f"search: keys are field paths like train.lr, got {path!r}")
    _section, fld, tp = _field_info(path, where)
    if path in NOT_SEARCHABLE:
        raise ConfigError(f"{where}: cannot be searched: {NOT_SEARCHABLE[path]}")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping like {{type: float, low: 1.0e-4, high: 1.0e-3}}, got {raw!r}")
    for key in raw:
        if key not in _DIM_KEYS:
            raise ConfigError(f"{where}.{key}: unknown key{did_you_mean(str(key), _DIM_KEYS)}. "
                              f"Valid keys: {', '.join(_DIM_KEYS)}")
    kind = raw.get("type")
    if kind not in ("float", "int", "categorical"):
        raise ConfigError(f"{where}.type: {kind!r} is not one of float, int, categorical"
                          + (did_you_mean(str(kind), ["float", "int", "categorical"]) if kind else ""))
    dim = Dimension(path=path, type=kind)
    if kind == "categorical":
        for key in ("low", "high", "log", "step"):
            if key in raw:
                raise ConfigError(f"{where}.{key}: a categorical dimension takes only choices")
        choices = raw.get("choices")
        if not isinstance(choices, list):
            raise ConfigError(f"{where}.choices: expected a list of values, got {choices!r}")
        if not choices:
            raise ConfigError(f"{where}.choices: empty; give at least one value")
        for i, c in enumerate(choices):
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise ConfigError(f"{where}.choices[{i}]: expected a single value, got {c!r}")
        dim.choices = [_coerce(c, tp, f"{where}.choices[{i}]", fld.metadata.get("choices"))
                       for i, c in enumerate(choices)]
        if len(set(map(repr, dim.choices))) != len(dim.choices):
            raise ConfigError(f"{where}.choices: {choices} has duplicates")
    else:
        if "choices" in raw:
            raise ConfigError(f"{where}.choices: only categorical dimensions take choices (type is {kind})")
        for key in ("low", "high"):
            if key not in raw:
                raise ConfigError(f"{where}.{key}: missing; a {kind} dimension needs low and high")
        dim.low, dim.high = _number(raw["low"], f"{where}.low"), _number(raw["high"], f"{where}.high")
        dim.log = _coerce(raw.get("log", False), bool, f"{where}.log", None)
        if raw.get("step") is not None:
            dim.step = _number(raw["step"], f"{where}.step")
            if dim.step <= 0:
                raise ConfigError(f"{where}.step: must be > 0, got {raw['step']!r}")
            if dim.log:
                raise ConfigError(f"{where}.step: cannot be combined with log: true")
        if dim.low >= dim.high:
            raise ConfigError(f"{where}: low ({raw['low']}) must be below high ({raw['high']})")
        if dim.log and dim.low <= 0:
            raise ConfigError(f"{where}.low: log: true needs low > 0, got {raw['low']}")
        if kind == "int":
            for key in ("low", "high", "step"):
                value = getattr(dim, key)
                if value is not None and not float(value).is_integer():
                    raise ConfigError(f"{where}.{key}: an int dimension needs integers, got {raw[key]!r}")
            dim.low, dim.high = int(dim.low), int(dim.high)
            dim.step = int(dim.step) if dim.step is not None else None
        allowed = (int, float) if kind == "int" else (float,)
        if tp not in allowed:
            hint = "int or categorical" if tp is int else "categorical"
            raise ConfigError(f"{where}.type: {path} takes {getattr(tp, '__name__', tp)} values; use type: {hint}")
    dim.when = _parse_condition(raw.get("when"), where, path, earlier, later)
    return dim


def _parse_condition(raw: Any, where: str, path: str, earlier: list[str], later: list[str]) -> dict[str, list]:
    """`when: {other.field: value or [values]}`: `other` is fixed, or searched above this one,
    so that sampling in spec order always knows its value."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}.when: expected a mapping like {{model.d_model: 256}}, got {raw!r}")
    out = {}
    for other, values in raw.items():
        w = f"{where}.when.{other}"
        _section, fld, tp = _field_info(str(other), w)
        if other == path:
            raise ConfigError(f"{w}: a dimension cannot depend on itself")
        if other in later:
            raise ConfigError(f"{w}: {other} is searched below {path}; list it above to use it in a condition")
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ConfigError(f"{w}: empty list of values")
        out[str(other)] = [_coerce(v, tp, f"{w}", fld.metadata.get("choices")) for v in values]
    return out


# --- the space as a whole -------------------------------------------------------------------

# `fixed(path)`: the value a field has where it is not sampled (the spec's, else the default).
Fixed = Callable[[str], Any]


def sample(space: list[Dimension], trial: Any, fixed: Fixed) -> dict:
    """One trial's parameters; a conditional dimension only where its condition holds."""
    params: dict[str, Any] = {}
    for dim in space:
        if all(params.get(p, fixed(p)) in vals for p, vals in dim.when.items()):
            params[dim.path] = dim.suggest(trial)
    return params


def possible_values(space: list[Dimension], path: str, fixed: Fixed) -> list:
    """Values a field can take in some trial: the sampled ones, plus the fixed one unless always sampled."""
    for dim in space:
        if dim.path == path:
            return dim.values() + ([fixed(path)] if dim.when else [])
    return [fixed(path)]


def check_space(space: list[Dimension], sections: dict[str, dict], fixed: Fixed) -> None:
    """Every value each dimension can take is valid for its field, and every combination of
    width and heads the search can sample divides; `sections`: the spec's fixed data, model
    and train mappings."""
    for dim in space:
        _check_values(dim, sections)
    _check_heads_divide_width(space, fixed)


def _check_values(dim: Dimension, sections: dict[str, dict]) -> None:
    section, _, name = dim.path.partition(".")
    base = copy.deepcopy(sections[section])
    for value in dim.values(limit=64):
        raw = dict(base, **{name: value})
        if section == "model":
            # Heads dividing the width is checked over all combinations below; here each value
            # is checked on its own, paired with a width/heads that always fits.
            if name == "n_heads":
                raw["d_model"] = int(value) * 8 if isinstance(value, int) and value > 0 else raw.get("d_model", 256)
            elif name == "d_model":
                raw["n_heads"] = 1
        try:
            build_section(SECTIONS[section], raw, section)
        except ConfigError as e:
            raise ConfigError(f"search.{dim.path}: value {value!r} is not valid: {e}") from None


def _check_heads_divide_width(space: list[Dimension], fixed: Fixed) -> None:
    dims = {d.path: d for d in space}
    width, heads = dims.get("model.d_model"), dims.get("model.n_heads")
    if width is None and heads is None:
        return  # the fixed model section was validated already
    for d in possible_values(space, "model.d_model", fixed):
        for h in _possible_heads(heads, d, fixed):
            if isinstance(d, (int, float)) and isinstance(h, (int, float)) and h > 0 and d % h:
                raise ConfigError(f"search: model.n_heads {h} does not divide model.d_model {d}, a combination the "
                                  f"search can sample; change the choices or add a condition (when:)")


def _possible_heads(heads: Dimension | None, d_model: Any, fixed: Fixed) -> list:
    if heads is None:
        return [fixed("model.n_heads")]
    if not heads.when:
        return heads.values()
    if "model.d_model" in heads.when and d_model not in heads.when["model.d_model"]:
        return [fixed("model.n_heads")]
    if set(heads.when) == {"model.d_model"}:
        return heads.values()
    return heads.values() + [fixed("model.n_heads")]  # other conditions may or may not hold


# --- overrides --------------------------------------------------------------------------------


def split_search_overrides(raw: dict, overrides: list[str]) -> list[str]:
    """Apply `search.<section>.<field>[.<key>]=value` overrides (the path itself has a dot) to a
    spec mapping, in place; return the others for config.apply_overrides.
    `search.train.lr=null` removes a dimension; `search.model.n_heads.when.model.d_model=256`
    sets a condition."""
    rest = []
    for item in overrides:
        key, eq, text = item.partition("=")
        parts = key.strip().split(".")
        if not eq or parts[0] != "search" or len(parts) < 3:
            rest.append(item)
            continue
        path, sub = ".".join(parts[1:3]), parts[3:]
        value = apply_overrides({}, [f"v={text}"])["v"]
        search = raw.setdefault("search", {})
        if not isinstance(search, dict):
            raise ConfigError(f"override {item!r}: search is not a mapping")
        if not sub:
            if value is None:
                search.pop(path, None)
            else:
                search[path] = value
            continue
        node = search.setdefault(path, {})
        if sub[0] == "when" and len(sub) > 1:
            node.setdefault("when", {})[".".join(sub[1:])] = value
        elif len(sub) == 1:
            node[sub[0]] = value
        else:
            raise ConfigError(f"override {item!r}: expected search.section.field.key=value")
    return rest
