"""Training runs, their per-batch metrics and the trainer's state snapshots.

Functions take a `Session`, flush but never commit (the caller owns the transaction). A run is
its id (int), its external (Dagster) run id (str) or the object.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ._checks import _add_guarded, _as_float, _as_int, _aware, _count, _first_line, _floats, _label
from .errors import DuplicateError, DuplicateMetricsError, InvalidDataError, StoreError, UnknownRunError
from .models import RUN_STATUSES, SystemState, TrainingMetric, TrainingRun, utcnow

RunRef = int | str | TrainingRun

#: Per-batch metric columns: required (NOT NULL) and optional, by kind.
REQUIRED_METRICS = ("batch_number", "loss", "reward", "variance", "field_mean")
_INT_METRICS = frozenset({"batch_number", "k_clusters", "throttle_events", "texts"})
_FLOAT_METRICS = frozenset(
    {
        "loss",
        "reward",
        "variance",
        "field_mean",
        "learning_rate",
        "speedup_factor",
        "reward_per_item",
        "resonance",
        "stability",
        "batch_seconds",
    }
)
METRIC_FIELDS = tuple(
    c.name
    for c in TrainingMetric.__table__.columns
    if c.name in _INT_METRICS or c.name in _FLOAT_METRICS
)
_ROW_KEYS = frozenset(METRIC_FIELDS) | {"timestamp"}


# Training runs ----------------------------------------------------------------------------


def start_training_run(
    session: Session,
    *,
    field_size: int | None = None,
    seed: int | None = None,
    config: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
    external_run_id: str | None = None,
    started_at: dt.datetime | None = None,
) -> TrainingRun:
    """Record the start of a training run (status "running")."""
    if external_run_id is not None:
        _label(external_run_id, "external_run_id", 255)
    run = TrainingRun(
        external_run_id=external_run_id,
        started_at=_aware(started_at, "started_at"),
        status="running",
        config=dict(config or {}),
        field_size=None if field_size is None else _count(field_size, "field_size"),
        seed=None if seed is None else _as_int(seed, "seed"),
        source=None if source is None else dict(source),
    )
    _add_guarded(
        session,
        run,
        lambda exc: DuplicateError(
            f"a training run with external run id {external_run_id!r} already exists"
        )
        if external_run_id is not None
        else StoreError(f"cannot record the training run: {_first_line(exc)}"),
    )
    return run


def get_training_run(session: Session, run: RunRef) -> TrainingRun:
    """The run by id, external run id or object; `UnknownRunError` if there is none."""
    if isinstance(run, TrainingRun):
        if run.id is not None and session.get(TrainingRun, run.id) is not None:
            return run
        raise UnknownRunError(f"training run {run.id!r} is not in the store")
    if isinstance(run, str):
        query = select(TrainingRun).where(TrainingRun.external_run_id == run)
        found = session.scalars(query).first()
        if found is None:
            raise UnknownRunError(f"no training run with external run id {run!r}")
        return found
    found = session.get(TrainingRun, _as_int(run, "run id"))
    if found is None:
        raise UnknownRunError(f"no training run with id {run!r}")
    return found


def finish_training_run(
    session: Session,
    run: RunRef,
    *,
    status: str = "succeeded",
    error: str | None = None,
    finished_at: dt.datetime | None = None,
) -> TrainingRun:
    """Mark a run finished ("succeeded", "failed" or "cancelled").

    Finishing again with the same status is a no-op; with another status, `StoreError`.
    """
    if status not in RUN_STATUSES or status == "running":
        allowed = ", ".join(s for s in RUN_STATUSES if s != "running")
        raise InvalidDataError(f"status must be one of {allowed}; got {status!r}")
    found = get_training_run(session, run)
    if found.finished_at is not None:
        if found.status == status:
            return found
        raise StoreError(
            f"training run {found.id} already finished as {found.status!r}; "
            f"cannot mark it {status!r}"
        )
    found.status = status
    found.error = error
    found.finished_at = _aware(finished_at, "finished_at")
    session.flush()
    return found


def set_mlflow_run(session: Session, run: RunRef, mlflow_run_id: str) -> TrainingRun:
    """Name the MLflow run that receives this run's metrics."""
    found = get_training_run(session, run)
    found.mlflow_run_id = _label(mlflow_run_id, "mlflow_run_id", 64)
    session.flush()
    return found


def list_training_runs(
    session: Session, *, status: str | None = None, limit: int | None = None, external_prefix: str | None = None
) -> list[TrainingRun]:
    """Runs, newest first; `external_prefix`: those whose external run id starts with it (the
    attempts of one sweep trial: "<dagster run id>/trial_003#2")."""
    query = select(TrainingRun).order_by(TrainingRun.started_at.desc(), TrainingRun.id.desc())
    if status is not None:
        query = query.where(TrainingRun.status == status)
    if external_prefix is not None:
        query = query.where(TrainingRun.external_run_id.startswith(external_prefix, autoescape=True))
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


# Metrics ----------------------------------------------------------------------------------


