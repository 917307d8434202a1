"""A throwaway data home per test: SQLite store, SQLite MLflow store, a Dagster test instance."""

import os
from pathlib import Path

import dagster as dg
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def quadra_env(tmp_path, monkeypatch):
    """Point every setting at tmp_path (nothing of the developer's .quadra/ is touched)."""
    for name in list(os.environ):
        if name.startswith("QUADRA_") or name in {"DATABASE_URL", "MLFLOW_TRACKING_URI"}:
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("QUADRA_HOME", str(home))
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{home / 'quadra.db'}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    return home


@pytest.fixture
def instance(quadra_env):
    with dg.instance_for_test() as instance:
        yield instance


def run_config(batches=3, field_size=24, training_rows=400, held_out_rows=60, seed=0, **training):
    return {
        "ops": {
            "corpus": {"config": {"training_rows": training_rows, "held_out_rows": held_out_rows, "source_options": {"seed": seed}}},
            "train_model": {"config": {"batches": batches, "field_size": field_size, "seed": seed, **training}},
        }
    }
