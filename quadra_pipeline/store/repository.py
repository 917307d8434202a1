"""The reads and writes the pipeline makes, as functions taking a `Session`.

They flush but never commit: the caller owns the transaction (use `session_scope`). A function
that refuses (unknown version, duplicate batch, bad value) raises a `StoreError` subclass and
leaves the session usable, with everything written before the call intact (writes that can
collide run inside a SAVEPOINT).

References: a training run is its id (int), its external (Dagster) run id (str) or the object;
a model version is its label (str), its id (int) or the object.
"""

from __future__ import annotations

import datetime as dt
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .errors import (
    DuplicateError,
    DuplicateMetricsError,
    InvalidDataError,
    StoreError,
    UnknownBackupError,
    UnknownRunError,
    UnknownVersionError,
)
from .models import (
    BACKUP_STATUSES,
    DEFAULT_MODEL_NAME,
    RUN_STATUSES,
    Backup,
    ModelAliasEvent,
    ModelVersion,
    SystemState,
    TrainingMetric,
    TrainingRun,
    utcnow,
)

RunRef = int | str | TrainingRun
VersionRef = str | int | ModelVersion

#: The alias that marks the production version (MLflow's convention; stages are deprecated).
PRODUCTION_ALIAS = "champion"

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

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


# Helpers ----------------------------------------------------------------------------------


def _aware(value: dt.datetime | None, name: str) -> dt.datetime:
    if value is None:
        return utcnow()
    if not isinstance(value, dt.datetime):
        raise InvalidDataError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise InvalidDataError(
            f"{name} is a naive datetime ({value.isoformat()}): pass a timezone-aware one"
        )
    return value.astimezone(dt.timezone.utc)


def _sha256(value: str, name: str) -> str:
    if not isinstance(value, str) or not _SHA256.match(value.lower()):
        raise InvalidDataError(f"{name} must be 64 hexadecimal characters, got {value!r}")
    return value.lower()