def _metric_row(run_id: int, index: int, row: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    if not isinstance(row, Mapping):
        raise InvalidDataError(f"metrics row {index} is a {type(row).__name__}, not a mapping")
    unknown = row.keys() - _ROW_KEYS
    if unknown:
        raise InvalidDataError(
            f"metrics row {index} has unknown column(s) {sorted(map(str, unknown))}; "
            f"known: {', '.join(METRIC_FIELDS)}, timestamp"
        )
    values: dict[str, Any] = {"training_run_id": run_id, "model_version_id": None}
    for name in REQUIRED_METRICS:
        if row.get(name) is None:
            raise InvalidDataError(f"metrics row {index} has no {name}")
    for name in METRIC_FIELDS:
        value = row.get(name)
        if value is None:
            values[name] = None
        elif name in _INT_METRICS:
            values[name] = _as_int(value, f"metrics row {index}: {name}")
        else:
            where = f"metrics row {index} (batch {row['batch_number']}): {name}"
            values[name] = _as_float(value, where)
    stamp = row.get("timestamp")
    values["timestamp"] = now if stamp is None else _aware(stamp, f"metrics row {index}: timestamp")
    return values


def add_metrics(session: Session, run: RunRef, rows: Iterable[Mapping[str, Any]]) -> int:
    """Insert the per-batch metrics of a run in one executemany INSERT; return the row count.

    Each row maps column names (`METRIC_FIELDS`, optionally `timestamp`) to values; the
    `REQUIRED_METRICS` must be present. A batch number the run already has, or that appears
    twice in `rows`, raises `DuplicateMetricsError` and inserts nothing (earlier rows stay).
    """
    run_id = get_training_run(session, run).id
    now = utcnow()
    prepared: list[dict[str, Any]] = []
    seen: set[int] = set()
    for index, row in enumerate(rows):
        values = _metric_row(run_id, index, row, now)
        batch = values["batch_number"]
        if batch in seen:
            raise DuplicateMetricsError(
                f"batch {batch} appears twice in the metrics for run {run_id}"
            )
        seen.add(batch)
        prepared.append(values)
    if not prepared:
        return 0
    try:
        with session.begin_nested():
            session.execute(TrainingMetric.__table__.insert(), prepared)
    except IntegrityError as exc:
        existing = set(
            session.scalars(
                select(TrainingMetric.batch_number).where(TrainingMetric.training_run_id == run_id)
            )
        )
        clash = sorted(existing & seen)
        if clash:
            shown = ", ".join(map(str, clash[:5])) + (", ..." if len(clash) > 5 else "")
            raise DuplicateMetricsError(
                f"run {run_id} already has metrics for batch(es) {shown}; nothing was inserted"
            ) from None
        raise StoreError(f"cannot insert metrics for run {run_id}: {_first_line(exc)}") from None
    return len(prepared)


def append_metric(engine: Engine, run_id: int, row: Mapping[str, Any]) -> None:
    """Commit one batch's row for the run with id `run_id` in its own short transaction: one
    INSERT and the COMMIT, nothing else (the per-batch path of training; `add_metrics` is the
    general one). A batch number the run already has raises `DuplicateMetricsError`."""
    values = _metric_row(run_id, 0, row, utcnow())
    try:
        with engine.begin() as connection:
            connection.execute(TrainingMetric.__table__.insert(), [values])
    except IntegrityError as exc:
        raise DuplicateMetricsError(
            f"run {run_id} already has metrics for batch {values['batch_number']} (or is not in the store): "
            f"{_first_line(exc)}"
        ) from None


def metrics_for_run(session: Session, run: RunRef) -> list[TrainingMetric]:
    """The metrics of a run, ordered by batch number."""
    run_id = get_training_run(session, run).id
    query = (
        select(TrainingMetric)
        .where(TrainingMetric.training_run_id == run_id)
        .order_by(TrainingMetric.batch_number)
    )
    return list(session.scalars(query))

def copy_metrics(session: Session, source: RunRef, target: RunRef, *, through_batch: int) -> int:
    """Copy `source`'s metric rows up to `through_batch` to `target`, timestamps kept: a run
    resumed from `source`'s checkpoint carries the history of the batches it did not retrain.
    Returns the number of rows copied."""
    source_id = get_training_run(session, source).id
    target_id = get_training_run(session, target).id
    rows = [
        {**{name: getattr(metric, name) for name in METRIC_FIELDS}, "timestamp": metric.timestamp}
        for metric in metrics_for_run(session, source_id)
        if metric.batch_number <= through_batch
    ]
    return add_metrics(session, target_id, rows)


# System state -----------------------------------------------------------------------------


def save_system_state(
    session: Session,
    *,
    field_size: int,
    iteration_count: int = 0,
    is_running: bool = False,
    is_initialized: bool = False,
    current_version: str | None = None,
    loss_history: Iterable[float] = (),
    reward_history: Iterable[float] = (),
    variance_history: Iterable[float] = (),
    field_mean_history: Iterable[float] = (),
    training_run: RunRef | None = None,
    timestamp: dt.datetime | None = None,
) -> SystemState:
    """Append a snapshot of the trainer's state."""
    if current_version is not None:
        _label(current_version, "current_version", 100)
    state = SystemState(
        timestamp=_aware(timestamp, "timestamp"),
        field_size=_count(field_size, "field_size"),
        iteration_count=_count(iteration_count, "iteration_count"),
        is_running=bool(is_running),
        is_initialized=bool(is_initialized),
        current_version=current_version,
        loss_history=_floats(loss_history, "loss_history"),
        reward_history=_floats(reward_history, "reward_history"),
        variance_history=_floats(variance_history, "variance_history"),
        field_mean_history=_floats(field_mean_history, "field_mean_history"),
        training_run_id=None if training_run is None else get_training_run(session, training_run).id,
    )
    session.add(state)
    session.flush()
    return state


def latest_system_state(session: Session, *, training_run: RunRef | None = None) -> SystemState | None:
    """The newest snapshot (of one run, or overall), or None."""
    query = select(SystemState).order_by(SystemState.timestamp.desc(), SystemState.id.desc()).limit(1)
    if training_run is not None:
        query = query.where(SystemState.training_run_id == get_training_run(session, training_run).id)
    return session.scalars(query).first()
