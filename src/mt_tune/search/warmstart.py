"""Warm start: configurations a study tries first, before its sampler picks any.

A spec's `search_start:` lists them, each a mapping of searched fields to values:

    search_start:
      - {train.lr: 1.5e-3, model.d_model: 256, model.dropout: 0.2}   # e.g. a known baseline
      - {train.lr: 5.0e-4}                 # fields left out are sampled as in any trial

`mt-tune study create SPEC --start-from CONFIG.yaml` appends one more, read from a training
config (the values it gives the spec's searched fields). They are enqueued in that order when
the study is created (Optuna's enqueue_trial, skip_if_exists) and count toward the budget like
any trial; workers pop queued trials atomically, so each runs once.

Every value must be one the search itself could sample: inside its range, on its step grid,
among its choices. A conditional dimension (`when:`) takes a value only where its condition
holds for the entry's own values (or the fixed ones), exactly as StudySpec.suggest samples it.
In `search_start:` a value where the condition does not hold is refused (it would be ignored);
from a training config, which sets every field, it is dropped and the trial keeps the spec's
fixed value, as a sampled trial would.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mt_tune.config import SECTIONS, _coerce, did_you_mean, load_run_config
from mt_tune.errors import ConfigError
from mt_tune.search.space import NOT_SEARCHABLE, Dimension

if TYPE_CHECKING:  # spec.py imports this module
    from mt_tune.search.spec import StudySpec


def parse_search_start(raw: Any, spec: StudySpec) -> list[dict]:
    """The validated `search_start:` entries: {path: value} in the spec's search order."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"search_start: expected a list of configurations like [{{train.lr: 1.0e-3}}], got {raw!r}")
    entries: list[dict] = []
    for i, entry in enumerate(raw):
        where = f"search_start[{i}]"
        if not isinstance(entry, dict) or not entry:
            raise ConfigError(f"{where}: expected a mapping of searched field -> value like "
                              f"{{train.lr: 1.0e-3}}, got {entry!r}")
        params, _ = check_start(entry, spec, lambda key, w=where: f"{w}.{key}", where)
        if params in entries:
            raise ConfigError(f"{where}: the same configuration as search_start[{entries.index(params)}]")
        entries.append(params)
    _check_budget(len(entries), spec, "search_start")
    return entries


def check_start(entry: dict, spec: StudySpec, at: typing.Callable[[str], str], where: str,
                drop_unsampled: bool = False) -> tuple[dict, list[str]]:
    """(params, dropped paths) for one start configuration; `at(path)` names a key in errors.
    With drop_unsampled, values of conditional dimensions whose condition fails are dropped
    instead of refused."""
    dims = {d.path: d for d in spec.search}
    for key in entry:
        if key not in dims:
            section, _, name = str(key).partition(".")
            known = section in SECTIONS and name in {f.name for f in dataclasses.fields(SECTIONS[section])}
            hint = " (its value is fixed in this spec)" if known else did_you_mean(str(key), list(dims))
            raise ConfigError(f"{at(str(key))}: not a searched field{hint}; searched: {', '.join(dims)}")
    values = {path: _value(dims[path], v, at(path)) for path, v in entry.items()}

    params: dict[str, Any] = {}
    dropped: list[str] = []
    unknown: set[str] = set()  # searched fields this entry leaves to the sampler (maybe unsampled)
    for dim in spec.search:
        # As StudySpec.suggest: a field searched above and not sampled keeps its fixed value.
        seen = [(p, params.get(p, spec.fixed(p)), vals) for p, vals in dim.when.items() if p not in unknown]
        failed = next(((p, v, vals) for p, v, vals in seen if v not in vals), None)
        open_ = [p for p in dim.when if p in unknown]
        given = dim.path in values
        if failed is not None:
            if given and drop_unsampled:
                dropped.append(dim.path)
            elif given:
                p, v, vals = failed
                raise ConfigError(f"{at(dim.path)}: not sampled when {p} is {v!r} (only when {p} is "
                                  f"{' or '.join(map(repr, vals))}); leave it out or change {p}")
        elif open_ and given:
            p = open_[0]
            raise ConfigError(f"{at(dim.path)}: sampled only when {p} is {' or '.join(map(repr, dim.when[p]))}, "
                              f"and {p} is left to the sampler here; give {p} too")
        elif given:
            params[dim.path] = values[dim.path]
        else:
            unknown.add(dim.path)
    try:
        spec.run_config(params)  # the combination with the fixed values, as a trial builds it
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return params, dropped


