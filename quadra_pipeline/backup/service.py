"""Backups of the live system: snapshot -> content-addressed repository -> catalogue.

This is what `quadra backup ...` and the Dagster backup asset call. It works with Dagster
down and with the project database broken: the repository (manifests and objects under
QUADRA_BACKUP_DIR) is the source of truth, and the `backups` table is a catalogue kept in
step on a best-effort basis (a backup must not fail because the database it protects is
the broken part).

Restore-tree layout (see `sources.py`): `project-db/`, `mlflow-db/`, `mlartifacts/`,
`checkpoints/`. An in-place restore puts each back where the settings say it lives, after
moving what was there aside into `<home>/restore-aside/<time>/`.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..settings import Environment, Settings
from .errors import BackupError, UnknownBackupError
from .repository import BackupRepository, CreateResult, VerifyReport
from .retention import BackupInfo, RetentionPlan, RetentionPolicy, plan_retention
from .sources import ARTIFACTS, CHECKPOINTS, MLFLOW_DB, PROJECT_DB, _snapshot_postgres, restore_pg_dump, take_snapshot

log = logging.getLogger(__name__)



@dataclass
class PruneResult:
    plan: RetentionPlan
    deleted: list[str] = field(default_factory=list)
    removed_objects: int = 0
    freed_bytes: int = 0
    dry_run: bool = False


@dataclass
class RestoreResult:
    backup_id: str
    target: Path
    seconds: float
    moved_aside: Path | None = None
    files: int = 0


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///...` URL (SQLAlchemy or MLflow), None for other databases."""
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(prefix):
            rest = url[len(prefix):].split("?", 1)[0]
            return Path(rest if rest.startswith("/") else os.path.abspath(rest))
    return None


def table_counts(db_file: Path) -> dict[str, int]:
    """Row count of every table of a SQLite file (opened read-only)."""
    connection = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
    try:
        names = [r[0] for r in connection.execute("select name from sqlite_master where type='table' and name not like 'sqlite_%'")]
        return {name: connection.execute(f'select count(*) from "{name}"').fetchone()[0] for name in sorted(names)}
    finally:
        connection.close()


CATALOGUE_TABLE = "backups"


def _leave_out_catalogue(files: list[Any], sources: dict[str, Any]) -> None:
    """Empty the backup catalogue in the snapshot's copy of the project database.

    Recording a backup changes the project database, so without this every backup of an
    otherwise unchanged system would store a new copy of it. The catalogue is a mirror of the
    repository (whose manifests are the truth) and is rebuilt from it after a restore; with
    it emptied and the copy vacuumed, an unchanged database gives byte-identical copies.
    """
    part = sources.get("parts", {}).get(PROJECT_DB, {})
    if part.get("kind") != "sqlite":
        return
    for item in files:
        if item.path == part.get("path"):
            connection = sqlite3.connect(item.source)
            try:
                if connection.execute("select 1 from sqlite_master where type='table' and name=?", (CATALOGUE_TABLE,)).fetchone():
                    connection.execute(f"delete from {CATALOGUE_TABLE}")
                    connection.commit()
                    connection.execute("vacuum")
            finally:
                connection.close()
            if isinstance(part.get("tables"), dict) and CATALOGUE_TABLE in part["tables"]:
                part["tables"][CATALOGUE_TABLE] = 0
            part["catalogue"] = "left out: rebuilt from the repository's manifests after a restore"


