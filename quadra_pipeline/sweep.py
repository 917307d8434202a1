"""A hyperparameter search space and the trials it expands to (no Dagster here).

A space is a grid (every combination of the listed values) crossed with `samples` seeded random
draws of the other hyperparameters, as Ray Tune's `grid_search` x `num_samples` does; fixed
values for the rest. Expansion is deterministic: the same space gives the same trials, in the
same order, on every host. Everything is checked before a trial exists, each problem one line
(`SweepSpaceError`): an empty space, an unknown hyperparameter, a value out of its range, more
trials than the cap.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class SweepSpaceError(ValueError):
    """The search space cannot be used; one line saying what to change."""


@dataclass(frozen=True)
class Bounds:
    kind: type
    low: float
    high: float
    low_open: bool = False  # low itself excluded (learning_rate > 0)

    def describe(self, name: str) -> str:
        return f"{self.low:g} {'<' if self.low_open else '<='} {name} <= {self.high:g}"

    def check(self, name: str, value: Any) -> int | float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SweepSpaceError(f"{name} = {value!r} is not a number")
        if not math.isfinite(value):
            raise SweepSpaceError(f"{name} = {value!r} is not finite")
        given = value
        if self.kind is int:
            if float(value) != int(value):
                raise SweepSpaceError(f"{name} = {value!r} is not a whole number")
            value = int(value)
        else:
            value = float(value)
        too_low = value <= self.low if self.low_open else value < self.low
        if too_low or value > self.high:
            raise SweepSpaceError(f"{name} = {given!r} is out of range ({self.describe(name)})")
        return value


#: What a sweep may vary, with the bounds a training run accepts (TrainingRunConfig's).
HYPERPARAMETERS: dict[str, Bounds] = {
    "field_size": Bounds(int, 2, 4096),
    "learning_rate": Bounds(float, 0.0, 1.0, low_open=True),
    "batches": Bounds(int, 1, 1_000_000),
    "rows_per_batch": Bounds(int, 1, 100_000),
    "seed": Bounds(int, 0, 2**63 - 1),
}
#: The value of a hyperparameter the space neither varies nor fixes (a training run's defaults).
DEFAULTS: dict[str, int | float] = {"field_size": 100, "learning_rate": 0.001, "batches": 20, "rows_per_batch": 10, "seed": 0}
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "choice")


@dataclass(frozen=True)
class Draw:
    """A random hyperparameter: uniform or log-uniform in [low, high], a uniform integer in
    [low, high], or a choice among `values`."""

    distribution: str
    low: float | None = None
    high: float | None = None
    values: tuple[float, ...] = ()

    def check(self, name: str) -> None:
        bounds = HYPERPARAMETERS[name]
        if self.distribution not in DISTRIBUTIONS:
            raise SweepSpaceError(f"random {name}: unknown distribution {self.distribution!r} (one of {', '.join(DISTRIBUTIONS)})")
        if self.distribution == "choice":
            if not self.values:
                raise SweepSpaceError(f"random {name}: choice needs values")
            for value in self.values:
                bounds.check(name, value)
            return
        if self.low is None or self.high is None:
            raise SweepSpaceError(f"random {name}: {self.distribution} needs low and high")
        bounds.check(name, self.low)
        bounds.check(name, self.high)
        if self.low > self.high:
            raise SweepSpaceError(f"random {name}: low {self.low:g} is above high {self.high:g}")
        if self.distribution == "log_uniform" and self.low <= 0:
            raise SweepSpaceError(f"random {name}: log_uniform needs low > 0")
        if self.distribution == "int_uniform" and bounds.kind is not int:
            raise SweepSpaceError(f"random {name}: int_uniform is for whole-number hyperparameters")

    def sample(self, name: str, rng: random.Random) -> int | float:
        if self.distribution == "choice":
            value: float = rng.choice(self.values)
        elif self.distribution == "int_uniform":
            value = rng.randint(int(self.low), int(self.high))
        elif self.distribution == "log_uniform":
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        if HYPERPARAMETERS[name].kind is int:
            return round(value)
        return value


@dataclass(frozen=True)
class SearchSpace:
    grid: Mapping[str, Sequence[int | float]] = field(default_factory=dict)
    random: Mapping[str, Draw] = field(default_factory=dict)
    samples: int = 1
    random_seed: int = 0
    fixed: Mapping[str, int | float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: what the sweep's MLflow parent run records as its search space."""
        return {
            "grid": {k: list(v) for k, v in self.grid.items()},
            "random": {k: {"distribution": d.distribution, "low": d.low, "high": d.high, "values": list(d.values)}
                       for k, d in self.random.items()},
            "samples": self.samples,
            "random_seed": self.random_seed,
            "fixed": dict(self.fixed),
        }


