"""The project's SQL store: training runs, per-batch metrics, model versions (mirroring the
MLflow registry, with an alias history), trainer state snapshots and the backup catalogue.

    from quadra_pipeline.store import make_engine, ensure_schema, session_scope, repository

    engine = make_engine()              # DATABASE_URL, or SQLite under QUADRA_HOME
    ensure_schema(engine)               # Alembic upgrade to head if needed
    with session_scope(engine) as session:
        run = start_training_run(session, field_size=100, seed=0)
        add_metrics(session, run, rows)

SQLite (development) and PostgreSQL (production) behave the same; see `session` for the
engine settings and `migrate` for migrations.
"""

from . import migrate, repository
from .errors import (
    DuplicateError,
    DuplicateMetricsError,
    InvalidDataError,
    NotFoundError,
    SchemaError,
    StoreError,
    UnknownBackupError,
    UnknownRunError,
    UnknownVersionError,
)
from .migrate import current, downgrade, ensure_schema, head_revision, upgrade
from .models import (
    BACKUP_STATUSES,
    DEFAULT_MODEL_NAME,
    RUN_STATUSES,
    Backup,
    Base,
    ModelAliasEvent,
    ModelVersion,
    SystemState,
    TrainingMetric,
    TrainingRun,
)
from .repository import (
    METRIC_FIELDS,
    PRODUCTION_ALIAS,
    REQUIRED_METRICS,
    add_metrics,
    alias_history,
    alias_holder_at,
    attach_metrics_to_version,
    find_model_version,
    finish_training_run,
    get_backup,
    get_model_version,
    get_training_run,
    latest_system_state,
    list_backups,
    list_model_versions,
    list_training_runs,
    mark_backup,
    metrics_for_run,
    metrics_for_version,
    move_alias,
    production_version,
    promote_version,
    record_backup,
    register_model_version,
    remove_alias,
    save_system_state,
    start_training_run,
)
from .session import (
    check_connection,
    make_engine,
    make_sessionmaker,
    mask_url,
    normalize_url,
    session_scope,
)

__all__ = [
    "BACKUP_STATUSES",
    "DEFAULT_MODEL_NAME",
    "METRIC_FIELDS",
    "PRODUCTION_ALIAS",
    "REQUIRED_METRICS",
    "RUN_STATUSES",
    "Backup",
    "Base",
    "DuplicateError",
    "DuplicateMetricsError",
    "InvalidDataError",
    "ModelAliasEvent",
    "ModelVersion",
    "NotFoundError",
    "SchemaError",
    "StoreError",
    "SystemState",
    "TrainingMetric",
    "TrainingRun",
    "UnknownBackupError",
    "UnknownRunError",
    "UnknownVersionError",
    "add_metrics",
    "alias_history",
    "alias_holder_at",
    "attach_metrics_to_version",
    "check_connection",
    "current",
    "downgrade",
    "ensure_schema",
    "find_model_version",
    "finish_training_run",
    "get_backup",
    "get_model_version",
    "get_training_run",
    "head_revision",
    "latest_system_state",
    "list_backups",
    "list_model_versions",
    "list_training_runs",
    "make_engine",
    "make_sessionmaker",
    "mark_backup",
    "mask_url",
    "metrics_for_run",
    "metrics_for_version",
    "migrate",
    "move_alias",
    "normalize_url",
    "production_version",
    "promote_version",
    "record_backup",
    "register_model_version",
    "remove_alias",
    "repository",
    "save_system_state",
    "session_scope",
    "start_training_run",
    "upgrade",
]
