"""Backups of the live system: snapshot -> repository -> catalogue.

This is what `quadra backup ...` and the Dagster backup asset call. It works with Dagster
down and with the project database broken: the repository (manifests, chunks and the signed
history under QUADRA_BACKUP_DIR) is the source of truth, and the `backups` table is a catalogue
kept in step on a best-effort basis (a backup must not fail because the database it protects is
the broken part). The catalogue is also the repository's second witness: `verify` reports
backups it knows that the repository lost without a signed record (a rolled-back repository).

Restore-tree layout (see `sources.py`): `project-db/`, `mlflow-db/`, `mlartifacts/`,
`checkpoints/`. An in-place restore puts each back where the settings say it lives: files after
moving what was there aside into `<home>/restore-aside/<time>/`; PostgreSQL databases by
restoring into new databases and renaming them over the live ones.
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
from . import postgres
from .creation import CreateResult
from .errors import BackupError, UnknownBackupError
from .names import id_time
from .repository import BackupRepository
from .retention import BackupInfo, RetentionPlan, RetentionPolicy, plan_retention
from .rotation import Rotation, RotationReport, current_hour, slot_of
from .sources import ARTIFACTS, CHECKPOINTS, MLFLOW_DB, OBJECTS, PROJECT_DB, take_snapshot
from .verification import Memo, VerifyReport

log = logging.getLogger(__name__)

HISTORY = "history"  # the report about the repository's history (chain, head, records, catalogue)
DRILL_FAILED = "restore drill:"  # how a drill's failure starts in the catalogue's `error`


@dataclass
class PruneResult:
    plan: RetentionPlan
    deleted: list[str] = field(default_factory=list)
    removed_objects: int = 0
    freed_bytes: int = 0
    dry_run: bool = False
    gc_skipped: str | None = None  # why unreferenced data was not collected (a backup it cannot read)


@dataclass
class HourlyRun:
    """One hourly run, as the Dagster asset makes it: the backup, its checks, and the verdict.

    `good`: both checks passed. `integrity`: the backup's manifest, signature, sidecar and file
    list, every chunk it names present with its size, the chunks it wrote re-read intact; the
    history; and this hour's share of every stored chunk re-read intact, whichever backup holds
    it (damage only an older backup holds fails it too: the repository is not all good, and the
    check stays red every hour until the damage is gone). `restore_drill`: drill.py. Only a good
    backup is materialised (so Dagster's freshness counts good backups only) and marked
    "verified" in the catalogue; a bad one is marked "failed" with the reason, as are the older
    backups that hold a damaged chunk."""

    create: CreateResult
    report: VerifyReport  # the new backup's own checks
    history: VerifyReport  # the chain, the head, the records, the catalogue's cross-check
    rotation: RotationReport  # this hour's share of every stored chunk, re-read
    drill: Any  # drill.DrillResult

    @property
    def backup_id(self) -> str:
        return self.create.manifest.backup_id

    @property
    def integrity_ok(self) -> bool:
        return self.report.ok and self.history.ok and self.rotation.ok

    @property
    def good(self) -> bool:
        return self.integrity_ok and self.drill.ok

    @property
    def integrity_problems(self) -> list[str]:
        return self.report.problems + self.history.problems + self.rotation.problems

    def why_bad(self) -> str:
        """One line: what made the backup bad ('' when it is good)."""
        parts = []
        if not self.integrity_ok:
            parts.append("integrity: " + "; ".join(self.integrity_problems))
        if not self.drill.ok:
            parts.append(f"{DRILL_FAILED} " + "; ".join(self.drill.problems))
        return " | ".join(parts)


class Share:
    """The chunk ids of some rotation shares (and any `extra` ids), as a `read` set for verify."""

    def __init__(self, slots: list[int], runs: int, extra: set[str] | frozenset[str] = frozenset()) -> None:
        self.slots, self.runs, self.extra = set(slots), runs, set(extra)

    def __contains__(self, sha: object) -> bool:
        return isinstance(sha, str) and (sha in self.extra or slot_of(sha, self.runs) in self.slots)

    def __iter__(self):  # (only `in` is used: the ids are not enumerable)
        return iter(self.extra)

    def __len__(self) -> int:
        return len(self.extra)


@dataclass
class RestoreResult:
    backup_id: str
    target: Path
    seconds: float
    moved_aside: Path | None = None
    files: int = 0
    stopped: list[str] = field(default_factory=list)  # sessions terminated to swap the databases


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


class BackupService:
    def __init__(self, settings: Settings, *, catalogue_engine: Any | None = None, log_fn: Callable[[str], None] | None = None) -> None:
        """Reading, verifying and restoring need no private key (the keyring's public keys
        verify); creating and pruning need the backup signing key and, in production, the
        secret key: each refuses, naming the variable, when it is missing."""
        from ..keys import backup_keyring, backup_signing_keys

        self.settings = settings
        self.repository = BackupRepository(
            settings.backup_dir,
            keys=backup_signing_keys(settings),
            keyring=backup_keyring(settings),
            hmac_key=settings.secret_key.get_secret_value() if settings.secret_key else None,
            require_signature=settings.env is Environment.production,
        )
        self._engine = catalogue_engine
        self.log = log_fn or log.info
        self.last_verify_reads = (0, 0)

    # Keys ---------------------------------------------------------------------------------

    def keys(self) -> Any:
        """The backup keyring (a `KeyringReport`): each key with the backups and history
        documents it signed, then the key ids that signed something but are not in the keyring,
        then the unsigned (`quadra backup keys`). What the documents claim, not verified:
        `verify` does that."""
        from ..keys import keyring_report

        policy = self.repository.policy
        return keyring_report(policy.verifiers, policy.keys, self.repository.signers())

    # Catalogue (best effort) -------------------------------------------------------------

    def _catalogue(self, action: Callable[[Any], Any]) -> Any:
        try:
            from ..store import ensure_schema, make_engine, session_scope

            if self._engine is None:
                self._engine = make_engine(self.settings.database_url)
                ensure_schema(self._engine)
            with session_scope(self._engine) as session:
                return action(session)
        except Exception as exc:  # the catalogue must never sink a backup or a restore
            self.log(f"backup catalogue not updated ({type(exc).__name__}: {str(exc)[:200]})")
            return None

    def _close_catalogue(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
        self._engine = None

    # Create ----------------------------------------------------------------------------

    def create(self, partition_key: str | None = None) -> CreateResult:
        settings = self.settings
        self.repository.policy.check_can_write()  # a verify-only host refuses before it snapshots
        # Seeds the PostgreSQL dumps' restrict key: unguessable in production, stable between runs.
        secret = settings.require_secret_key("to create a backup")
        with self.repository.lock():
            artifact_root, extra_dirs = self._mirror_object_stores()
            with take_snapshot(
                database_url=settings.backup_source_url,
                mlflow_tracking_uri=settings.mlflow_tracking_uri,
                mlflow_backend_uri=settings.mlflow_backend_uri,
                mlflow_artifact_root=artifact_root,
                checkpoint_dir=settings.checkpoint_dir,
                extra_dirs=extra_dirs,
                workdir=settings.backup_dir,
                secret=secret,
                dump_timeout=settings.backup_dump_timeout,
            ) as snapshot:
                sources = snapshot.sources
                if partition_key:
                    sources["partition_key"] = partition_key
                if not snapshot.files:
                    raise BackupError(
                        f"nothing to back up: every source is absent or empty under the data home {settings.home} "
                        f"({'; '.join(p.get('note', name) for name, p in sources['parts'].items())}); is QUADRA_HOME right?"
                    )
                result = self.repository.create(snapshot.files, sources=sources, use_stat_cache=True)
        manifest = result.manifest
        self.log(
            f"backup {manifest.backup_id}: {result.file_count} files, {result.total_bytes} bytes, "
            f"{result.stored_bytes} new bytes stored ({len(result.added_chunks)} new chunks), {result.seconds:.2f} s"
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

    def _mirror_object_stores(self) -> tuple[Path, dict[str, Path]]:
        """What lives in an S3 object store is backed up from a local copy, refreshed first
        (only new or changed objects are fetched): MLflow's artifacts, when its server keeps them
        in S3 (QUADRA_MLFLOW_ARTIFACTS_STORE), taken as the artifact tree the drill knows; and
        the shared objects (QUADRA_OBJECT_STORE: corpus snapshots, checkpoints of runs that ran
        on other hosts), as the extra tree `objects`. A local object store is a folder of the
        data home: it is taken as it is."""
        from ..objectstore import mirror, open_object_store

        settings = self.settings
        artifact_root: Path = settings.mlflow_artifact_root
        extra: dict[str, Path] = {}
        stores = []
        if settings.mlflow_artifacts_store:
            artifact_root = settings.home / "mirror" / ARTIFACTS
            stores.append((settings.mlflow_artifacts_store, artifact_root))
        if settings.object_store.startswith("s3://"):
            extra[OBJECTS] = settings.home / "mirror" / OBJECTS
            stores.append((settings.object_store, extra[OBJECTS]))
        else:
            extra[OBJECTS] = Path(settings.object_store)
        for url, local in stores:
            stats = mirror(open_object_store(url), local)
            self.log(f"mirrored {url}: {stats.objects} objects, {stats.fetched} fetched ({stats.fetched_bytes} bytes), "
                     f"{stats.removed} removed")
        return artifact_root, extra

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

    def verify(self, backup_ids: list[str] | None = None, *, deep: str = "all", also_read: set[str] | None = None,
               hour: int | None = None) -> list[VerifyReport]:
        """Check backups (default: all) and the history they form. Every backup: manifest,
        signature, sidecar, file list, every chunk present with its size; `deep`: re-read and
        re-hash every chunk ("all", the default: each chunk once, however many backups hold
        it), only those of this hour's share of the rotation ("sample": 1/QUADRA_BACKUP_VERIFY_RUNS
        of them), or none ("none"); `also_read`: chunks to re-read too (what a backup just
        wrote). The last report, `history`, is the chain (head, records) and the catalogue's
        cross-check. Each backup's catalogue row is marked "verified" or "failed" (a backup
        whose restore drill failed stays "failed")."""
        ids = [self.resolve(i) for i in backup_ids] if backup_ids else self.repository.backup_ids()
        if deep == "subset":  # (the name before "sample")
            deep = "sample"
        if deep not in ("all", "sample", "none"):
            raise ValueError(f"deep must be 'all', 'sample' or 'none', not {deep!r}")
        runs = self.settings.backup_verify_runs
        read: Any = "all" if deep == "all" else Share(
            [current_hour() % runs if hour is None else hour % runs] if deep == "sample" else [], runs, set(also_read or ()))
        memo: Memo = {}
        reports = [self.repository.verify(i, read=read, memo=memo) for i in ids]
        #: (distinct chunks or objects re-read, their bytes): each once, whatever held it
        self.last_verify_reads = (sum(1 for was_read, _ in memo.values() if was_read), sum(r.bytes_checked for r in reports))
        history = self.repository.history_problems() + self._catalogue_problems()
        reports.append(VerifyReport(HISTORY, not history, history, 0, 0))
        self._mark({r.backup_id: (r.ok, "; ".join(r.problems)) for r in reports[:-1]})
        return reports

    def _mark(self, verdicts: dict[str, tuple[bool, str]], *, drill: bool = False) -> None:
        """Catalogue: each backup "verified" (ok) or "failed" (with the reason). A backup whose
        restore drill failed is not marked "verified" again by a check that ran no drill."""

        def mark(session: Any) -> None:
            from ..store.repository import get_backup_or_none, mark_backup

            for backup_id, (ok, error) in verdicts.items():
                row = get_backup_or_none(session, backup_id)
                if row is None or row.status == "deleted":
                    continue
                if ok and not drill and row.status == "failed" and DRILL_FAILED in (row.error or ""):
                    continue
                mark_backup(session, backup_id, "verified" if ok else "failed", error=None if ok else error[:2000])

        self._catalogue(mark)

    def hourly(self, partition_key: str | None = None, *, workdir: Path | None = None, hour: int | None = None) -> HourlyRun:
        """What the hourly Dagster asset runs: a backup, then its checks. `integrity`: the new
        backup's manifest, signature, sidecar and file list, every chunk it names present with
        its size, the chunks it wrote re-read, and this hour's share of the rotation (every
        stored chunk within QUADRA_BACKUP_VERIFY_RUNS hours, whichever backup holds it); the
        history. `restore_drill` (drill.py). Then the catalogue: the backup "verified" when it
        is good (`HourlyRun.good`: both passed), else "failed" with the reason; older backups
        holding a damaged chunk "failed"."""
        from .drill import restore_drill

        result = self.create(partition_key=partition_key)
        backup_id = result.manifest.backup_id
        rotation = Rotation(self.repository, self.settings.backup_verify_runs).run(hour=hour)
        report = self.repository.verify(backup_id, read=set(result.added_chunks))
        history_problems = self.repository.history_problems() + self._catalogue_problems()
        history = VerifyReport(HISTORY, not history_problems, history_problems, 0, 0)
        with tempfile.TemporaryDirectory(prefix="quadra-drill-", dir=workdir) as tmp:
            drill = restore_drill(self, backup_id, Path(tmp))
        run = HourlyRun(result, report, history, rotation, drill)
        verdicts = {other: (False, "integrity: " + "; ".join(p for p in rotation.problems if other in p))
                    for other in rotation.damaged_backups if other != backup_id}
        reason = run.why_bad()
        verdicts[backup_id] = (run.good, reason)
        self._mark(verdicts, drill=True)
        self.log(f"backup {backup_id}: {'good' if run.good else 'BAD: ' + reason}; rotation re-read "
                 f"{rotation.chunks_read} of {rotation.chunks_stored} chunks ({rotation.bytes_read} bytes), drill {drill.seconds:.2f} s")
        return run

    def _catalogue_problems(self) -> list[str]:
        """Backups the catalogue knows (not deleted) that the repository lost without a record."""

        def check(session: Any) -> list[str]:
            from ..store.repository import list_backups

            present = set(self.repository.backup_ids())
            pruned = set(self.repository.history.records().pruned)
            return [
                f"backup {b.backup_id} is in the catalogue but not in the repository, and no signed record says it "
                "was pruned (the repository was rolled back or replaced by an older copy?)"
                for b in list_backups(session, newest_first=False)
                if b.status != "deleted" and b.location == str(self.repository.root)
                and b.backup_id not in present and b.backup_id not in pruned
            ]

        return self._catalogue(check) or []

    def _created_at(self, backup_id: str) -> dt.datetime:
        """The manifest's time; for a damaged manifest, the time its id was made from, or the
        manifest file's modification time (so one bad backup cannot stop retention)."""
        try:
            return self.repository.read_manifest(backup_id).created_at
        except BackupError as exc:
            self.log(f"backup {backup_id} is damaged ({exc}); retention dates it by its id or file time")
        when = id_time(backup_id)
        if when is not None:
            return when
        try:
            return dt.datetime.fromtimestamp(self.repository.manifest_path(backup_id).stat().st_mtime, dt.timezone.utc)
        except OSError:
            return dt.datetime.fromtimestamp(0, dt.timezone.utc)

    # Restore ---------------------------------------------------------------------------

    def restore(self, backup_id: str, target: Path | None = None, *, in_place: bool = False, stop_writers: bool = False) -> RestoreResult:
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
                manifest = self.repository.restore(backup_id, tree)  # checks first; raises before touching anything
                self._close_catalogue()  # no connection of ours may hold the files being swapped
                aside, stopped = self._put_back(tree, stop_writers)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        self.sync_catalogue()
        self.log(f"restored {backup_id} in place; previous data moved to {aside}")
        return RestoreResult(backup_id, self.settings.home, time.perf_counter() - started, aside, len(manifest.files), stopped)

    def _put_back(self, tree: Path, stop_writers: bool) -> tuple[Path, list[str]]:
        """Move each restored piece to where the settings say it lives, after moving what is
        there aside; restore PostgreSQL dumps into new databases and swap them in. All or
        nothing: if a move, a restore or the swap fails, what was done is undone."""
        settings = self.settings
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        (settings.home / "restore-aside").mkdir(parents=True, exist_ok=True)
        aside = Path(tempfile.mkdtemp(prefix=f"{stamp}-", dir=settings.home / "restore-aside"))  # unique per restore
        moves: list[tuple[Path, Path]] = []  # (restored, live)
        dumps: list[tuple[Path, str]] = []  # (dump, live database URL)
        mlflow_url = settings.mlflow_backend_uri if settings.mlflow_tracking_uri.startswith(("http://", "https://")) else settings.mlflow_tracking_uri
        for folder, url in ((PROJECT_DB, settings.database_url), (MLFLOW_DB, mlflow_url)):
            restored = tree / folder
            if not restored.exists():
                continue
            db_file = sqlite_path(url) if url else None
            for item in restored.iterdir():
                if item.suffix == ".db" and db_file is not None:
                    moves.append((item, db_file))
                elif item.suffix in (".sql", ".pgdump") and url and db_file is None:
                    dumps.append((item, url))
                else:
                    raise BackupError(f"{item.name} in {folder}/ does not match the configured database ({(url or 'none').split(':', 1)[0]})")
        for folder, live in ((ARTIFACTS, settings.mlflow_artifact_root), (CHECKPOINTS, settings.checkpoint_dir)):
            if (tree / folder).exists():
                moves.append((tree / folder, live))
        created: list[tuple[str, str]] = []  # (live URL, new database) restored, not yet swapped in
        done: list[tuple[Path, Path]] = []  # (from, to), in the order made, to undo on failure
        stopped: list[str] = []
        try:
            for dump, url in dumps:  # first the slow, fallible part, into new databases
                name = f"{postgres.parse(url, 'database').database}_restore_{stamp.lower()}"
                new_url = postgres.create_database(url, name)
                created.append((url, name))
                postgres.restore_dump(dump, new_url, timeout=settings.backup_dump_timeout)
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
            if created:  # the live databases become <name>_aside_<time>; the restored ones take their names
                stopped = postgres.swap_databases(created, f"_aside_{stamp.lower()}", stop_others=stop_writers)
                (aside / "databases.txt").write_text(
                    "".join(f"{postgres.parse(u, 'database').database} -> {postgres.parse(u, 'database').database}_aside_{stamp.lower()}\n"
                            for u, _ in created)
                )
                created = []
        except BaseException:
            for source, destination in reversed(done):
                shutil.move(str(destination), str(source))
            for url, name in created:
                try:
                    postgres.drop_database(url, name)
                except Exception as exc:  # noqa: BLE001 - the original error matters more
                    self.log(f"could not drop the half-restored database {name}: {exc}")
            raise
        return aside, stopped

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
            # Every backup is checked (manifest, signature, file list, its data present with the
            # right sizes: no data re-read), so "prefer a verified backup" means what it says.
            infos = []
            for backup_id in self.repository.backup_ids():
                verified = self.repository.verify(backup_id, read="none").ok
                infos.append(BackupInfo(backup_id, self._created_at(backup_id), verified))
            plan = plan_retention(infos, now, policy or RetentionPolicy())
            result = PruneResult(plan, dry_run=dry_run)
            if not dry_run and plan.delete:
                self.repository.policy.check_can_write()  # deletions are recorded in a signed record
            for backup_id in plan.delete:
                self.log(f"{'would delete' if dry_run else 'deleting'} backup {backup_id} (outside the retention policy)")
            if not dry_run and plan.delete:
                self.repository.delete_many(plan.delete)  # one signed record for all of them
                result.deleted = list(plan.delete)
            try:
                gc = self.repository.gc(dry_run=dry_run)
                result.removed_objects, result.freed_bytes = len(gc.removed), gc.freed_bytes
            except BackupError as exc:  # retention still applies; collecting waits for the damage to be fixed
                result.gc_skipped = str(exc)
                self.log(f"unreferenced data not collected: {exc}")
        if not dry_run and result.deleted:

            def mark(session: Any) -> None:
                from ..store.repository import get_backup_or_none, mark_backup

                for backup_id in result.deleted:
                    if get_backup_or_none(session, backup_id) is not None:
                        mark_backup(session, backup_id, "deleted")

            self._catalogue(mark)
        return result
