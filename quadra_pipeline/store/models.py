"""The project's SQL schema as SQLAlchemy 2.0 typed models.

Tables (see `migrations/versions/0001_initial.py`, which must create exactly this):

- `training_runs`: one row per training run (a Dagster run or a CLI run); ties the rest together.
- `training_metrics`: one row per batch of a run (every per-batch metric of the model spec).
- `model_versions`: saved models, mirrored from the MLflow registry; one may be production.
- `model_alias_events`: every move of a registry alias (append-only audit log).
- `system_states`: snapshots of the trainer's state (the original app's status table).
- `backups`: the backup catalogue.

All datetimes are timezone-aware UTC (`UTCDateTime`): naive datetimes are refused on write, and
values read back always carry `timezone.utc`, on SQLite as on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

#: Constraint and index names, fixed so migrations (and SQLite batch mode) can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

RUN_STATUSES = ("running", "succeeded", "failed", "cancelled")
BACKUP_STATUSES = ("created", "verified", "failed", "deleted")

#: The registry's model name used when a version was saved without one.
DEFAULT_MODEL_NAME = "quadra-matrix"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """`DateTime(timezone=True)` that only accepts aware datetimes and always returns UTC.

    PostgreSQL stores `timestamptz`. SQLite has no time zones: values are converted to UTC and
    stored without an offset (so text comparison orders them correctly), and UTC is put back on
    read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
            raise ValueError(
                f"naive datetime {value.isoformat()} refused: pass a timezone-aware datetime "
                "(e.g. datetime.now(timezone.utc))"
            )
        value = value.astimezone(dt.timezone.utc)
        if dialect.name == "sqlite":
            value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        dt.datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[Any]: JSON(),
        list[float]: JSON(),
        list[str]: JSON(),
    }


class TrainingRun(Base):
    """One training run. `external_run_id` is the Dagster run id (NULL for CLI runs)."""

    __tablename__ = "training_runs"
    __table_args__ = (
        CheckConstraint(_in("status", RUN_STATUSES), name="status"),
        Index(None, "started_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_run_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]
    status: Mapped[str] = mapped_column(String(20), default="running")
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    field_size: Mapped[int | None] = mapped_column(Integer)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    #: Where the training data came from (dataset name, split, revision, row range, ...).
    source: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    #: The MLflow run that receives this run's metrics (completed from `training_metrics`
    #: when the process died before sending its last group).
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))

    metrics: Mapped[list[TrainingMetric]] = relationship(
        back_populates="training_run",
        order_by="TrainingMetric.batch_number",
        viewonly=True,
    )

    def __repr__(self) -> str:
        return f"<TrainingRun id={self.id} external={self.external_run_id!r} status={self.status}>"


class TrainingMetric(Base):
    """The metrics of one batch of one run (columns of the original plus the model spec's)."""

    __tablename__ = "training_metrics"
    __table_args__ = (
        UniqueConstraint("training_run_id", "batch_number"),
        Index(None, "model_version_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    training_run_id: Mapped[int] = mapped_column(
        ForeignKey("training_runs.id", ondelete="CASCADE")
    )
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    timestamp: Mapped[dt.datetime] = mapped_column(default=utcnow)
    batch_number: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float] = mapped_column(Float)
    reward: Mapped[float] = mapped_column(Float)
    variance: Mapped[float] = mapped_column(Float)
    field_mean: Mapped[float] = mapped_column(Float)
    learning_rate: Mapped[float | None] = mapped_column(Float)
    k_clusters: Mapped[int | None] = mapped_column(Integer)
    speedup_factor: Mapped[float | None] = mapped_column(Float)
    reward_per_item: Mapped[float | None] = mapped_column(Float)
    resonance: Mapped[float | None] = mapped_column(Float)
    stability: Mapped[float | None] = mapped_column(Float)
    throttle_events: Mapped[int | None] = mapped_column(Integer)
    texts: Mapped[int | None] = mapped_column(Integer)
    batch_seconds: Mapped[float | None] = mapped_column(Float)

    training_run: Mapped[TrainingRun] = relationship(back_populates="metrics", viewonly=True)
    model_version: Mapped[ModelVersion | None] = relationship(viewonly=True)

    def __repr__(self) -> str:
        return (
            f"<TrainingMetric run={self.training_run_id} batch={self.batch_number} "
            f"loss={self.loss:.4g} reward={self.reward:.4g}>"
        )


