"""The largest and the smallest configuration a study's search space can sample, for `mt-tune
estimate SPEC`: their parameter counts and peak training memory, known before a search starts.

Only the searched fields that change a configuration's size (memory.ESTIMATE_INPUTS) matter,
plus the fields their `when:` conditions look at. Size grows with each numeric field (layers,
widths, max_tokens, vocabulary, dropout > 0), so a numeric range contributes its two bounds;
choices contribute every choice, and so do d_model and n_heads, whose combinations must divide.
Every combination of those values is made into a configuration the way a trial would sample it
(a conditional field takes its fixed value where its condition does not hold) and estimated;
combinations that are not valid configurations are never sampled and are skipped.
"""

from __future__ import annotations

import itertools
from typing import Any

from mt_tune.errors import ConfigError
from mt_tune.memory import ESTIMATE_INPUTS, estimate_run

_ALL_VALUES = {"model.d_model", "model.n_heads"}  # heads must divide the width: no shortcut by bounds


def extreme_configs(spec) -> dict[str, dict]:
    """{"largest": ..., "smallest": ...} by peak memory (then parameters), each estimate_run's
    result plus "sampled": the values of the size-related searched fields it takes."""
    dims = _size_dimensions(spec.search)
    seen, estimates = set(), []
    for combination in itertools.product(*(_candidates(d, dims) for d in dims)):
        chosen = dict(zip((d.path for d in dims), combination))
        sampled: dict[str, Any] = {}
        for dim in dims:  # in spec order, as a trial samples them
            if all(sampled.get(p, spec.fixed(p)) in values for p, values in dim.when.items()):
                sampled[dim.path] = chosen[dim.path]
        key = tuple(sorted(sampled.items()))
        if key in seen:
            continue
        seen.add(key)
        try:
            run_cfg = spec.run_config(sampled)
        except ConfigError:
            continue
        estimates.append(dict(estimate_run(run_cfg), sampled=sampled, run_config=run_cfg))
    size = lambda e: (e["memory"]["total"], e["params"])  # noqa: E731
    return {"largest": max(estimates, key=size), "smallest": min(estimates, key=size)}


def _size_dimensions(search: list) -> list:
    """The searched dimensions that change the size, and those their conditions depend on."""
    by_path = {d.path: d for d in search}
    wanted = {d.path for d in search if d.path in ESTIMATE_INPUTS}
    frontier = set(wanted)
    while frontier:
        parents = {p for path in frontier for p in by_path[path].when if p in by_path} - wanted
        wanted |= parents
        frontier = parents
    return [d for d in search if d.path in wanted]


def _candidates(dim, dims: list) -> list:
    """The values of `dim` worth trying: see the module docstring."""
    if dim.type == "categorical":
        return list(dim.choices)
    if dim.path in _ALL_VALUES:
        values = dim.values(limit=64)
    else:
        values = [dim.low, dim.high]
    # Values that conditions name, so that both sides of each condition are tried.
    named = [v for d in dims for v in d.when.get(dim.path, []) if dim.low <= v <= dim.high]
    out = values + [v for v in named if v not in values]
    return [int(v) for v in out] if dim.type == "int" else [float(v) for v in out]

