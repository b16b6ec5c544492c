"""A suggestion that repeats a configuration the study has: its nearest untried neighbour trains instead.

On a space of discrete dimensions (categorical, int, float with a step) TPE exploits by
suggesting its best configuration again, and does so often: on Zhang & Duh's recorded sw-en
trainings (benchmarks/nmt_tables.py) about a quarter of a study's suggestions repeat one it has.
Training a configuration twice costs a whole trial and teaches the study nothing new. Such a
trial ends at once, untrained: FAIL (the samplers skip FAIL trials, so the earlier result is not
counted twice), stop_reason=repeat, and counted neither in the budget nor as a failure. The
configuration nearest to it that the study has not tried is queued (`enqueue_trial`), so the
next trial trains it under its own values: a step of local search around the configuration the
sampler favours. Where no untried configuration is near (every one tried, or a space of
continuous values only, where repeats do not happen), the repeat trains as any trial does.

Nearest: the fewest steps, each a step's share of its dimension's span (an int or stepped
float: one step; a categorical of numbers: the next value in sorted order; any other
categorical: another choice, a whole span). A continuous float keeps its value, and so do an
int or stepped float of more than 100,000 values and a dimension that a `when:` condition looks
at (moving it would change which dimensions exist).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mt_tune.search.space import Dimension

TRAINED_OR_RUNNING = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
QUEUED_ATTR = "queued_params"  # user attr of a queued neighbour: its params (a WAITING trial has none yet)
NEIGHBOUR_OF_ATTR = "neighbour_of"  # user attr of a queued neighbour: the number of the repeat it replaces
STOP_REASON = "repeat"
MAX_GRID = 100_000  # values of an int or stepped float dimension beyond which it is not moved


class Repeat(Exception):
    """A trial that repeats an earlier one ends untrained; its nearest untried neighbour is queued."""


def is_repeat(trial: FrozenTrial) -> bool:
    """A trial ended untrained as a repeat (FAIL): not a trial of the budget, nor a failure."""
    return trial.user_attrs.get("stop_reason") == STOP_REASON


def params_key(params: dict) -> tuple:
    """Hashable and equal for equal configurations (floats to 10 significant digits: a value
    queued as low + i*step and one a sampler drew on that grid may differ in the last bit)."""
    return tuple(sorted((k, float(f"{v:.10g}") if isinstance(v, float) else v) for k, v in params.items()))


def taken_keys(study: optuna.Study, but: int) -> dict[tuple, int]:
    """The configurations of the study's trials that trained, are training or are queued as a
    neighbour (other than trial `but`), each with the number of a trial that has it."""
    taken: dict[tuple, int] = {}
    for t in study.get_trials(deepcopy=False):
        if t.number == but:
            continue
        if t.state in TRAINED_OR_RUNNING:
            taken.setdefault(params_key(t.params), t.number)
        elif t.state == TrialState.WAITING and QUEUED_ATTR in t.user_attrs:
            taken.setdefault(params_key(t.user_attrs[QUEUED_ATTR]), t.number)
    return taken


def _grid(dim: Dimension) -> tuple[list, bool] | None:
    """The values a dimension steps through, and whether they are ordered; None: continuous."""
    if dim.type == "categorical":
        numbers = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in dim.choices)
        return (sorted(dim.choices), True) if numbers else (list(dim.choices), False)
    if dim.type == "float" and dim.step is None:
        return None
    step = dim.step or 1
    n = int(round((dim.high - dim.low) / step)) + 1
    if n > MAX_GRID:  # as good as continuous: repeats are as rare
        return None
    if dim.type == "int":
        return [int(dim.low) + i * int(step) for i in range(n)], True
    decimals = max(0, -math.floor(math.log10(step))) + 6  # low + i*step without float noise
    return [round(dim.low + i * step, decimals) for i in range(n)], True


def _position(values: list, value: Any) -> int | None:
    for i, v in enumerate(values):
        if v == value or (isinstance(v, float) and isinstance(value, (int, float)) and math.isclose(v, value)):
            return i
    return None


def nearest_untried(space: list[Dimension], params: dict, taken: Callable[[dict], bool], seed: int = 0,
                    limit: int = 100_000) -> dict | None:
    """The configuration nearest to `params` (see the module's note) for which `taken` is false,
    or None when none is found within `limit` configurations looked at. Ties are broken at
    random (`seed`): an order of dimensions would favour moving the first ones."""
    conditions = {p for d in space for p in d.when}
    movable = []  # (path, values, ordered, position of params' value)
    for dim in space:
        grid = _grid(dim) if dim.path in params and dim.path not in conditions else None
        if grid is None:
            continue
        values, ordered = grid
        at = _position(values, params[dim.path])
        if at is not None and len(values) > 1:
            movable.append((dim.path, values, ordered, at))
    if not movable:
        return None

    def config(positions: tuple) -> dict:
        out = dict(params)
        for (path, values, _, _), i in zip(movable, positions):
            out[path] = values[i]
        return out

    start = tuple(m[3] for m in movable)
    tie = random.Random(seed).random
    heap, seen = [(0.0, tie(), start)], {start}
    while heap and len(seen) <= limit:
        cost, _, positions = heapq.heappop(heap)
        if positions != start and not taken(candidate := config(positions)):
            return candidate
        for d, (_, values, ordered, _) in enumerate(movable):
            if ordered:
                moves = [(positions[d] + s, 1 / (len(values) - 1)) for s in (-1, 1)]
            else:
                moves = [(i, 1.0) for i in range(len(values)) if i != positions[d]]
            for i, step_cost in moves:
                if 0 <= i < len(values):
                    nxt = positions[:d] + (i,) + positions[d + 1:]
                    if nxt not in seen:
                        seen.add(nxt)
                        heapq.heappush(heap, (round(cost + step_cost, 9), tie(), nxt))
    return None


def queue_neighbour(trial: optuna.Trial, space: list[Dimension], params: dict,
                    taken: Callable[[dict], bool]) -> dict | None:
    """Queue the nearest untried neighbour of `params` as the study's next trial and mark `trial`
    as a repeat; the neighbour's params, or None (nothing queued, the trial unmarked)."""
    neighbour = nearest_untried(space, params, taken, seed=trial.number)
    if neighbour is None:
        return None
    trial.study.enqueue_trial(neighbour, user_attrs={QUEUED_ATTR: neighbour, NEIGHBOUR_OF_ATTR: trial.number})
    trial.set_user_attr("stop_reason", STOP_REASON)
    trial.set_user_attr("queued", neighbour)
    return neighbour


def end_if_repeat(trial: optuna.Trial, space: list[Dimension], params: dict) -> None:
    """Raise Repeat if `params` repeat a trained, running or queued trial of the study and an
    untried neighbour could be queued in its place; return (train as usual) otherwise."""
    taken = taken_keys(trial.study, but=trial.number)
    earlier = taken.get(params_key(params))
    if earlier is None:
        return
    neighbour = queue_neighbour(trial, space, params, lambda p: params_key(p) in taken)
    if neighbour is None:
        return
    trial.set_user_attr("repeat_of", earlier)
    changed = ", ".join(f"{k} {params[k]} -> {v}" for k, v in neighbour.items() if params.get(k) != v)
    raise Repeat(f"trial {trial.number} repeats trial {earlier}; its nearest untried neighbour is queued ({changed})")
