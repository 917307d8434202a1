"""Continuous archiving in the asset graph: PostgreSQL's base backups on a schedule, and the
replication's health as a check that fails when the WAL receiver lags (`backup/wal.py`).

`wal_archive` is the archive (base backups and the streamed WAL on another host's volume). Its
base backups are taken by `base_backup_job` (daily, like the hourly backup a schedule, with the
backup identity), pruned by the backup retention. Its check `replication_lag` fails when the
WAL receiver is more than `QUADRA_REPLICATION_MAX_LAG` (60 s) behind the server, or not
streaming at all; `replication_lag_sensor` evaluates it every 30 s from the code server, so the
UI always shows the replication's health without a run per minute. Its check `pitr_drill` runs
in `base_backup_job` right after the base backup (so daily): a real point-in-time recovery to a
minute ago on a throwaway server, every database and the champion checked (`backup/wal_drill.py`);
non-blocking, since a failed drill says the recovery path is broken, not that the base backup is. Where continuous archiving
is not configured (the embedded SQLite default) nothing here runs; Litestream's replication of
the SQLite databases has the same check on `sqlite_replica` (`quadra_pipeline/replication/`).
"""

import datetime as dt
import time
from collections.abc import Iterator

import dagster as dg

from ...settings import load_settings
from ..common import OWNER, identity_tags

WAL_ARCHIVE = dg.AssetKey("wal_archive")
SQLITE_REPLICA = dg.AssetKey("sqlite_replica")
SENSOR_SECONDS = 30


def _configured() -> bool:
    settings = load_settings()
    return settings.wal_archive is not None


@dg.asset(
    key=WAL_ARCHIVE,
    group_name="backup",
    kinds={"postgres"},
    owners=[OWNER],
    pool="backup",
    # Not configured (the embedded SQLite default): the step says so and materialises nothing, so
    # `dagster asset materialize --select '*'` works there too.
    output_required=False,
    description="PostgreSQL's continuous archive: base backups (pg_basebackup) and the WAL streamed since "
    "(pg_receivewal, the stack's `wal` service), on another host; any second of the last 7 days can be recovered.",
)
def wal_archive(context: dg.AssetExecutionContext) -> Iterator[dg.MaterializeResult]:
    from ...backup.wal import kept_range, prune, take_base_backup

    settings = load_settings()
    if settings.wal_archive is None and not settings.wal_url:
        context.log.warning("continuous archiving is not configured (QUADRA_WAL_ARCHIVE, the archive folder, and "
                            "QUADRA_WAL_URL_FILE, a role with REPLICATION): no base backup taken, nothing materialised")
        return
    if settings.wal_archive is None or not settings.wal_url:
        raise dg.Failure("continuous archiving is half configured: set both QUADRA_WAL_ARCHIVE (the archive folder) "
                         "and QUADRA_WAL_URL_FILE (a role with REPLICATION)")
    started = time.perf_counter()
    backup = take_base_backup(settings.wal_url, settings.wal_archive, timeout=settings.backup_dump_timeout)
    removed = prune(settings.wal_archive)
    kept = kept_range(settings.wal_archive)
    context.log.info(f"base backup {backup.name}: {backup.bytes} bytes; kept: {kept.describe()}; "
                     f"pruned {len(removed['base_backups'])} base backup(s), {len(removed['segments'])} WAL segment(s)")
    yield dg.MaterializeResult(metadata={
        "base_backup": backup.name,
        "bytes": dg.MetadataValue.int(backup.bytes),
        "seconds": round(time.perf_counter() - started, 2),
        "recoverable": kept.describe(),
        "pruned_base_backups": dg.MetadataValue.json(removed["base_backups"]),
        "pruned_segments": len(removed["segments"]),
    })


@dg.asset_check(asset=WAL_ARCHIVE, name="replication_lag",
                description="The WAL receiver is streaming and at most QUADRA_REPLICATION_MAX_LAG (60 s) behind the server "
                "(evaluated every 30 s by replication_lag_sensor).")
def replication_lag_check() -> dg.AssetCheckResult:
    return _lag_evaluation_result()


def _lag_evaluation_result() -> dg.AssetCheckResult:
    from ...backup.wal import WalArchiveError, replication_lag

    settings = load_settings()
    limit = settings.replication_max_lag
    try:
        lag = replication_lag(settings.database_url)
    except WalArchiveError as exc:
        return dg.AssetCheckResult(passed=False, description=str(exc), metadata={"limit_seconds": limit})
    except Exception as exc:  # noqa: BLE001 - a server that cannot be asked is a failed check, said
        return dg.AssetCheckResult(passed=False, description=f"cannot read the replication's state: {str(exc).splitlines()[0][:300]}",
                                   metadata={"limit_seconds": limit})
    return dg.AssetCheckResult(
        passed=lag <= limit,
        description=f"the WAL receiver is {lag:.1f} s behind (limit {limit:g} s)",
        metadata={"lag_seconds": round(lag, 3), "limit_seconds": limit},
    )


