"""The exporter's sources: each reads one system and returns metric families and facts.

| source | reads | as |
|---|---|---|
| `dagster` | run records, latest materialisations, asset-check evaluations, daemon heartbeats | the instance of `DAGSTER_HOME` (Dagster's storage) |
| `store` | `training_runs`, `training_metrics` | `DATABASE_URL`, read-only (SQLite opened `mode=ro`; PostgreSQL in a read-only transaction) |
| `backups` | the repository's manifests (`QUADRA_BACKUP_DIR/manifests/`), the volume's free space | file listing and `statvfs`: no key, no write |
| `mlflow` | the registered model's aliases and the champion's version tags | `MLFLOW_TRACKING_URI` as `MLFLOW_TRACKING_USERNAME` (a reader) |

**A good backup** is one whose `backup` materialisation's `integrity` and `restore_drill` check
evaluations (those of the run that materialised it) both passed, and whose manifest is still in
the repository at `QUADRA_BACKUP_DIR` (`manifests/<id>.json`: not pruned, not lost). The backup
asset materialises only backups that passed both (a bad one yields its failed checks and fails
its run); the checks are still read, so a materialisation made before that rule counts only if
it passed them. Its time is when the backup was taken: the time its id was made from (the manifest's
`created_at`, to the second), or the materialisation's time for an id that is not time-shaped. A
backup made outside Dagster (`quadra backup create`) has had no restore drill, so it is never
good; a backup whose checks have not finished is not good yet. Computed by `good_backup` from the
facts of the `dagster` and `backups` sources (both must answer).

Nothing here writes: no schema upgrade, no MLflow store created (a missing SQLite file is
reported as such), no key read.
"""

from __future__ import annotations

import math
import os
import re
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

from . import known
from ..settings import Settings

#: How many of the newest `backup` materialisations (and check evaluations) are looked at.
BACKUP_LOOKBACK = 200
#: How many of a job's newest finished runs the consecutive-failure count looks at.
STREAK_LOOKBACK = 25
IN_PROGRESS = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")
_NON_FINITE_ERROR = re.compile(r"\bloss\b[^;\n]*\b(?:NaN|nan|inf|infinity|non-finite|not finite)\b")


class SourceError(RuntimeError):
    """A source cannot be read; the message is one line and holds no secret."""


@dataclass
class Families:
    """Metric families being built, by name (label names fixed by the first sample)."""

    families: dict[str, Any] = field(default_factory=dict)

    def gauge(self, name: str, documentation: str, value: float | None, **labels: str) -> None:
        if value is None:
            return
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = GaugeMetricFamily(name, documentation, labels=sorted(labels))
        family.add_metric([str(labels[k]) for k in sorted(labels)], float(value))

    def info(self, name: str, documentation: str, **labels: str) -> None:
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = InfoMetricFamily(name, documentation)
        family.add_metric([], {k: "" if v is None else str(v) for k, v in labels.items()})

    def metrics(self) -> list[Any]:
        return list(self.families.values())


@dataclass
class SourceResult:
    families: Families
    facts: dict[str, Any] = field(default_factory=dict)


# Dagster -------------------------------------------------------------------------------------


