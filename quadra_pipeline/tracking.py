"""Per-batch metrics to the SQL store and to MLflow, in batches.

Training calls the logger once per batch; it buffers and writes every `flush_every` batches:
one executemany insert into `training_metrics` and one `log_batch` call to MLflow (never one
round trip per value). `close()` flushes the rest. The benchmark measures its overhead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine

from .model import BatchMetrics

#: Metrics that go to MLflow as stepped metrics (batch_number is the step).
MLFLOW_METRICS = tuple(name for name in BatchMetrics.__dataclass_fields__ if name != "batch_number")


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
        self.pending: list[dict[str, Any]] = []
        self.written = 0
        self.seconds = 0.0  # time spent writing (the benchmark reports it)

    def __call__(self, metrics: BatchMetrics, rows_consumed: int) -> None:
        self.pending.append(metrics.as_dict())
        if len(self.pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        started = time.perf_counter()
        rows, self.pending = self.pending, []
        if self.engine is not None and self.training_run_id is not None:
            from .store import add_metrics, session_scope

            with session_scope(self.engine) as session:
                add_metrics(session, self.training_run_id, rows)
        if self.registry is not None and self.mlflow_run_id is not None:
            self.registry.log_metrics(self.mlflow_run_id, [{k: row[k] for k in ("batch_number", *MLFLOW_METRICS)} for row in rows])
        self.written += len(rows)
        self.seconds += time.perf_counter() - started

    close = flush


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
