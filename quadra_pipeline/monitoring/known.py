"""What the exporter asks the Dagster instance about, by name (it never loads the definitions).

`quadra_pipeline_tests/monitoring/test_exporter.py` checks that each name exists in the code
location, so a renamed asset or check fails a test instead of a metric going quiet. A new asset or
check is monitored once it is named here; a new job is seen anyway (any job with a run among the
newest 200).
"""

from __future__ import annotations

JOBS = ("training_job", "sweep_job", "promote_model_job", "backup_job", "base_backup_job")

ASSETS = (
    "corpus",
    "quadra_model",
    "training_metrics",
    "system_state",
    "model_evaluation",
    "registered_model",
    "sweep_registered_model",
    "champion_model",
    "hyperparameter_sweep",
    "backup",
    "offsite_backup",
    "wal_archive",
    "sqlite_replica",
)

CHECKS = (
    ("quadra_model", "weights_finite"),
    ("training_metrics", "one_row_per_batch"),
    ("registered_model", "checkpoint_sha256_matches"),
    ("registered_model", "not_worse_than_champion"),
    ("sweep_registered_model", "checkpoint_sha256_matches"),
    ("sweep_registered_model", "not_worse_than_champion"),
    ("backup", "integrity"),
    ("backup", "restore_drill"),
    ("offsite_backup", "offsite_integrity"),
    ("wal_archive", "replication_lag"),
    ("wal_archive", "pitr_drill"),
    ("sqlite_replica", "replication_lag"),
)

#: The asset whose materialisations are backups, and the checks a backup must pass to be good.
BACKUP_ASSET = "backup"
BACKUP_CHECKS = ("integrity", "restore_drill")
#: Checks whose evaluations carry the replication's lag (metadata `lag_seconds`): exported as
#: quadra_replication_lag_seconds{asset, check}.
REPLICATION_CHECKS = (("wal_archive", "replication_lag"), ("sqlite_replica", "replication_lag"))
#: The assets whose materialisation metadata holds a registered version's gate result.
REGISTERED_ASSETS = ("registered_model", "sweep_registered_model")