@dataclass(frozen=True)
class Trial:
    """One point of the space: its index (0-based, stable) and every hyperparameter's value."""

    index: int
    params: dict[str, int | float]

    @property
    def key(self) -> str:
        """A name for the trial that Dagster accepts as a mapping key: trial_003."""
        return f"trial_{self.index:03d}"


def _known(name: str, where: str) -> None:
    if name not in HYPERPARAMETERS:
        raise SweepSpaceError(f"unknown hyperparameter {name!r} in {where} (known: {', '.join(sorted(HYPERPARAMETERS))})")


def validate(space: SearchSpace, max_trials: int) -> int:
    """Check everything about the space; returns its number of trials."""
    if not space.grid and not space.random:
        raise SweepSpaceError("the search space is empty: give grid values or random draws for at least one hyperparameter")
    if not 1 <= space.samples <= 100_000:
        raise SweepSpaceError(f"samples = {space.samples} is out of range (1 <= samples <= 100000)")
    for name, values in space.grid.items():
        _known(name, "grid")
        if not values:
            raise SweepSpaceError(f"grid {name} has no values")
        for value in values:
            HYPERPARAMETERS[name].check(name, value)
    for name, draw in space.random.items():
        _known(name, "random")
        if name in space.grid:
            raise SweepSpaceError(f"{name} is both in grid and in random: give it one place")
        draw.check(name)
    for name, value in space.fixed.items():
        _known(name, "fixed")
        if name in space.grid or name in space.random:
            raise SweepSpaceError(f"{name} is searched and fixed at once: give it one place")
        HYPERPARAMETERS[name].check(name, value)
    count = math.prod(len(v) for v in space.grid.values()) * space.samples
    if count > max_trials:
        raise SweepSpaceError(
            f"the search space has {count} trials, more than the cap of {max_trials} "
            "(QUADRA_SWEEP_MAX_TRIALS): fewer grid values or samples"
        )
    return count


def expand(space: SearchSpace, max_trials: int) -> list[Trial]:
    """The trials of a valid space, in a stable order (grid in the order given, then samples)."""
    validate(space, max_trials)
    rng = random.Random(space.random_seed)
    names = list(space.grid)
    points = itertools.product(*(space.grid[n] for n in names)) if names else [()]
    trials = []
    for point in points:
        for _ in range(space.samples):
            params: dict[str, int | float] = dict(DEFAULTS)
            params.update({n: HYPERPARAMETERS[n].check(n, v) for n, v in space.fixed.items()})
            params.update({n: HYPERPARAMETERS[n].check(n, v) for n, v in zip(names, point)})
            params.update({n: d.sample(n, rng) for n, d in sorted(space.random.items())})
            trials.append(Trial(len(trials), params))
    return trials


def rows_needed(trials: Sequence[Trial]) -> int:
    """Training rows the corpus must hold for the hungriest trial (batches x rows per batch)."""
    return max((int(t.params["batches"]) * int(t.params["rows_per_batch"]) for t in trials), default=0)
