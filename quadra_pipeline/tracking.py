"""Per-batch metrics to the SQL store and to MLflow: durable at once in SQL, grouped for MLflow.

Training calls the logger once per batch. The batch's row, with the time the batch ended, is
committed to `training_metrics` right away (one small insert), so a run that fails or is killed
keeps exactly the batches that finished. MLflow gets the rows in groups of `flush_every` with
one `log_batch` call (never one round trip per value); `close()` sends the rest. If the process
dies before a group is sent, `complete_mlflow_run` later sends MLflow what the database has and
MLflow lacks. The benchmark (`benchmarks/bench_logging.py`) measures the overhead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine

from .model import BatchMetrics

#: Metrics that go to MLflow as stepped metrics (batch_number is the step).
MLFLOW_METRICS = tuple(name for name in BatchMetrics.__dataclass_fields__ if name != "batch_number")


def mlflow_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows as `ModelRegistry.log_metrics` takes them: step, metrics, the batch's own time."""
    return [{k: row.get(k) for k in ("batch_number", "timestamp", *MLFLOW_METRICS)} for row in rows]


class MetricLogger:
    def __init__(
        self,
        engine: Engine | None,
        training_run_id: int | None,
        registry: Any | None = None,  # quadra_pipeline.registry.ModelRegistry
        mlflow_run_id: str | None = None,
        flush_every: int = 10,
    ) -> None:
        self.engine = engine
        self.training_run_id = training_run_id
        self.registry = registry
        self.mlflow_run_id = mlflow_run_id
        self.flush_every = max(1, flush_every)
        self.pending: list[dict[str, Any]] = []  # committed to SQL, not yet sent to MLflow
        self.written = 0  # rows committed to SQL
        self.sent = 0  # rows sent to MLflow
        self.seconds = 0.0  # time spent writing (the benchmark reports it)

    def __call__(self, metrics: BatchMetrics, rows_consumed: int) -> None:
        from .store.models import utcnow
        from .store.runs import append_metric

        started = time.perf_counter()
        row = {**metrics.as_dict(), "timestamp": utcnow()}
        if self.engine is not None and self.training_run_id is not None:
            append_metric(self.engine, self.training_run_id, row)
            self.written += 1
        self.pending.append(row)
        self.seconds += time.perf_counter() - started
        if len(self.pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Send the rows MLflow has not had yet (one `log_batch`)."""
        if not self.pending:
            return
        started = time.perf_counter()
        rows, self.pending = self.pending, []
        if self.registry is not None and self.mlflow_run_id is not None:
            try:
                self.registry.log_metrics(self.mlflow_run_id, mlflow_rows(rows))
            except BaseException:
                self.pending = rows + self.pending  # still owed to MLflow (complete_mlflow_run)
                raise
            self.sent += len(rows)
        self.seconds += time.perf_counter() - started

    close = flush


def complete_mlflow_run(registry: Any, engine: Engine, training_run: Any, mlflow_run_id: str) -> int:
    """Send MLflow the batches of `training_run` that the database has and the MLflow run lacks
    (a process that died before its last group); returns how many were sent."""
    from .store import metrics_for_run, session_scope
    from .store.repository import METRIC_FIELDS

    have = set(registry.metric_steps(mlflow_run_id, "loss"))
    with session_scope(engine) as session:
        missing = [
            {**{name: getattr(m, name) for name in METRIC_FIELDS}, "timestamp": m.timestamp}
            for m in metrics_for_run(session, training_run)
            if m.batch_number not in have
        ]
    if missing:
        registry.log_metrics(mlflow_run_id, mlflow_rows(missing))
    return len(missing)


class ProgressLog:
    """'batch i of n' lines every `every` batches (and the last): loss, reward, rows/s, ETA."""

    def __init__(self, log: Callable[[str], None], total: int, rows_per_batch: int, every: int = 5) -> None:
        self.log, self.total, self.rows_per_batch, self.every = log, total, rows_per_batch, max(1, every)
        self.started = time.perf_counter()
        self.seen = 0

    def __call__(self, metrics: BatchMetrics, rows_consumed: int) -> None:
        self.seen += 1
        done = metrics.batch_number
        if done % self.every and done != self.total:
            return
        elapsed = time.perf_counter() - self.started
        rate = self.seen * self.rows_per_batch / elapsed if elapsed > 0 else 0.0
        eta = elapsed / self.seen * (self.total - done)
        self.log(
            f"batch {done} of {self.total}: loss {metrics.loss:.4f}, reward {metrics.reward:.2f}, "
            f"{rate:.0f} rows/s, ETA {eta:.0f} s"
        )