class BackupService:
    def __init__(self, settings: Settings, *, catalogue_engine: Any | None = None, log_fn: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        key = settings.secret_key.get_secret_value() if settings.secret_key else None
        self.repository = BackupRepository(
            settings.backup_dir, key, require_signature=settings.env is Environment.production
        )
        self._engine = catalogue_engine
        self.log = log_fn or log.info

    # Catalogue (best effort) -------------------------------------------------------------

    def _catalogue(self, action: Callable[[Any], None]) -> None:
        try:
            from ..store import ensure_schema, make_engine, session_scope

            if self._engine is None:
                self._engine = make_engine(self.settings.database_url)
                ensure_schema(self._engine)
            with session_scope(self._engine) as session:
                action(session)
        except Exception as exc:  # the catalogue must never sink a backup or a restore
            self.log(f"backup catalogue not updated ({type(exc).__name__}: {str(exc)[:200]})")

    def _close_catalogue(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
        self._engine = None

    # Create ----------------------------------------------------------------------------

    def create(self, partition_key: str | None = None) -> CreateResult:
        settings = self.settings
        with self.repository.lock():
            with take_snapshot(
                database_url=settings.database_url,
                mlflow_tracking_uri=settings.mlflow_tracking_uri,
                mlflow_artifact_root=settings.mlflow_artifact_root,
                checkpoint_dir=settings.checkpoint_dir,
                workdir=settings.backup_dir,
            ) as snapshot:
                sources = dict(snapshot.sources)
                _leave_out_catalogue(snapshot.files, sources)
                if partition_key:
                    sources["partition_key"] = partition_key
                result = self.repository.create(snapshot.files, sources=sources)
        manifest = result.manifest
        self.log(
            f"backup {manifest.backup_id}: {result.file_count} files, {result.total_bytes} bytes, "
            f"{result.stored_bytes} new bytes stored, {result.seconds:.2f} s"
        )

        def record(session: Any) -> None:
            from ..store.repository import record_backup

            record_backup(
                session,
                backup_id=manifest.backup_id,
                manifest_sha256=result.manifest_sha256,
                location=str(self.repository.root),
                total_bytes=result.total_bytes,
                stored_bytes=result.stored_bytes,
                file_count=result.file_count,
                partition_key=partition_key,
                signed=manifest.signature is not None,
                created_at=manifest.created_at,
            )

        self._catalogue(record)
        return result

    # Verify ----------------------------------------------------------------------------

    def resolve(self, backup_id: str) -> str:
        ids = self.repository.backup_ids()
        if backup_id == "latest":
            if not ids:
                raise UnknownBackupError(f"no backups in {self.repository.root}")
            return ids[-1]
        if backup_id not in ids:
            raise UnknownBackupError(f"backup {backup_id!r} is not in {self.repository.root}")
        return backup_id

    def verify(self, backup_ids: list[str] | None = None) -> list[VerifyReport]:
        ids = [self.resolve(i) for i in backup_ids] if backup_ids else self.repository.backup_ids()
        reports = [self.repository.verify(i) for i in ids]

        def mark(session: Any) -> None:
            from ..store.repository import get_backup_or_none, mark_backup

            for report in reports:
                if get_backup_or_none(session, report.backup_id) is not None:
                    mark_backup(session, report.backup_id, "verified" if report.ok else "failed",
                                error=None if report.ok else "; ".join(report.problems)[:2000])

        self._catalogue(mark)
        return reports

    def _created_at(self, backup_id: str) -> dt.datetime:
        """The manifest's time; for a damaged manifest, the time its id was made from (so one
        bad backup cannot stop retention: it is simply not the newest verified one)."""
        try:
            return self.repository.read_manifest(backup_id).created_at
        except BackupError as exc:
            self.log(f"backup {backup_id} is damaged ({exc}); retention dates it by its id")
            return dt.datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)

    def newest_verified(self) -> str | None:
        for backup_id in reversed(self.repository.backup_ids()):
            if self.repository.verify(backup_id).ok:
                return backup_id
        return None

    # Restore ---------------------------------------------------------------------------

    def restore(self, backup_id: str, target: Path | None = None, *, in_place: bool = False) -> RestoreResult:
        """Restore into `target` (a new folder), or over the live data home (`in_place`)."""
        started = time.perf_counter()
        backup_id = self.resolve(backup_id)
        if in_place == (target is not None):
            raise BackupError("restore needs exactly one of --target DIR or --in-place")
        with self.repository.lock():
            if not in_place:
                manifest = self.repository.restore(backup_id, Path(target))
                return RestoreResult(backup_id, Path(target), time.perf_counter() - started, files=len(manifest.files))
            self.settings.home.mkdir(parents=True, exist_ok=True)
            for stale in self.settings.home.glob(".restore-*"):  # a killed restore's staging copy
                shutil.rmtree(stale, ignore_errors=True)  # (restored files only; live data is never in it)
            staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=self.settings.home))
            tree = staging / "tree"
            try:
                manifest = self.repository.restore(backup_id, tree)  # verifies first; raises before touching anything
                self._close_catalogue()  # no connection of ours may hold the files being swapped
                aside = self._put_back(tree, manifest)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        self.sync_catalogue()
        self.log(f"restored {backup_id} in place; previous data moved to {aside}")
        return RestoreResult(backup_id, self.settings.home, time.perf_counter() - started, aside, len(manifest.files))

    def _put_back(self, tree: Path, manifest: Any) -> Path:
        """Move each restored piece to where the settings say it lives, after moving what is
        there aside. All or nothing: if a move or a pg_restore fails, the moves made so far are
        undone, so the live data home is as it was (pg_restore runs in one transaction)."""
        settings = self.settings
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        (settings.home / "restore-aside").mkdir(parents=True, exist_ok=True)
        aside = Path(tempfile.mkdtemp(prefix=f"{stamp}-", dir=settings.home / "restore-aside"))  # unique per restore
        moves: list[tuple[Path, Path]] = []  # (restored, live)
        dumps: list[tuple[Path, str, str, str]] = []  # (pg dump, database URL, folder, stem)
        for folder, url in ((PROJECT_DB, settings.database_url), (MLFLOW_DB, settings.mlflow_tracking_uri)):
            restored = tree / folder
            if not restored.exists():
                continue
            db_file = sqlite_path(url)
            for item in restored.iterdir():
                if item.suffix == ".db" and db_file is not None:
                    moves.append((item, db_file))
                elif item.suffix == ".pgdump" and db_file is None:
                    dumps.append((item, url, folder, item.stem))
                else:
                    raise BackupError(f"{item.name} in {folder}/ does not match the configured database ({url.split(':', 1)[0]})")
        for folder, live in ((ARTIFACTS, settings.mlflow_artifact_root), (CHECKPOINTS, settings.checkpoint_dir)):
            if (tree / folder).exists():
                moves.append((tree / folder, live))
        done: list[tuple[Path, Path]] = []  # (from, to), in the order made, to undo on failure
        try:
            for restored, live in moves:
                for suffix in ("", "-wal", "-shm"):
                    current = live.with_name(live.name + suffix)
                    if current.exists():
                        inside = current.is_relative_to(settings.home)
                        destination = aside / (current.relative_to(settings.home) if inside else Path("outside", *current.parts[1:]))
                        destination.parent.mkdir(parents=True, exist_ok=True)
                        shutil.move(str(current), str(destination))
                        done.append((current, destination))
                live.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(restored), str(live))
                done.append((restored, live))
            for dump, url, folder, stem in dumps:
                # "Moving aside" a PostgreSQL database: dump it as it is now, next to the files.
                _snapshot_postgres(url, folder, stem, "live database before the restore", aside)
                restore_pg_dump(dump, url)
        except BaseException:
            for source, destination in reversed(done):
                shutil.move(str(destination), str(source))
            raise
        return aside

    def sync_catalogue(self) -> None:
        """Add a catalogue row for every backup in the repository that has none."""

        def sync(session: Any) -> None:
            from ..store.repository import get_backup_or_none, record_backup

            for backup_id in self.repository.backup_ids():
                if get_backup_or_none(session, backup_id) is None:
                    try:
                        manifest = self.repository.read_manifest(backup_id)
                    except BackupError as exc:
                        self.log(f"backup {backup_id} is damaged, not catalogued: {exc}")
                        continue
                    record_backup(
                        session,
                        backup_id=backup_id,
                        manifest_sha256=self.repository.manifest_sha256(backup_id),
                        location=str(self.repository.root),
                        total_bytes=manifest.total_bytes,
                        file_count=len(manifest.files),
                        partition_key=manifest.sources.get("partition_key"),
                        signed=manifest.signature is not None,
                        created_at=manifest.created_at,
                    )

        self._close_catalogue()  # the database file may have just been replaced
        self._catalogue(sync)

    # Prune -----------------------------------------------------------------------------

    def prune(self, *, dry_run: bool = False, now: dt.datetime | None = None, policy: RetentionPolicy | None = None) -> PruneResult:
        now = now or dt.datetime.now(dt.timezone.utc)
        with self.repository.lock():
            # Only the newest backup that verifies now counts as verified: re-hashing every
            # backup would cost as much as the backups themselves, and the policy needs to
            # know just which one must never go.
            newest = self.newest_verified()
            infos = [BackupInfo(i, self._created_at(i), i == newest) for i in self.repository.backup_ids()]
            plan = plan_retention(infos, now, policy or RetentionPolicy())
            result = PruneResult(plan, dry_run=dry_run)
            for backup_id in plan.delete:
                self.log(f"{'would delete' if dry_run else 'deleting'} backup {backup_id} (outside the retention policy)")
                if not dry_run:
                    self.repository.delete(backup_id)
                    result.deleted.append(backup_id)
            gc = self.repository.gc(dry_run=dry_run)
            result.removed_objects, result.freed_bytes = len(gc.removed), gc.freed_bytes
        if not dry_run and result.deleted:

            def mark(session: Any) -> None:
                from ..store.repository import get_backup_or_none, mark_backup

                for backup_id in result.deleted:
                    if get_backup_or_none(session, backup_id) is not None:
                        mark_backup(session, backup_id, "deleted")

            self._catalogue(mark)
        return result