class DagsterSource:
    """The Dagster instance of `DAGSTER_HOME` (opened once, kept between scrapes)."""

    name = "dagster"

    def __init__(self, instance: Any | None = None) -> None:
        self._instance = instance

    def instance(self) -> Any:
        if self._instance is None:
            if not os.environ.get("DAGSTER_HOME"):
                raise SourceError("DAGSTER_HOME is not set: it names the folder with the instance's dagster.yaml")
            import dagster as dg

            self._instance = dg.DagsterInstance.get()
        return self._instance

    def collect(self) -> SourceResult:
        import dagster as dg
        from dagster import DagsterRunStatus, RunsFilter

        instance = self.instance()
        out = Families()
        facts: dict[str, Any] = {}

        # Runs: in progress (by status, and by job), then per job: last success, last failure and
        # the current run of failures.
        in_progress = instance.get_run_records(
            filters=RunsFilter(statuses=[DagsterRunStatus(s) for s in IN_PROGRESS]), limit=10_000)
        counts = {status: 0 for status in IN_PROGRESS}
        by_job: dict[tuple[str, str], int] = {}
        for record in in_progress:
            status = record.dagster_run.status.value
            counts[status] = counts.get(status, 0) + 1
            key = (record.dagster_run.job_name, status)
            by_job[key] = by_job.get(key, 0) + 1
        for status, count in counts.items():
            out.gauge("quadra_runs", "Dagster runs in this status now (queued: waiting for the daemon or a slot).",
                      count, status=status.lower())
        jobs = set(known.JOBS) | {r.dagster_run.job_name for r in instance.get_run_records(limit=200)}
        for job in sorted(jobs):
            for status in IN_PROGRESS:
                out.gauge("quadra_job_runs", "Runs of this job in this status now.", by_job.get((job, status), 0),
                          dagster_job=job, status=status.lower())
            success = instance.get_run_records(
                filters=RunsFilter(job_name=job, statuses=[DagsterRunStatus.SUCCESS]), limit=1)
            if success:
                out.gauge("quadra_job_last_success_timestamp_seconds", "When this job's newest successful run ended.",
                          _ended(success[0]), dagster_job=job)
            failure = instance.get_run_records(
                filters=RunsFilter(job_name=job, statuses=[DagsterRunStatus.FAILURE]), limit=1)
            if failure:
                out.gauge("quadra_job_last_failure_timestamp_seconds", "When this job's newest failed run ended.",
                          _ended(failure[0]), dagster_job=job)
                out.info("quadra_job_last_failure", "This job's newest failed run.", dagster_job=job,
                         run_id=failure[0].dagster_run.run_id,
                         partition=failure[0].dagster_run.tags.get("dagster/partition", ""))
            finished = instance.get_run_records(
                filters=RunsFilter(job_name=job, statuses=[DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE,
                                                           DagsterRunStatus.CANCELED]),
                limit=STREAK_LOOKBACK)
            out.gauge("quadra_job_consecutive_failures",
                      "This job's newest finished runs that failed, counted back to its last success (canceled runs "
                      f"are skipped; at most {STREAK_LOOKBACK}).", failure_streak(r.dagster_run.status.value for r in finished),
                      dagster_job=job)

        # Assets: when each was last materialised; the registered versions' gate.
        keys = [dg.AssetKey(name) for name in known.ASSETS]
        latest = instance.get_latest_materialization_events(keys)
        for key in keys:
            event = latest.get(key)
            if event is not None:
                out.gauge("quadra_asset_last_materialization_timestamp_seconds",
                          "When this asset was last materialised.", event.timestamp, asset=key.to_user_string())
        registered = [latest.get(dg.AssetKey(name)) for name in known.REGISTERED_ASSETS]
        newest = max((e for e in registered if e is not None), key=lambda e: e.timestamp, default=None)
        if newest is not None:
            metadata = _plain_metadata(newest.asset_materialization.metadata)
            out.gauge("quadra_registered_version", "The newest registered version (registered_model or "
                      "sweep_registered_model).", _number(metadata.get("version")))
            out.gauge("quadra_registered_gate_score", "The newest registered version's gate score (lower is better).",
                      _number(metadata.get("gate_score")))
            passed = metadata.get("gate_passed")
            out.gauge("quadra_registered_gate_passed", "1 if the newest registered version passed the champion gate.",
                      None if passed is None else float(bool(passed)))

        # Backups as Dagster knows them (the good backup needs the repository too: good_backup).
        backups = self._backup_materializations(instance)
        facts["backups"] = backups
        if backups:
            newest_backup = backups[0]
            out.gauge("quadra_backup_last_stored_bytes", "Bytes the newest backup added to the repository (new chunks, "
                      "after deduplication and compression).", newest_backup.stored_bytes)
            out.gauge("quadra_backup_last_total_bytes", "Bytes of data the newest backup covers.",
                      newest_backup.total_bytes)
            out.gauge("quadra_backup_last_materialization_timestamp_seconds", "When the newest backup materialised.",
                      newest_backup.timestamp)
            out.info("quadra_backup_last", "The newest backup materialisation.", backup_id=newest_backup.backup_id,
                     partition=newest_backup.partition or "", run_id=newest_backup.run_id)

        # Asset checks: the newest finished evaluation of each (a bad backup's checks too: only
        # good backups are materialised, but their failed checks are recorded).
        for asset, check in known.CHECKS:
            evaluation = self._latest_evaluation(instance, dg.AssetCheckKey(dg.AssetKey(asset), check))
            if evaluation is None:
                continue
            out.gauge("quadra_asset_check_passed", "1 if this asset check's newest evaluation passed, 0 if it failed.",
                      float(evaluation.passed), asset=asset, check=check)
            out.gauge("quadra_asset_check_timestamp_seconds", "When this asset check was last evaluated.",
                      evaluation.timestamp, asset=asset, check=check)
            out.info("quadra_asset_check", "The run (and hour, for a partition's check) of this asset check's newest "
                     "evaluation.", asset=asset, check=check, run_id=evaluation.run_id, partition=evaluation.partition)
            if (asset, check) in known.REPLICATION_CHECKS:
                out.gauge("quadra_replication_lag_seconds", "How far the replica is behind, in seconds, as this check "
                          "last measured it (absent when it could not measure).",
                          _number(evaluation.metadata.get("lag_seconds")), asset=asset, check=check)

        # The daemon: schedules, sensors, the run queue (a stopped daemon runs no backup).
        try:
            heartbeats = instance.get_daemon_heartbeats()
        except Exception:  # noqa: BLE001 - some storages cannot say; not a reason to fail the source
            heartbeats = {}
        for daemon, beat in sorted(heartbeats.items()):
            out.gauge("quadra_dagster_daemon_heartbeat_timestamp_seconds", "The Dagster daemon's newest heartbeat.",
                      beat.timestamp, daemon=str(daemon))
        return SourceResult(out, facts)

    @staticmethod
    def _latest_evaluation(instance: Any, key: Any) -> "Evaluation | None":
        """The newest evaluation that finished (one still running is PLANNED: the one before it
        counts), with the hour of its run's partition."""
        for record in instance.event_log_storage.get_asset_check_execution_history(key, limit=5):
            status = record.status.value
            if status == "PLANNED":
                continue
            event = record.event
            evaluation = event.dagster_event.event_specific_data if event is not None and event.dagster_event else None
            partition = getattr(record, "partition", None) or getattr(evaluation, "partition", None)
            if partition is None:
                run = instance.get_run_by_id(record.run_id)
                partition = run.tags.get("dagster/partition") if run is not None else None
            return Evaluation(
                passed=status == "SUCCEEDED",
                timestamp=event.timestamp if event is not None else float(record.create_timestamp),
                run_id=record.run_id,
                partition=partition or "",
                metadata=_plain_metadata(getattr(evaluation, "metadata", None) or {}),
            )
        return None

    @staticmethod
    def _backup_materializations(instance: Any) -> list["BackupMaterialization"]:
        """The newest `backup` materialisations, newest first, with their checks' outcomes."""
        import dagster as dg

        key = dg.AssetKey(known.BACKUP_ASSET)
        records = instance.fetch_materializations(key, limit=BACKUP_LOOKBACK).records
        # A backup's checks run in its run, after its materialisation (a bad backup is not
        # materialised at all, and its checks may target an older materialisation: matched by run).
        by_run: dict[str, dict[str, bool]] = {}
        for check in known.BACKUP_CHECKS:
            history = instance.event_log_storage.get_asset_check_execution_history(
                dg.AssetCheckKey(key, check), limit=BACKUP_LOOKBACK)
            for record in history:  # newest first
                if record.status.value != "PLANNED":
                    by_run.setdefault(record.run_id, {}).setdefault(check, record.status.value == "SUCCEEDED")
        found = []
        for record in records:
            materialization = record.asset_materialization
            metadata = _plain_metadata(materialization.metadata)
            backup_id = metadata.get("backup_id")
            if not isinstance(backup_id, str):
                continue
            checks = by_run.get(record.run_id, {})
            found.append(BackupMaterialization(
                backup_id=backup_id, run_id=record.run_id, storage_id=record.storage_id, timestamp=record.timestamp,
                partition=materialization.partition, stored_bytes=_number(metadata.get("stored_bytes")),
                total_bytes=_number(metadata.get("total_bytes")), checks=dict(checks)))
        return found


