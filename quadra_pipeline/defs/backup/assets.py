"""Backups as an hourly-partitioned asset, with integrity and restore-drill checks.

The schedule is built from the partitioned job (cron `0 * * * *`) and runs as soon as the
daemon runs: it replaces the original's cron line. At the top of each hour it runs the
partition of the hour that just ended. A backup can only copy the system as it is now, so a
partition whose hour is past (a backfill) is refused before anything is copied: a missed hour
shows as a missing partition, and stays missing (`backfill_problem`).

Only a good backup is materialised. The asset runs the backup, then both checks, and records
the materialisation only when the backup passed both (`BackupService.hourly`); a bad backup
yields its failed checks and fails the run, without a materialisation. Dagster's freshness
policy looks at the newest materialisation whatever its checks said (Dagster OSS 1.13:
`TimeWindowFreshnessPolicyEvaluator` reads `last_materialization`; a blocking check only fails
the step after the materialisation is recorded), so this is what makes "fresh" mean "a good
backup within 70 minutes". Both checks are blocking (declared so: nothing runs after a failed
one). The asset sits downstream of what it protects.
"""

import datetime as dt

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
#: The schedule runs an hour's partition when it ends; a run queued behind another may start
#: later, up to this much: an hour (by then the next hour's run is due).
LATE_START = dt.timedelta(hours=1)


def backfill_problem(partition_key: str, now: dt.datetime | None = None) -> str | None:
    """Why a run of this hour's partition must not back up now (None: it may). The partition of
    the hour it is and that of the hour that just ended (the schedule's, started on time or up to
    `LATE_START` late) may; an earlier one would label a copy of the present with a past hour."""
    now = now or dt.datetime.now(dt.timezone.utc)
    window = hourly_partitions.time_window_for_partition_key(partition_key)
    stamp = now.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if window.start > now:
        return f"refusing to back up partition {partition_key} at {stamp}: its hour is in the future"
    if now < window.end + LATE_START:
        return None
    ended = (now.astimezone(dt.timezone.utc).replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=1))
    return (
        f"refusing to back up partition {partition_key} at {stamp}: a backup can only copy the system as it is now, so a "
        "backup labelled with a past hour would be a copy of the present under a false date; a missed hour stays missing "
        f"(its RPO was not met). Back up now with the partition of the hour that just ended ({ended:%Y-%m-%d-%H:00}) "
        "or quadra backup create."
    )


def backup_service(data_home: DataHome, store: StoreResource,
                   context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext):
    """The backup service of this data home, logging to the step's log."""
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
    "database and artifacts, and the checkpoints (QUADRA_BACKUP_DIR); one per hour. Materialised only "
    "when the backup is good (its integrity and restore drill passed).",
    pool="backup",
    # Fails once the newest good backup (only good ones are materialised) is older than the RPO
    # plus a few minutes for the hourly run itself (a warn window at exactly 1 h would flicker
    # every hour until the run finished).
    freshness_policy=dg.FreshnessPolicy.time_window(fail_window=RPO + dt.timedelta(minutes=10)),
    check_specs=[
        dg.AssetCheckSpec(
            "integrity",
            asset=BACKUP,
            blocking=True,
            description="The manifest's signature, name, sidecar and file list; every chunk present with its size; the new "
            "chunks re-read, and this hour's share of every stored chunk (all of them within QUADRA_BACKUP_VERIFY_RUNS "
            "hours, whichever backup holds them); the history (rollback, deleted or replayed backups).",
        ),
        dg.AssetCheckSpec(
            "restore_drill",
            asset=BACKUP,
            blocking=True,
            description="Restore both databases into scratch places and compare row counts; restore the champion's files, "
            "check its SHA-256 and signature, load it.",
        ),
    ],
)
def backup(context: dg.AssetExecutionContext, data_home: DataHome, store: StoreResource):
    problem = backfill_problem(context.partition_key)
    if problem:
        raise dg.Failure(description=problem, allow_retries=False)
    service = backup_service(data_home, store, context)
    run = service.hourly(partition_key=context.partition_key)
    result, report, rotation, drill = run.create, run.report, run.rotation, run.drill
    manifest = result.manifest
    integrity = dg.AssetCheckResult(
        check_name="integrity",
        passed=run.integrity_ok,
        metadata={"backup_id": manifest.backup_id, "files_checked": report.files_checked,
                  "chunks_checked": report.chunks_checked, "new_chunks_read": report.chunks_read,
                  "new_bytes_read": report.bytes_checked, **rotation.metadata(),
                  "damaged_backups": dg.MetadataValue.json(rotation.damaged_backups),
                  "problems": dg.MetadataValue.json(run.integrity_problems)},
    )
    drilled = dg.AssetCheckResult(
        check_name="restore_drill",
        passed=drill.ok,
        metadata={"backup_id": manifest.backup_id, "problems": dg.MetadataValue.json(drill.problems),
                  "checked": dg.MetadataValue.json(drill.checked), "seconds": round(drill.seconds, 3),
                  "scratch_bytes": dg.MetadataValue.int(int(drill.checked.get("scratch_bytes", 0)))},
    )
    if not run.good:
        yield integrity
        yield drilled
        raise dg.Failure(
            description=f"backup {manifest.backup_id} is bad ({run.why_bad()[:1500]}); it is not materialised, so the "
            "backup asset's freshness counts good backups only; the catalogue marks it failed",
            metadata={"backup_id": manifest.backup_id, "good": False},
            allow_retries=False,
        )
    yield dg.MaterializeResult(
        metadata={
            "backup_id": manifest.backup_id,
            "good": True,  # only good backups are materialised (integrity and drill passed)
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
    yield integrity
    yield drilled


backup_job = dg.define_asset_job(
    name="backup_job",
    # The backup and what follows it: its off-site copy (`offsite.py`).
    selection=dg.AssetSelection.assets(BACKUP).downstream(),
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