class ModelVersion(Base):
    """A saved model version (the original's table plus a mirror of the MLflow registry)."""

    __tablename__ = "model_versions"
    __table_args__ = (
        CheckConstraint("length(sha256_hash) = 64", name="sha256_hash_length"),
        UniqueConstraint("registered_model_name", "registry_version"),
        Index(None, "training_run_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(100), unique=True)
    timestamp: Mapped[dt.datetime] = mapped_column(default=utcnow)
    sha256_hash: Mapped[str] = mapped_column(String(64))
    file_path: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    is_production: Mapped[bool] = mapped_column(Boolean, default=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    registered_model_name: Mapped[str | None] = mapped_column(String(255))
    registry_version: Mapped[int | None] = mapped_column(Integer)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    training_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("training_runs.id", ondelete="SET NULL")
    )
    #: Registry aliases this version currently holds (e.g. ["champion"]).
    aliases: Mapped[list[str]] = mapped_column(default=list)

    training_run: Mapped[TrainingRun | None] = relationship(viewonly=True)

    @property
    def model_name(self) -> str:
        return self.registered_model_name or DEFAULT_MODEL_NAME

    def __repr__(self) -> str:
        flag = " production" if self.is_production else ""
        return f"<ModelVersion {self.version!r} id={self.id}{flag}>"


class ModelAliasEvent(Base):
    """One move of a registry alias: `alias` went from `from_version` to `to_version`.

    Append-only. `from_version` is NULL when the alias was first set, `to_version` NULL when it
    was removed. Versions are stored as labels (not foreign keys) so history survives deletes.
    """

    __tablename__ = "model_alias_events"
    __table_args__ = (Index(None, "model_name", "alias", "moved_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(255))
    alias: Mapped[str] = mapped_column(String(100))
    from_version: Mapped[str | None] = mapped_column(String(100))
    to_version: Mapped[str | None] = mapped_column(String(100))
    moved_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    moved_by: Mapped[str | None] = mapped_column(String(255))
    reason: Mapped[str | None] = mapped_column(Text)

    def __repr__(self) -> str:
        return (
            f"<ModelAliasEvent {self.model_name}@{self.alias}: {self.from_version!r} -> "
            f"{self.to_version!r} at {self.moved_at.isoformat()}>"
        )


class SystemState(Base):
    """A snapshot of the trainer's state (the original's `system_states`), tied to its run."""

    __tablename__ = "system_states"
    __table_args__ = (Index(None, "timestamp"), Index(None, "training_run_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    timestamp: Mapped[dt.datetime] = mapped_column(default=utcnow)
    field_size: Mapped[int] = mapped_column(Integer)
    iteration_count: Mapped[int] = mapped_column(Integer, default=0)
    is_running: Mapped[bool] = mapped_column(Boolean, default=False)
    is_initialized: Mapped[bool] = mapped_column(Boolean, default=False)
    current_version: Mapped[str | None] = mapped_column(String(100))
    loss_history: Mapped[list[float]] = mapped_column(default=list)
    reward_history: Mapped[list[float]] = mapped_column(default=list)
    variance_history: Mapped[list[float]] = mapped_column(default=list)
    field_mean_history: Mapped[list[float]] = mapped_column(default=list)
    training_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("training_runs.id", ondelete="SET NULL")
    )

    training_run: Mapped[TrainingRun | None] = relationship(viewonly=True)

    def __repr__(self) -> str:
        return f"<SystemState id={self.id} iteration={self.iteration_count} at {self.timestamp}>"


class AliasCheck(Base):
    """When the registry's aliases were last compared with `model_alias_events`, per model.

    A move made outside the pipeline (MLflow UI, REST, another client) is recorded when a check
    sees it, so its time is known to lie between the previous check and that one.
    """

    __tablename__ = "alias_checks"

    model_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    checked_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"<AliasCheck {self.model_name} at {self.checked_at}>"


class Backup(Base):
    """One entry of the backup catalogue."""

    __tablename__ = "backups"
    __table_args__ = (
        CheckConstraint(_in("status", BACKUP_STATUSES), name="status"),
        CheckConstraint("length(manifest_sha256) = 64", name="manifest_sha256_length"),
        Index(None, "created_at"),
        Index(None, "partition_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    backup_id: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    partition_key: Mapped[str | None] = mapped_column(String(100))
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Bytes actually written by this backup (new content; the rest was deduplicated).
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    file_count: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(20), default="created")
    verified_at: Mapped[dt.datetime | None]
    location: Mapped[str] = mapped_column(Text)
    signed: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)

    def __repr__(self) -> str:
        return f"<Backup {self.backup_id!r} status={self.status} at {self.created_at}>"


__all__ = [
    "AliasCheck",
    "BACKUP_STATUSES",
    "DEFAULT_MODEL_NAME",
    "RUN_STATUSES",
    "Backup",
    "Base",
    "ModelAliasEvent",
    "ModelVersion",
    "SystemState",
    "TrainingMetric",
    "TrainingRun",
    "UTCDateTime",
    "utcnow",
]