@dataclass(frozen=True)
class Evaluation:
    passed: bool
    timestamp: float
    run_id: str
    partition: str
    metadata: Mapping[str, Any]


@dataclass(frozen=True)
class BackupMaterialization:
    backup_id: str
    run_id: str
    storage_id: int
    timestamp: float
    partition: str | None
    stored_bytes: float | None
    total_bytes: float | None
    checks: Mapping[str, bool]

    @property
    def checks_passed(self) -> bool:
        return all(self.checks.get(name) is True for name in known.BACKUP_CHECKS)


def failure_streak(statuses: Iterable[str]) -> int:
    """Failed runs at the head of `statuses` (newest first), counted back to the newest success;
    canceled runs neither count nor end the streak."""
    streak = 0
    for status in statuses:
        if status == "SUCCESS":
            break
        if status == "FAILURE":
            streak += 1
    return streak


def _ended(record: Any) -> float:
    if record.end_time is not None:
        return float(record.end_time)
    return record.update_timestamp.timestamp()


def _plain_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# The project's SQL store ---------------------------------------------------------------------


class StoreSource:
    """`training_runs` and `training_metrics`, read-only."""

    name = "store"

    def __init__(self, settings: Settings) -> None:
        self.url = settings.database_url
        self._engine: Any = None

    def engine(self) -> Any:
        if self._engine is None:
            self._engine = read_only_engine(self.url)
        return self._engine

    def collect(self) -> SourceResult:
        import sqlalchemy as sa

        from ..store.models import TrainingMetric, TrainingRun

        out = Families()
        runs, metrics = TrainingRun.__table__, TrainingMetric.__table__
        with self.engine().connect() as connection:
            running = connection.execute(sa.select(sa.func.count()).select_from(runs).where(runs.c.status == "running")).scalar_one()
            out.gauge("quadra_training_runs_running", "Training runs (and sweep trials) running now, by the store.", running)
            last = connection.execute(
                sa.select(runs.c.id, runs.c.external_run_id, runs.c.status, runs.c.started_at, runs.c.finished_at,
                          runs.c.error)
                .where(runs.c.status != "running").order_by(runs.c.started_at.desc(), runs.c.id.desc()).limit(1)
            ).first()
            if last is None:
                return SourceResult(out)
            final = connection.execute(
                sa.select(metrics.c.batch_number, metrics.c.loss, metrics.c.reward)
                .where(metrics.c.training_run_id == last.id).order_by(metrics.c.batch_number.desc()).limit(1)
            ).first()
            batches = connection.execute(
                sa.select(sa.func.count()).select_from(metrics).where(metrics.c.training_run_id == last.id)).scalar_one()
            # abs() > 1e308: +-inf on SQLite and PostgreSQL, and NaN on PostgreSQL (sorted above every number).
            non_finite = connection.execute(
                sa.select(sa.func.count()).select_from(metrics)
                .where(metrics.c.training_run_id == last.id, sa.func.abs(metrics.c.loss) > 1e308)).scalar_one()
        started, finished = _utc_seconds(last.started_at), _utc_seconds(last.finished_at)
        if started is not None and finished is not None:
            out.gauge("quadra_training_last_run_duration_seconds", "How long the newest finished training run took.",
                      max(0.0, finished - started))
        out.gauge("quadra_training_last_run_finished_timestamp_seconds", "When the newest finished training run ended.",
                  finished)
        out.gauge("quadra_training_last_run_batches", "Batches the newest finished training run recorded.", batches)
        if final is not None:
            out.gauge("quadra_training_last_run_final_loss", "The loss of the newest finished training run's last batch.",
                      final.loss)
            out.gauge("quadra_training_last_run_final_reward",
                      "The reward of the newest finished training run's last batch.", final.reward)
        refused = bool(last.error and _NON_FINITE_ERROR.search(last.error))
        bad = bool(non_finite) or refused or (final is not None and not math.isfinite(final.loss))
        out.gauge("quadra_training_last_run_nonfinite_loss",
                  "1 if the newest finished training run had a non-finite loss (an infinite value recorded, or a NaN "
                  "the store refused), else 0.", float(bad))
        out.info("quadra_training_last_run", "The newest finished training run.", training_run_id=str(last.id),
                 dagster_run_id=last.external_run_id or "", status=last.status)
        return SourceResult(out)


