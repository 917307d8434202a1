"""The search space: expansion, and every bad input refused in one line before any trial exists."""

import pytest

from quadra_pipeline.sweep import DEFAULTS, Draw, SearchSpace, SweepSpaceError, expand, rows_needed, validate


def test_a_grid_crossed_with_samples_expands_in_a_stable_order():
    space = SearchSpace(grid={"learning_rate": [0.001, 0.01], "field_size": [32, 64]},
                        random={"seed": Draw("int_uniform", 0, 1000)}, samples=2, random_seed=7,
                        fixed={"batches": 5})
    trials = expand(space, max_trials=200)
    assert [t.key for t in trials] == [f"trial_{i:03d}" for i in range(8)]
    assert [(t.params["learning_rate"], t.params["field_size"]) for t in trials[::2]] == [
        (0.001, 32), (0.001, 64), (0.01, 32), (0.01, 64)]
    assert all(t.params["batches"] == 5 and t.params["rows_per_batch"] == DEFAULTS["rows_per_batch"] for t in trials)
    seeds = [t.params["seed"] for t in trials]
    assert all(isinstance(s, int) and 0 <= s <= 1000 for s in seeds) and len(set(seeds)) > 1
    assert expand(space, max_trials=200) == trials  # the same space, the same trials (any host)
    assert rows_needed(trials) == 5 * DEFAULTS["rows_per_batch"]


def test_random_draws_stay_in_their_bounds_and_types():
    space = SearchSpace(random={"learning_rate": Draw("log_uniform", 1e-4, 1e-1), "rows_per_batch": Draw("choice", values=(5, 10)),
                                "field_size": Draw("uniform", 16, 64)}, samples=50)
    trials = expand(space, max_trials=200)
    assert len(trials) == 50
    assert all(1e-4 <= t.params["learning_rate"] <= 1e-1 for t in trials)
    assert {t.params["rows_per_batch"] for t in trials} == {5, 10}
    assert all(isinstance(t.params["field_size"], int) and 16 <= t.params["field_size"] <= 64 for t in trials)


@pytest.mark.parametrize(
    "space, message",
    [
        (SearchSpace(), "the search space is empty"),
        (SearchSpace(grid={"learning_rate": []}), "grid learning_rate has no values"),
        (SearchSpace(grid={"dropout": [0.1]}), "unknown hyperparameter 'dropout' in grid (known: batches, field_size, learning_rate, rows_per_batch, seed)"),
        (SearchSpace(random={"momentum": Draw("uniform", 0, 1)}), "unknown hyperparameter 'momentum' in random"),
        (SearchSpace(grid={"learning_rate": [0.01]}, fixed={"epochs": 3}), "unknown hyperparameter 'epochs' in fixed"),
        (SearchSpace(grid={"learning_rate": [0.01, 2.0]}), r"learning_rate = 2.0 is out of range (0 < learning_rate <= 1)"),
        (SearchSpace(grid={"learning_rate": [0.0]}), r"learning_rate = 0.0 is out of range (0 < learning_rate <= 1)"),
        (SearchSpace(grid={"field_size": [1]}), r"field_size = 1 is out of range (2 <= field_size <= 4096)"),
        (SearchSpace(grid={"batches": [2.5]}), "batches = 2.5 is not a whole number"),
        (SearchSpace(grid={"seed": [-1]}), "seed = -1 is out of range"),
        (SearchSpace(random={"learning_rate": Draw("uniform", 0.1, 3)}), "learning_rate = 3 is out of range"),
        (SearchSpace(random={"learning_rate": Draw("normal", 0.1, 0.2)}), "unknown distribution 'normal'"),
        (SearchSpace(random={"learning_rate": Draw("uniform", 0.5, 0.1)}), "low 0.5 is above high 0.1"),
        (SearchSpace(random={"learning_rate": Draw("int_uniform", 0.1, 0.5)}), "int_uniform is for whole-number"),
        (SearchSpace(random={"seed": Draw("choice")}), "choice needs values"),
        (SearchSpace(grid={"seed": [1]}, random={"seed": Draw("int_uniform", 0, 9)}), "seed is both in grid and in random"),
        (SearchSpace(grid={"seed": list(range(21))}, samples=10), r"the search space has 210 trials, more than the cap of 200 \(QUADRA_SWEEP_MAX_TRIALS\)"),
        (SearchSpace(grid={"seed": [0]}, samples=0), "samples = 0 is out of range"),
    ],
)
def test_bad_input_is_one_line_before_any_trial(space, message):
    with pytest.raises(SweepSpaceError, match=message if "\\" in message else None) as caught:
        expand(space, max_trials=200)
    text = str(caught.value)
    assert "\n" not in text
    if "\\" not in message:
        assert message in text


def test_the_cap_is_the_setting():
    space = SearchSpace(grid={"seed": list(range(10))})
    assert validate(space, max_trials=10) == 10
    with pytest.raises(SweepSpaceError, match="10 trials, more than the cap of 9"):
        validate(space, max_trials=9)
