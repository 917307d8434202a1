"""The sweep's configuration in the Launchpad, and its check before anything runs.

`SweepConfig` is the search space as a user types it (`ops: hyperparameter_sweep: config:`):
a grid of listed values, seeded random draws, `samples` of them per grid point, fixed values
for the rest. With no config at all the sweep runs `DEFAULT_GRID` x `DEFAULT_FIXED`: 4 small
trials. The pure space and its rules are `quadra_pipeline.sweep`.
"""


from typing import Literal

import dagster as dg
from pydantic import Field

from ...settings import load_settings
from ...sweep import Draw, SearchSpace, SweepSpaceError, Trial, expand, rows_needed

#: The default space: 2 learning rates x 2 seeds of a small model.
DEFAULT_GRID: dict[str, list[float]] = {"learning_rate": [0.001, 0.005], "seed": [0, 1]}
DEFAULT_FIXED: dict[str, float] = {"field_size": 64, "batches": 10, "rows_per_batch": 10}


class RandomDraw(dg.Config):
    distribution: Literal["uniform", "log_uniform", "int_uniform", "choice"] = Field(
        description="uniform / log_uniform in [low, high], a whole number in [low, high], or a choice among values."
    )
    low: float | None = Field(None, description="Lower bound (uniform, log_uniform, int_uniform).")
    high: float | None = Field(None, description="Upper bound (uniform, log_uniform, int_uniform).")
    values: list[float] = Field(default_factory=list, description="The values to choose among (choice).")


class SweepConfig(dg.Config):
    """A hyperparameter search space: field_size, learning_rate, batches, rows_per_batch, seed."""

    grid: dict[str, list[float]] = Field(
        default_factory=lambda: dict(DEFAULT_GRID),
        description="Hyperparameter -> values: every combination is a trial (times `samples`).",
    )
    random: dict[str, RandomDraw] = Field(
        default_factory=dict, description="Hyperparameter -> a seeded random draw, drawn again for each trial."
    )
    samples: int = Field(1, description="Random draws per grid point (1 with no random hyperparameters).")
    random_seed: int = Field(0, description="Seed of the random draws: the same seed, the same trials.")
    fixed: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_FIXED),
        description="Values of hyperparameters the space does not vary (the rest: a training run's defaults).",
    )
    checkpoint_every: int = Field(50, ge=1, le=1_000_000, description="A trial writes a checkpoint every k batches (and at its end).")
    metrics_flush_every: int = Field(10, ge=1, le=10_000, description="Batches per MLflow log_batch call of a trial.")

    def space(self) -> SearchSpace:
        return SearchSpace(
            grid={name: list(values) for name, values in self.grid.items()},
            random={name: Draw(d.distribution, d.low, d.high, tuple(d.values)) for name, d in self.random.items()},
            samples=self.samples,
            random_seed=self.random_seed,
            fixed=dict(self.fixed),
        )


def planned_trials(config: SweepConfig, training_rows: int | None = None) -> list[Trial]:
    """The trials of `config`, or `dg.Failure` with the one-line reason, before any trial runs
    (a corpus too small for the hungriest trial included, when its size is known)."""
    try:
        trials = expand(config.space(), load_settings().sweep_max_trials)
    except SweepSpaceError as exc:
        raise dg.Failure(f"sweep refused before any trial ran: {exc}") from None
    needed = rows_needed(trials)
    if training_rows is not None and training_rows < needed:
        raise dg.Failure(
            f"sweep refused before any trial ran: the corpus has {training_rows} training rows, but the hungriest "
            f"trial needs {needed} (batches x rows_per_batch): raise the corpus's training_rows"
        )
    return trials
