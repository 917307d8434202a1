"""The reads and writes the pipeline makes, as functions taking a `Session`, in one namespace.

They flush but never commit: the caller owns the transaction (use `session_scope`). A function
that refuses (unknown version, duplicate batch, bad value) raises a `StoreError` subclass and
leaves the session usable, with everything written before the call intact (writes that can
collide run inside a SAVEPOINT). One module per concept: `runs` (training runs, metrics,
state snapshots), `versions` (the registry mirror and alias history), `catalogue` (backups).
"""

from .catalogue import get_backup, get_backup_or_none, list_backups, mark_backup, record_backup
from .runs import (
    METRIC_FIELDS,
    REQUIRED_METRICS,
    add_metrics,
    copy_metrics,
    finish_training_run,
    get_training_run,
    latest_system_state,
    list_training_runs,
    metrics_for_run,
    save_system_state,
    set_mlflow_run,
    start_training_run,
)
from .versions import (
    PRODUCTION_ALIAS,
    alias_history,
    alias_holder_at,
    alias_holders,
    attach_metrics_to_version,
    find_model_version,
    get_model_version,
    list_model_versions,
    lock_aliases,
    metrics_for_version,
    move_alias,
    production_version,
    promote_version,
    record_alias_move,
    register_model_version,
    remove_alias,
)

__all__ = [
    "METRIC_FIELDS",
    "PRODUCTION_ALIAS",
    "REQUIRED_METRICS",
    "add_metrics",
    "alias_history",
    "alias_holder_at",
    "alias_holders",
    "copy_metrics",
    "lock_aliases",
    "record_alias_move",
    "set_mlflow_run",
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