def read_only_engine(url: str) -> Any:
    """An engine that cannot write: SQLite opened read-only (`mode=ro`, never created), any other
    database in read-only transactions (PostgreSQL: `default_transaction_read_only`)."""
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    from ..store.session import _sqlite_file, mask_url, normalize_url

    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = _sqlite_file(parsed)
        if path is None:
            raise SourceError(f"the store {mask_url(parsed)} is not a database file")
        if not path.is_file():
            raise SourceError(f"the store {path} does not exist yet (nothing has run here?)")

        def connect() -> sqlite3.Connection:
            connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5,
                                         check_same_thread=False)
            connection.execute("PRAGMA query_only = ON")
            return connection

        return sa.create_engine("sqlite://", creator=connect, poolclass=NullPool)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("psycopg2", "psycopg"):
        connect_args = {"options": "-c default_transaction_read_only=on -c statement_timeout=10000",
                        "connect_timeout": 5, "application_name": "quadra-exporter"}
    return sa.create_engine(parsed, poolclass=NullPool, connect_args=connect_args)


def _utc_seconds(value: Any) -> float | None:
    if value is None:
        return None
    import datetime as dt

    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.timestamp()


# The backup repository and its volume --------------------------------------------------------


class BackupsSource:
    """The repository's manifests (a directory listing) and the free space of its volume."""

    name = "backups"

    def __init__(self, settings: Settings) -> None:
        self.root = Path(settings.backup_dir)

    def collect(self) -> SourceResult:
        from ..backup.names import id_time
        from ..backup.repository import BackupRepository

        out = Families()
        volume = existing_ancestor(self.root)
        stats = os.statvfs(volume)
        size = stats.f_blocks * stats.f_frsize
        out.gauge("quadra_backup_volume_size_bytes", "Size of the file system that holds QUADRA_BACKUP_DIR.", size,
                  path=str(self.root))
        out.gauge("quadra_backup_volume_free_bytes", "Free bytes on it (root's reserve included).",
                  stats.f_bfree * stats.f_frsize, path=str(self.root))
        out.gauge("quadra_backup_volume_available_bytes", "Bytes on it an unprivileged writer can still use.",
                  stats.f_bavail * stats.f_frsize, path=str(self.root))
        if not self.root.exists():
            ids: list[str] = []
        elif not self.root.is_dir():
            raise SourceError(f"QUADRA_BACKUP_DIR {self.root} is not a folder")
        else:
            try:
                ids = BackupRepository(self.root).backup_ids()
            except OSError as exc:
                raise SourceError(f"cannot list the backups in {self.root}: {exc.strerror or exc}") from None
        out.gauge("quadra_backup_repository_backups", "Complete backups (manifests) in the repository.", len(ids))
        if ids:
            out.gauge("quadra_backup_newest_timestamp_seconds", "When the repository's newest backup was taken, good "
                      "or not (from its id).", _timestamp(id_time(ids[-1])))
        return SourceResult(out, {"backup_ids": set(ids)})