def _label(value: str, name: str, max_length: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidDataError(f"{name} must be a non-empty string")
    if len(value) > max_length:
        raise InvalidDataError(f"{name} is longer than {max_length} characters: {value[:40]!r}...")
    return value


def _count(value: int, name: str) -> int:
    number = _as_int(value, name)
    if number < 0:
        raise InvalidDataError(f"{name} must not be negative, got {number}")
    return number


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        return int(value)
    try:
        return operator.index(value)
    except TypeError:
        pass
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidDataError(f"{name} must be an integer, got {value!r}") from None
    if not number.is_integer():
        raise InvalidDataError(f"{name} must be an integer, got {value!r}")
    return int(number)


def _as_float(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidDataError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(number):
        # SQLite would store NULL (or fail NOT NULL), PostgreSQL NaN: refuse on both.
        raise InvalidDataError(f"{name} is NaN")
    return number


def _floats(values: Iterable[Any], name: str) -> list[float]:
    return [_as_float(v, f"{name}[{i}]") for i, v in enumerate(values)]


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return lines[0] if lines else type(cause).__name__


def _add_guarded(
    session: Session, obj: Any, on_conflict: Callable[[IntegrityError], StoreError]
) -> None:
    """Insert `obj` in a SAVEPOINT; a constraint violation becomes `on_conflict(exc)`."""
    try:
        with session.begin_nested():
            session.add(obj)
    except IntegrityError as exc:
        raise on_conflict(exc) from None


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


def list_training_runs(
    session: Session, *, status: str | None = None, limit: int | None = None
) -> list[TrainingRun]:
    """Runs, newest first."""
    query = select(TrainingRun).order_by(TrainingRun.started_at.desc(), TrainingRun.id.desc())
    if status is not None:
        query = query.where(TrainingRun.status == status)
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


def metrics_for_run(session: Session, run: RunRef) -> list[TrainingMetric]:
    """The metrics of a run, ordered by batch number."""
    run_id = get_training_run(session, run).id
    query = (
        select(TrainingMetric)
        .where(TrainingMetric.training_run_id == run_id)
        .order_by(TrainingMetric.batch_number)
    )
    return list(session.scalars(query))


def metrics_for_version(session: Session, version: VersionRef) -> list[TrainingMetric]:
    """The metrics attached to a model version, by run then batch number."""
    version_id = get_model_version(session, version).id
    query = (
        select(TrainingMetric)
        .where(TrainingMetric.model_version_id == version_id)
        .order_by(TrainingMetric.training_run_id, TrainingMetric.batch_number)
    )
    return list(session.scalars(query))


def attach_metrics_to_version(session: Session, run: RunRef, version: VersionRef) -> int:
    """Point every metric row of `run` at `version`; return how many rows were updated."""
    run_id = get_training_run(session, run).id
    version_id = get_model_version(session, version).id
    result = session.execute(
        update(TrainingMetric)
        .where(TrainingMetric.training_run_id == run_id)
        .values(model_version_id=version_id)
        .execution_options(synchronize_session="fetch")
    )
    return int(result.rowcount or 0)


# Model versions ---------------------------------------------------------------------------


def register_model_version(
    session: Session,
    *,
    version: str,
    sha256_hash: str,
    file_path: str | None = None,
    description: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    registered_model_name: str = DEFAULT_MODEL_NAME,
    registry_version: int | None = None,
    mlflow_run_id: str | None = None,
    training_run: RunRef | None = None,
    timestamp: dt.datetime | None = None,
    attach_metrics: bool = True,
) -> ModelVersion:
    """Record a saved model version (not production). With `training_run`, the run's metric
    rows are attached to it unless `attach_metrics=False`."""
    _label(version, "version", 100)
    _label(registered_model_name, "registered_model_name", 255)
    run_id = None if training_run is None else get_training_run(session, training_run).id
    row = ModelVersion(
        version=version,
        timestamp=_aware(timestamp, "timestamp"),
        sha256_hash=_sha256(sha256_hash, "sha256_hash"),
        file_path=file_path,
        description=description,
        is_production=False,
        metrics=dict(metrics or {}),
        registered_model_name=registered_model_name,
        registry_version=(
            None if registry_version is None else _as_int(registry_version, "registry_version")
        ),
        mlflow_run_id=mlflow_run_id,
        training_run_id=run_id,
        aliases=[],
    )

    def conflict(exc: IntegrityError) -> StoreError:
        if session.scalars(select(ModelVersion.id).where(ModelVersion.version == version)).first():
            return DuplicateError(f"model version {version!r} is already registered")
        if registry_version is not None:
            return DuplicateError(
                f"registry version {registered_model_name} v{registry_version} is already recorded"
            )
        return StoreError(f"cannot register model version {version!r}: {_first_line(exc)}")

    _add_guarded(session, row, conflict)
    if run_id is not None and attach_metrics:
        attach_metrics_to_version(session, run_id, row)
    return row


def find_model_version(session: Session, version: VersionRef) -> ModelVersion | None:
    """The version by label, id or object, or None."""
    if isinstance(version, ModelVersion):
        return None if version.id is None else session.get(ModelVersion, version.id)
    if isinstance(version, str):
        return session.scalars(select(ModelVersion).where(ModelVersion.version == version)).first()
    if isinstance(version, int) and not isinstance(version, bool):
        return session.get(ModelVersion, version)
    raise InvalidDataError(f"a model version is a label, an id or a ModelVersion, not {version!r}")


def get_model_version(session: Session, version: VersionRef) -> ModelVersion:
    """The version by label, id or object; `UnknownVersionError` if there is none."""
    found = find_model_version(session, version)
    if found is None:
        shown = version.version if isinstance(version, ModelVersion) else version
        raise UnknownVersionError(f"model version {shown!r} is not registered")
    return found


def list_model_versions(session: Session, model_name: str | None = None) -> list[ModelVersion]:
    """Versions (of one registered model, or all), oldest first."""
    query = select(ModelVersion).order_by(ModelVersion.timestamp, ModelVersion.id)
    if model_name is not None:
        query = query.where(_model_name_is(model_name))
    return list(session.scalars(query))


def production_version(session: Session, model_name: str | None = None) -> ModelVersion | None:
    """The version marked production (of one registered model, or any), or None."""
    query = select(ModelVersion).where(ModelVersion.is_production.is_(True))
    if model_name is not None:
        query = query.where(_model_name_is(model_name))
    return session.scalars(query.order_by(ModelVersion.id)).first()


def _model_name_is(model_name: str):
    return func.coalesce(ModelVersion.registered_model_name, DEFAULT_MODEL_NAME) == model_name


def _siblings(session: Session, target: ModelVersion) -> list[ModelVersion]:
    """All versions of the target's registered model, row-locked (PostgreSQL) for the update."""
    query = (
        select(ModelVersion)
        .where(_model_name_is(target.model_name))
        .order_by(ModelVersion.id)
        .with_for_update()
    )
    return list(session.scalars(query))


def _move_alias(
    session: Session,
    target: ModelVersion,
    siblings: Sequence[ModelVersion],
    alias: str,
    *,
    moved_by: str | None,
    reason: str | None,
    when: dt.datetime,
) -> ModelAliasEvent | None:
    holders = [v for v in siblings if alias in (v.aliases or []) and v.id != target.id]
    if alias in (target.aliases or []) and not holders:
        return None  # already there: not a move
    for holder in holders:
        holder.aliases = [a for a in holder.aliases if a != alias]
    if alias not in (target.aliases or []):
        target.aliases = [*(target.aliases or []), alias]
    event = ModelAliasEvent(
        model_name=target.model_name,
        alias=alias,
        from_version=holders[0].version if holders else None,
        to_version=target.version,
        moved_at=when,
        moved_by=moved_by,
        reason=reason,
    )
    session.add(event)
    return event


def move_alias(
    session: Session,
    version: VersionRef,
    alias: str,
    *,
    moved_by: str | None = None,
    reason: str | None = None,
    when: dt.datetime | None = None,
) -> ModelVersion:
    """Give `alias` to `version` (taking it from the version of the same model that held it)
    and record the move. Does not change `is_production`. Unknown version: nothing changes."""
    _label(alias, "alias", 100)
    moved_at = _aware(when, "when")
    target = get_model_version(session, version)
    siblings = _siblings(session, target)
    _move_alias(session, target, siblings, alias, moved_by=moved_by, reason=reason, when=moved_at)
    session.flush()
    return target


def promote_version(
    session: Session,
    version: VersionRef,
    *,
    alias: str = PRODUCTION_ALIAS,
    moved_by: str | None = None,
    reason: str | None = None,
    when: dt.datetime | None = None,
) -> ModelVersion:
    """Make `version` the production version of its registered model, demote the others, and
    move the production `alias` to it (recorded in `model_alias_events`).

    An unknown version raises `UnknownVersionError` and changes nothing (the original app
    demoted every version first, leaving no production model at all).
    """
    _label(alias, "alias", 100)
    moved_at = _aware(when, "when")
    target = get_model_version(session, version)  # before any write
    siblings = _siblings(session, target)
    for sibling in siblings:
        sibling.is_production = sibling.id == target.id
    _move_alias(session, target, siblings, alias, moved_by=moved_by, reason=reason, when=moved_at)
    session.flush()
    return target


def remove_alias(
    session: Session,
    model_name: str,
    alias: str,
    *,
    moved_by: str | None = None,
    reason: str | None = None,
    when: dt.datetime | None = None,
) -> ModelAliasEvent | None:
    """Take `alias` away from whichever version of `model_name` holds it (recorded with
    `to_version=None`); None if no version held it. Does not change `is_production`."""
    moved_at = _aware(when, "when")
    query = (
        select(ModelVersion)
        .where(_model_name_is(model_name))
        .order_by(ModelVersion.id)
        .with_for_update()
    )
    holders = [v for v in session.scalars(query) if alias in (v.aliases or [])]
    if not holders:
        return None
    for holder in holders:
        holder.aliases = [a for a in holder.aliases if a != alias]
    event = ModelAliasEvent(
        model_name=model_name,
        alias=alias,
        from_version=holders[0].version,
        to_version=None,
        moved_at=moved_at,
        moved_by=moved_by,
        reason=reason,
    )
    session.add(event)
    session.flush()
    return event


def alias_holder_at(session: Session, model_name: str, alias: str, when: dt.datetime) -> str | None:
    """The version label that held `model_name@alias` at `when` (None if none did).

    Answers "which version was champion last Tuesday" from `model_alias_events`: the latest
    move at or before `when` wins.
    """
    at = _aware(when, "when")
    query = (
        select(ModelAliasEvent.to_version)
        .where(
            ModelAliasEvent.model_name == model_name,
            ModelAliasEvent.alias == alias,
            ModelAliasEvent.moved_at <= at,
        )
        .order_by(ModelAliasEvent.moved_at.desc(), ModelAliasEvent.id.desc())
        .limit(1)
    )
    return session.scalars(query).first()


def alias_history(
    session: Session, model_name: str, alias: str | None = None
) -> list[ModelAliasEvent]:
    """Every alias move of a registered model (optionally one alias), oldest first."""
    query = select(ModelAliasEvent).where(ModelAliasEvent.model_name == model_name)
    if alias is not None:
        query = query.where(ModelAliasEvent.alias == alias)
    return list(session.scalars(query.order_by(ModelAliasEvent.moved_at, ModelAliasEvent.id)))


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


# Backups catalogue ------------------------------------------------------------------------


def record_backup(
    session: Session,
    *,
    backup_id: str,
    manifest_sha256: str,
    location: str,
    total_bytes: int = 0,
    stored_bytes: int = 0,
    file_count: int = 0,
    partition_key: str | None = None,
    signed: bool = False,
    status: str = "created",
    created_at: dt.datetime | None = None,
    error: str | None = None,
) -> Backup:
    """Add a backup to the catalogue; `DuplicateError` if the backup id is taken."""
    _label(backup_id, "backup_id", 100)
    _label(location, "location", 10_000)
    if partition_key is not None:
        _label(partition_key, "partition_key", 100)
    _check_backup_status(status)
    created = _aware(created_at, "created_at")
    backup = Backup(
        backup_id=backup_id,
        created_at=created,
        partition_key=partition_key,
        manifest_sha256=_sha256(manifest_sha256, "manifest_sha256"),
        total_bytes=_count(total_bytes, "total_bytes"),
        stored_bytes=_count(stored_bytes, "stored_bytes"),
        file_count=_count(file_count, "file_count"),
        status=status,
        verified_at=created if status == "verified" else None,
        location=location,
        signed=bool(signed),
        error=error,
    )
    _add_guarded(
        session,
        backup,
        lambda exc: DuplicateError(f"backup {backup_id!r} is already in the catalogue")
        if get_backup_or_none(session, backup_id) is not None
        else StoreError(f"cannot record backup {backup_id!r}: {_first_line(exc)}"),
    )
    return backup


def get_backup_or_none(session: Session, backup_id: str) -> Backup | None:
    return session.scalars(select(Backup).where(Backup.backup_id == backup_id)).first()


def get_backup(session: Session, backup_id: str) -> Backup:
    """The catalogue entry; `UnknownBackupError` if there is none."""
    found = get_backup_or_none(session, backup_id)
    if found is None:
        raise UnknownBackupError(f"backup {backup_id!r} is not in the catalogue")
    return found


def list_backups(
    session: Session,
    *,
    status: str | Iterable[str] | None = None,
    partition_key: str | None = None,
    since: dt.datetime | None = None,
    limit: int | None = None,
    newest_first: bool = True,
) -> list[Backup]:
    """Catalogue entries, newest first by default, filtered by status(es), partition, age."""
    if newest_first:
        order = (Backup.created_at.desc(), Backup.id.desc())
    else:
        order = (Backup.created_at.asc(), Backup.id.asc())
    query = select(Backup).order_by(*order)
    if status is not None:
        statuses = [status] if isinstance(status, str) else list(status)
        for value in statuses:
            _check_backup_status(value)
        query = query.where(Backup.status.in_(statuses))
    if partition_key is not None:
        query = query.where(Backup.partition_key == partition_key)
    if since is not None:
        query = query.where(Backup.created_at >= _aware(since, "since"))
    if limit is not None:
        query = query.limit(_count(limit, "limit"))
    return list(session.scalars(query))


def mark_backup(
    session: Session,
    backup_id: str,
    status: str,
    *,
    error: str | None = None,
    when: dt.datetime | None = None,
) -> Backup:
    """Set a backup's status. "verified" stamps `verified_at` and clears `error`; "failed"
    records `error`. A "deleted" backup cannot change status again."""
    _check_backup_status(status)
    at = _aware(when, "when")
    backup = get_backup(session, backup_id)
    if backup.status == "deleted" and status != "deleted":
        raise StoreError(f"backup {backup_id!r} is deleted; it cannot become {status!r}")
    backup.status = status
    if status == "verified":
        backup.verified_at = at
        backup.error = None
    elif error is not None:
        backup.error = error
    session.flush()
    return backup


def _check_backup_status(status: str) -> None:
    if status not in BACKUP_STATUSES:
        allowed = ", ".join(BACKUP_STATUSES)
        raise InvalidDataError(f"backup status must be one of {allowed}; got {status!r}")


__all__ = [
    "METRIC_FIELDS",
    "PRODUCTION_ALIAS",
    "REQUIRED_METRICS",
    "add_metrics",
    "alias_history",
    "alias_holder_at",
    "attach_metrics_to_version",
    "find_model_version",
    "finish_training_run",
    "get_backup",
    "get_backup_or_none",
    "get_model_version",
    "get_training_run",
    "latest_system_state",
    "list_backups",
    "list_model_versions",
    "list_training_runs",
    "mark_backup",
    "metrics_for_run",
    "metrics_for_version",
    "move_alias",
    "production_version",
    "promote_version",
    "record_backup",
    "register_model_version",
    "remove_alias",
    "save_system_state",
    "start_training_run",
]
