"""Backups as an hourly-partitioned asset, with integrity and restore-drill checks.

The schedule is built from the partitioned job (cron `0 * * * *`) and runs as soon as the
daemon runs: it replaces the original's cron line, and a missed hour shows in the UI as a
missing partition that can be backfilled. (A backup can only copy the system as it is now: a
backfilled hour records the state at the time of the backfill, labelled with that hour.) The
asset sits downstream of what it protects.
"""

import datetime as dt
import tempfile
from pathlib import Path

import dagster as dg

from ..common import (
    CHAMPION,
    METRICS,
    MODEL,
    OWNER,
    REGISTERED,
    STEPS_IN_RUN_PROCESS_TAG,
    SYSTEM_STATE,
    identity_tags,
)
from ..resources import DataHome, StoreResource

BACKUP = dg.AssetKey("backup")
BACKUP_TAG = "quadra/backup"  # dagster.yaml: one backup run at a time (plus the lock on disk)
RPO = dt.timedelta(hours=1)

hourly_partitions = dg.HourlyPartitionsDefinition(start_date="2026-11-29-00:00", timezone="UTC")


def _service(data_home: DataHome, store: StoreResource, context: dg.AssetExecutionContext):
    from ...backup.service import BackupService

    return BackupService(data_home.settings(), catalogue_engine=store.engine(), log_fn=context.log.info)


@dg.asset(
    key=BACKUP,
    partitions_def=hourly_partitions,
    deps=[MODEL, METRICS, SYSTEM_STATE, REGISTERED, CHAMPION],
    group_name="backup",
    kinds={"python", "sqlite"},
    owners=[OWNER],
    description="A consistent, signed, content-addressed backup of the project database, the MLflow "
    "database and artifacts, and the checkpoints (QUADRA_BACKUP_DIR); one per hour.",
    pool="backup",
    # Fails once the newest backup is older than the RPO plus a few minutes for the hourly run
    # itself (a warn window at exactly 1 h would flicker every hour until the run finished).
    freshness_policy=dg.FreshnessPolicy.time_window(fail_window=RPO + dt.timedelta(minutes=10)),
    check_specs=[
        dg.AssetCheckSpec(
            "integrity",
            asset=BACKUP,
            description="The manifest's signature, name, sidecar and file list; every chunk present with its size; the new "
            "chunks and a rotating share of the old ones re-read; the history (rollback, deleted or replayed backups).",
        ),
        dg.AssetCheckSpec(
            "restore_drill",
            asset=BACKUP,
            description="Restore both databases into scratch places and compare row counts; restore the champion's files, "
            "check its SHA-256 and signature, load it.",
        ),
    ],
)
def backup(context: dg.AssetExecutionContext, data_home: DataHome, store: StoreResource):
    service = _service(data_home, store, context)
    result = service.create(partition_key=context.partition_key)
    manifest = result.manifest
    yield dg.MaterializeResult(
        metadata={
            "backup_id": manifest.backup_id,
            "manifest_sha256": result.manifest_sha256,
            "files": result.file_count,
            "total_bytes": result.total_bytes,
            "stored_bytes": dg.MetadataValue.int(result.stored_bytes),
            "new_chunks": len(result.added_chunks),
            "format_version": manifest.format_version,
            "signed": manifest.signature is not None,
            "seconds": round(result.seconds, 3),
            "location": dg.MetadataValue.path(str(service.repository.root)),
        }
    )
    # What this backup wrote is re-read once; of the rest, this hour's share of the rotation
    # (every chunk within QUADRA_BACKUP_VERIFY_RUNS hours); the history and the catalogue too.
    report, history = service.verify([manifest.backup_id], deep="subset", also_read=set(result.added_chunks))
    problems = report.problems + history.problems
    yield dg.AssetCheckResult(
        check_name="integrity",
        passed=report.ok and history.ok,
        metadata={"files_checked": report.files_checked, "chunks_checked": report.chunks_checked,
                  "chunks_read": report.chunks_read, "bytes_reread": report.bytes_checked,
                  "problems": dg.MetadataValue.json(problems)},
    )
    from ...backup.drill import restore_drill

    with tempfile.TemporaryDirectory(prefix="quadra-drill-") as tmp:
        drill = restore_drill(service, manifest.backup_id, Path(tmp))
    yield dg.AssetCheckResult(
        check_name="restore_drill",
        passed=drill.ok,
        metadata={"problems": dg.MetadataValue.json(drill.problems), "checked": dg.MetadataValue.json(drill.checked),
                  "seconds": round(drill.seconds, 3)},
    )


backup_job = dg.define_asset_job(
    name="backup_job",
    selection=[BACKUP],
    partitions_def=hourly_partitions,
    # The backup reads the data home and writes the repository on the volumes of the host its
    # run was launched on: a Celery worker host has neither, so its step stays in the run.
    # Its run holds the backup identity's secrets only (the Compose stack's run launcher).
    tags={BACKUP_TAG: "true", STEPS_IN_RUN_PROCESS_TAG: "true", **identity_tags("backup")},
    description="Back up everything needed to recover, for one hour's partition.",
)

hourly_backup_schedule = dg.build_schedule_from_partitioned_job(
    backup_job,
    name="hourly_backup_schedule",
    minute_of_hour=0,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every hour at :00 (replaces the original's cron line); runs whenever the daemon runs.",
)