def existing_ancestor(path: Path) -> Path:
    """`path`, or its nearest folder that exists (the volume a missing folder would be made on)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _timestamp(moment: Any) -> float | None:
    return None if moment is None else moment.timestamp()


def good_backup(backups: list[BackupMaterialization], present: set[str]) -> tuple[BackupMaterialization, float] | None:
    """The newest good backup and when it was taken (see the module's docstring), or None."""
    from ..backup.names import id_time

    for backup in backups:  # newest first
        if backup.checks_passed and backup.backup_id in present:
            taken = id_time(backup.backup_id)
            return backup, taken.timestamp() if taken is not None else backup.timestamp
    return None


def good_backup_families(dagster: SourceResult, backups: SourceResult) -> Families:
    out = Families()
    materializations: list[BackupMaterialization] = dagster.facts.get("backups", [])
    present: set[str] = backups.facts.get("backup_ids", set())
    good = [b for b in materializations if b.checks_passed and b.backup_id in present]
    out.gauge("quadra_backup_good_backups", "Good backups (integrity and restore drill passed, still in the "
              f"repository) among the newest {BACKUP_LOOKBACK} backup materialisations.", len(good))
    found = good_backup(materializations, present)
    if found is not None:
        backup, taken = found
        out.gauge("quadra_backup_last_good_timestamp_seconds", "When the newest good backup was taken (integrity and "
                  "restore drill passed, still in the repository).", taken)
        out.info("quadra_backup_last_good", "The newest good backup.", backup_id=backup.backup_id,
                 partition=backup.partition or "", run_id=backup.run_id)
    return out


# MLflow --------------------------------------------------------------------------------------


class MlflowSource:
    """The champion and challenger aliases of the registered model, and the champion's gate score
    (its version's `metric.gate_score` tag). Opened without keys: nothing is signed or verified."""

    name = "mlflow"

    def __init__(self, settings: Settings, timeout_seconds: float = 5.0) -> None:
        self.settings = settings
        self.timeout_seconds = timeout_seconds
        self._registry: Any = None

    def registry(self) -> Any:
        if self._registry is None:
            from ..registry.client import ModelRegistry
            from ..registry.connection import _sqlite_path

            uri = self.settings.mlflow_tracking_uri
            path = _sqlite_path(uri)
            if path is not None and not path.expanduser().is_file():
                raise SourceError(f"the MLflow store {path} does not exist yet (nothing has run here?)")
            self._registry = ModelRegistry.from_settings(self.settings, keys=None, keyring=None, max_retries=0,
                                                         timeout_seconds=self.timeout_seconds)
        return self._registry

    def collect(self) -> SourceResult:
        from ..registry.errors import RegistryError
        from ..registry.names import CHALLENGER, CHAMPION, METRIC_TAG_PREFIX

        out = Families()
        registry = self.registry()
        try:
            aliases = registry.aliases()
            champion = aliases.get(CHAMPION)
            out.gauge("quadra_champion_version", "The version the registry's champion alias names.", champion)
            out.gauge("quadra_challenger_version", "The version the registry's challenger alias names.",
                      aliases.get(CHALLENGER))
            if champion is not None:
                tags = registry.get_version(champion).tags
                out.gauge("quadra_champion_gate_score", "The champion's gate score (lower is better), from its "
                          f"version's {METRIC_TAG_PREFIX}gate_score tag.", _number(tags.get(f"{METRIC_TAG_PREFIX}gate_score")))
        except RegistryError as exc:
            registry._available = False  # look at the server again next time
            raise SourceError(str(exc)) from None
        return SourceResult(out)