def _value(dim: Dimension, value: Any, where: str) -> Any:
    """`value` as the search would sample it for `dim`, or a ConfigError naming the range."""
    section, _, name = dim.path.partition(".")
    cls = SECTIONS[section]
    if dim.type == "categorical":
        value = _coerce(value, typing.get_type_hints(cls)[name], where, None)
        for choice in dim.choices:  # the choice itself, so the trial's param is exactly it
            if choice == value and isinstance(choice, bool) == isinstance(value, bool):
                return choice
        raise ConfigError(f"{where}: {value!r} is not one of the choices {', '.join(map(repr, dim.choices))}")
    if dim.type == "int":
        value = _coerce(value, int, where, None)
    else:
        value = _coerce(value, float, where, None)
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    if dim.log and value <= 0:
        raise ConfigError(f"{where}: {_show(value)} is not > 0, as a log-scale dimension needs; "
                          f"the range is [{_show(dim.low)}, {_show(dim.high)}]")
    if not dim.low <= value <= dim.high:
        raise ConfigError(f"{where}: {_show(value)} is outside [{_show(dim.low)}, {_show(dim.high)}]")
    step = dim.step or (1 if dim.type == "int" else None)
    if step is not None:
        k = (value - dim.low) / step
        if abs(k - round(k)) > 1e-8:
            grid = [_show(dim.low + i * step) for i in range(3)]
            raise ConfigError(f"{where}: {_show(value)} is not on the grid {', '.join(grid)}, ... "
                              f"(low {_show(dim.low)}, step {_show(step)})")
    return value


def _show(x: float) -> str:
    short = f"{x:g}"
    return short if float(short) == x else repr(x)


def _check_budget(n: int, spec: StudySpec, where: str) -> None:
    if n > spec.budget.trials:
        raise ConfigError(f"{where}: {n} start configurations but budget.trials is {spec.budget.trials}; "
                          f"each one is a trial of the budget")


# --- --start-from CONFIG.yaml -------------------------------------------------------------


@dataclass
class StartFrom:
    """What `--start-from` added: its index in spec.search_start (or the entry it repeats)."""

    params: dict
    index: int
    duplicate: bool
    dropped: list[str] = field(default_factory=list)  # conditional fields not sampled for it
    differences: list[str] = field(default_factory=list)  # "path: config value -> study's fixed value"


def add_start_from(spec: StudySpec, path: str | Path) -> StartFrom:
    """Append the start configuration read from training config `path` to spec.search_start:
    the values `mt-tune train path` would give the spec's searched fields."""
    where = f"--start-from {path}"
    try:
        cfg = load_run_config(path)  # a complete, validated training config (defaults filled in)
    except ConfigError as e:
        raise ConfigError(f"--start-from: {e}") from None
    entry = {d.path: getattr(getattr(cfg, d.path.partition(".")[0]), d.path.partition(".")[2]) for d in spec.search}
    if not entry:
        raise ConfigError(f"{where}: the spec searches no field, so there is nothing to start from")
    params, dropped = check_start(entry, spec, lambda key: f"{where}: {key}", where, drop_unsampled=True)
    # What the trial runs with where the config says otherwise: the spec's fixed values win.
    trial = spec.run_config(params)
    differences = []
    for section in SECTIONS:
        for f in dataclasses.fields(SECTIONS[section]):
            p = f"{section}.{f.name}"
            ours, theirs = getattr(getattr(trial, section), f.name), getattr(getattr(cfg, section), f.name)
            if p not in NOT_SEARCHABLE and ours != theirs:  # the study sets those itself
                differences.append(f"{p}: {theirs!r} -> {ours!r}")
    if params in spec.search_start:
        return StartFrom(params, spec.search_start.index(params), True, dropped, differences)
    _check_budget(len(spec.search_start) + 1, spec, where)
    spec.search_start.append(params)
    return StartFrom(params, len(spec.search_start) - 1, False, dropped, differences)