#: How far back the daily drill recovers to: a recent instant that is surely in the archive.
DRILL_BEHIND = dt.timedelta(minutes=1)


@dg.asset_check(asset=WAL_ARCHIVE, name="pitr_drill", blocking=False,
                description="After each base backup: the archive recovered to a minute ago on a throwaway PostgreSQL "
                "server in a temporary folder; every database answers and has its tables, the champion's SHA-256, "
                "signature and load are checked; then the server is stopped and the folder removed.")
def pitr_drill_check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    from ...backup.wal import WalArchiveError, kept_range
    from ...backup.wal_drill import wal_drill

    settings = load_settings()
    target: dt.datetime | None = dt.datetime.now(dt.UTC) - DRILL_BEHIND
    kept = kept_range(settings.wal_archive)
    notes = []
    if kept.continuous_from is None or target < kept.continuous_from:
        # The first base backup of a new archive: nothing a minute old to recover to yet.
        notes.append(f"the archive keeps {kept.describe()}: nothing from a minute ago, so recovered as far as the WAL goes")
        target = None
    try:
        report = wal_drill(settings, target, log=context.log.info)
    except WalArchiveError as exc:
        return dg.AssetCheckResult(passed=False, description=str(exc), metadata={
            "target": target.isoformat() if target else "newest"})
    as_dict = report.as_dict()
    return dg.AssetCheckResult(
        passed=report.ok,
        description=report.summary(),
        metadata={
            "target": as_dict["target"],
            "recovered_to": as_dict["recovered_to"] or "-",
            "seconds": round(report.seconds, 2),
            "champion_version": dg.MetadataValue.int(report.champion_version) if report.champion_version else "none",
            "checks": dg.MetadataValue.json(as_dict["checks"]),
            "notes": dg.MetadataValue.json(notes + report.notes),
        },
    )


sqlite_replica = dg.AssetSpec(
    SQLITE_REPLICA,
    group_name="backup",
    kinds={"sqlite"},
    owners=[OWNER],
    description="The embedded default's continuous copy: Litestream replicating the SQLite databases (the project's, "
    "MLflow's, the Dagster instance's) to QUADRA_REPLICA; `make dev` runs it when a replica is configured.",
)


@dg.asset_check(asset=SQLITE_REPLICA, name="replication_lag",
                description="Every replicated SQLite database is at most QUADRA_REPLICATION_MAX_LAG (60 s) behind in its "
                "replica (evaluated every 30 s by replication_lag_sensor).")
def sqlite_replication_lag_check() -> dg.AssetCheckResult:
    return _sqlite_lag_result()


def _sqlite_lag_result() -> dg.AssetCheckResult:
    from ...replication import lag

    settings = load_settings()
    lags = lag.measure_lags(settings)
    problems = lag.lag_problems(lags, settings.replication_max_lag)
    return dg.AssetCheckResult(
        passed=not problems,
        description="; ".join(problems) if problems else f"{len(lags)} database(s) replicated within {settings.replication_max_lag:g} s",
        metadata={item.name: dg.MetadataValue.json(item.as_metadata()) for item in lags},
    )


@dg.sensor(
    name="replication_lag_sensor",
    minimum_interval_seconds=SENSOR_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every 30 s: the replication's lag, as the replication_lag check of wal_archive (PostgreSQL archived "
    "continuously: QUADRA_WAL_ARCHIVE) and of sqlite_replica (Litestream: QUADRA_REPLICA).",
)
def replication_lag_sensor(context: dg.SensorEvaluationContext):
    evaluations = []
    for configured, asset, result in ((_configured, WAL_ARCHIVE, _lag_evaluation_result),
                                      (lambda: load_settings().replica is not None, SQLITE_REPLICA, _sqlite_lag_result)):
        if configured():
            outcome = result()
            evaluations.append(dg.AssetCheckEvaluation(
                asset_key=asset, check_name="replication_lag", passed=outcome.passed,
                metadata=outcome.metadata, description=outcome.description,
            ))
    if not evaluations:
        return dg.SkipReason("no replication is configured here (QUADRA_WAL_ARCHIVE, QUADRA_REPLICA)")
    return dg.SensorResult(asset_events=evaluations)


base_backup_job = dg.define_asset_job(
    name="base_backup_job",
    selection=[WAL_ARCHIVE],  # with its checks: pitr_drill runs right after the base backup
    description="A base backup of PostgreSQL into the continuous archive, then retention, then the drill of a "
    "point-in-time recovery (pitr_drill).",
    tags={"quadra/backup": "true", "quadra/steps-in-run-process": "true", **identity_tags("backup")},
)

daily_base_backup_schedule = dg.ScheduleDefinition(
    name="daily_base_backup_schedule",
    job=base_backup_job,
    cron_schedule="30 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING if _configured() else dg.DefaultScheduleStatus.STOPPED,
    description="Every day at 02:30 UTC: a base backup into PostgreSQL's continuous archive (running where it is configured).",
)
