"""Durable per-batch metrics: each batch's row is in the database when the batch ends, with its
own time; MLflow gets them in groups, and what it lacks after a crash is completed from SQL."""

from __future__ import annotations

import pytest

from quadra_pipeline.registry import ModelRegistry
from quadra_pipeline.store import DuplicateMetricsError, ensure_schema, make_engine, metrics_for_run, session_scope, start_training_run
from quadra_pipeline.store.runs import append_metric
from quadra_pipeline.tracking import MetricLogger, complete_mlflow_run
from quadra_pipeline.training import TrainingConfig, run_training


class Crash(Exception):
    pass


@pytest.fixture
def stores(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'quadra.db'}")
    ensure_schema(engine)
    registry = ModelRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts")
    with session_scope(engine) as session:
        run_id = start_training_run(session, field_size=16, seed=0).id
    yield engine, registry, run_id
    engine.dispose()


def test_a_failing_run_keeps_exactly_the_finished_batches_each_with_its_own_time(stores, tmp_path):
    engine, registry, run_id = stores
    mlflow_run = registry.start_run("durable")
    logger = MetricLogger(engine, run_id, registry, mlflow_run, flush_every=10)

    def crash_after_13(metrics, rows):
        if metrics.batch_number == 13:
            raise Crash("out of memory, say")

    with pytest.raises(Crash):
        run_training(TrainingConfig(field_size=16, batches=30), tmp_path / "run", on_batch=[logger, crash_after_13])
    with session_scope(engine) as session:
        rows = metrics_for_run(session, run_id)
    assert [r.batch_number for r in rows] == list(range(1, 14))  # batch 13 finished before the crash
    times = [r.timestamp for r in rows]
    assert times == sorted(times) and len(set(times)) == 13  # each batch's own time, not a flush's
    assert registry.metric_steps(mlflow_run, "loss") == list(range(1, 11))  # one group of 10 went
    logger.close()  # what the asset does on failure
    assert sorted(registry.metric_steps(mlflow_run, "loss")) == list(range(1, 14))


def test_a_killed_runs_mlflow_run_is_completed_from_the_database(stores, tmp_path):
    """As after SIGKILL: the logger never closed; MLflow has the first group only."""
    engine, registry, run_id = stores
    mlflow_run = registry.start_run("killed")
    logger = MetricLogger(engine, run_id, registry, mlflow_run, flush_every=10)
    run_training(TrainingConfig(field_size=16, batches=17), tmp_path / "run", on_batch=[logger])
    assert registry.metric_steps(mlflow_run, "loss") == list(range(1, 11))  # never closed
    assert complete_mlflow_run(registry, engine, run_id, mlflow_run) == 7
    assert sorted(registry.metric_steps(mlflow_run, "loss")) == list(range(1, 18))
    assert complete_mlflow_run(registry, engine, run_id, mlflow_run) == 0  # nothing twice


def test_append_metric_refuses_a_batch_twice_and_an_unknown_run(stores):
    engine, _, run_id = stores
    row = {"batch_number": 1, "loss": 0.5, "reward": 1.0, "variance": 0.1, "field_mean": 0.0}
    append_metric(engine, run_id, row)
    with pytest.raises(DuplicateMetricsError, match="already has metrics for batch 1"):
        append_metric(engine, run_id, row)
    with pytest.raises(DuplicateMetricsError, match="or is not in the store"):
        append_metric(engine, run_id + 99, row)
    with session_scope(engine) as session:
        assert len(metrics_for_run(session, run_id)) == 1
