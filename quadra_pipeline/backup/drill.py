"""The restore drill: prove a backup can be recovered, not only that its bytes are intact.

Restores what it checks into a scratch folder (each chunk and file checked against its SHA-256
as it is written: one read of those bytes, no second pass) and opens it as the system would:
each SQLite database must pass `PRAGMA integrity_check` and hold the row counts recorded at
backup time; a PostgreSQL dump is restored into a scratch database on the same server, counted,
and dropped; the champion named by the restored MLflow registry (SQLite file or scratch
PostgreSQL database) is then restored from the backup's artifacts, must hash to the SHA-256 its
version is tagged with, match its signature (model-signing, the public key from settings), and
load and run. The rest of the backup's data is covered by the integrity check's rotation.

A drill that cannot check something fails and says what (an MLflow database left out of the
backup, a champion whose files are not in it); only a system where nothing was registered yet
passes without a champion.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import postgres
from .pitr_drill import sqlite_query
from .errors import BackupError
from .service import BackupService, table_counts
from .sources import ARTIFACTS, MLFLOW_DB, PROJECT_DB


@dataclass
class DrillResult:
    backup_id: str
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    checked: dict[str, object] = field(default_factory=dict)
    seconds: float = 0.0

    def fail(self, problem: str) -> None:
        self.ok = False
        self.problems.append(problem)


def restore_drill(service: BackupService, backup_id: str, workdir: Path) -> DrillResult:
    started = time.perf_counter()
    result = DrillResult(backup_id)
    try:
        manifest = service.repository.read_manifest(backup_id)
        tree = workdir / "databases"
        service.repository.restore(backup_id, tree, select=lambda path: path.split("/", 1)[0] in (PROJECT_DB, MLFLOW_DB))
    except BackupError as exc:
        result.fail(f"restore failed: {exc}")
        result.seconds = time.perf_counter() - started
        return result
    result.checked["files_restored"] = sum(1 for e in manifest.files if e.path.split("/", 1)[0] in (PROJECT_DB, MLFLOW_DB))
    parts = manifest.sources.get("parts", {})
    registry: Any = None  # a callable running SQL on the restored MLflow database
    scratch: list[tuple[str, str]] = []
    try:
        for part in (PROJECT_DB, MLFLOW_DB):
            recorded = parts.get(part, {})
            kind, path, counts = recorded.get("kind"), recorded.get("path"), recorded.get("tables")
            if kind == "sqlite" and path and counts is not None:
                query = _check_sqlite(result, tree / path, counts)
            elif kind == "postgresql" and path and counts is not None:
                url = service.settings.backup_source_url if part == PROJECT_DB else (
                    service.settings.mlflow_backend_uri or service.settings.mlflow_tracking_uri)
                query = _check_postgres(result, part, tree / path, counts, url, scratch)
            elif part == MLFLOW_DB and kind == "remote":
                result.fail("cannot check the registry or the champion: the MLflow database is not in this backup "
                            f"({recorded.get('note', 'remote')})")
                continue
            else:
                result.checked[part] = recorded.get("note") or f"{kind or 'absent'}: nothing to open"
                continue
            if part == MLFLOW_DB:
                registry = query
        if registry is not None:
            _check_champion(service, manifest, registry, workdir / "champion", result)
        # What the drill needed: its scratch folder (restored files), and its scratch databases.
        databases = sum(int(v.get("scratch_database_bytes", 0)) for v in result.checked.values() if isinstance(v, dict))
        result.checked["scratch_bytes"] = _tree_bytes(workdir) + databases
    finally:
        for url, name, engine in scratch:
            engine.dispose()
            try:
                postgres.drop_database(url, name)
            except Exception as exc:  # noqa: BLE001 - report, do not mask the drill's own result
                result.checked.setdefault("cleanup", []).append(f"could not drop scratch database {name}: {exc}")  # type: ignore[union-attr]
    result.seconds = time.perf_counter() - started
    return result


def _check_sqlite(result: DrillResult, db: Path, counts: dict) -> Any:
    rel = f"{db.parent.name}/{db.name}"
    try:
        connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            status = connection.execute("pragma integrity_check").fetchone()[0]
        finally:
            connection.close()
        actual = table_counts(db)
    except sqlite3.Error as exc:
        result.fail(f"{rel}: cannot open the restored database ({exc})")
        return None
    if status != "ok":
        result.fail(f"{rel}: integrity_check says {status}")
    _compare(result, rel, actual, counts)
    result.checked[rel] = {"tables": len(actual), "rows": sum(actual.values())}
    return sqlite_query(db)


def _check_postgres(result: DrillResult, part: str, dump: Path, counts: dict, url: str, scratch: list) -> Any:
    """Restore the dump into a scratch database on the same server, count its rows (dropped
    when the drill ends)."""
    from sqlalchemy import create_engine, text

    name = f"quadra_drill_{uuid.uuid4().hex[:12]}"
    try:
        scratch_url = postgres.create_database(url, name)
    except Exception as exc:  # noqa: BLE001
        result.fail(f"{part}: cannot create a scratch database for the drill ({str(exc).splitlines()[0][:200]})")
        return None
    engine = create_engine(scratch_url)
    scratch.append((url, name, engine))
    try:
        postgres.restore_dump(dump, scratch_url)
        with engine.connect() as connection:
            rows = connection.exec_driver_sql(
                "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
                "AND table_schema NOT IN ('pg_catalog', 'information_schema')"
            ).all()
            actual = {
                (table if schema == "public" else f"{schema}.{table}"):
                connection.exec_driver_sql(f'SELECT count(*) FROM "{schema}"."{table}"').scalar_one()
                for schema, table in rows
            }
            size = int(connection.exec_driver_sql("SELECT pg_database_size(current_database())").scalar_one())
    except Exception as exc:  # noqa: BLE001
        result.fail(f"{part}: the dump does not restore ({str(exc).splitlines()[0][:200]})")
        return None
    _compare(result, part, actual, counts)
    result.checked[part] = {"tables": len(actual), "rows": sum(actual.values()), "restored_into": "scratch PostgreSQL database",
                            "scratch_database_bytes": size}

    def query(sql: str, **params: Any) -> list[tuple]:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql), params)]

    return query


def _tree_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            continue
    return total


def _compare(result: DrillResult, where: str, actual: dict, counts: dict) -> None:
    if actual != counts:
        differing = sorted(t for t in set(actual) | set(counts) if actual.get(t) != counts.get(t))
        result.fail(f"{where}: row counts differ from the source in {', '.join(differing)}")


def _check_champion(service: BackupService, manifest: Any, registry: Any, workdir: Path, result: DrillResult) -> None:
    """The champion the restored registry names, its files restored from this backup, through
    the check every drill shares (`champion.py`)."""
    from .champion import (
        ChampionProblem,
        read_champion,
        verify_champion_files,
    )

    try:
        champion = read_champion(registry)
    except ChampionProblem as exc:
        result.fail(str(exc))
        return
    if champion is None:
        result.checked["champion"] = "no champion registered yet"
        return
    label = champion.label
    prefix = _artifact_prefix(service, champion.storage_location)
    if prefix is None:
        result.fail(f"{label}: its files ({champion.storage_location}) are not under the backed-up artifact root")
        return
    if not any(e.path.startswith(prefix + "/") for e in manifest.files):
        result.fail(f"{label}: its files ({prefix}/) are not in this backup")
        return
    try:
        service.repository.restore(manifest.backup_id, workdir, select=lambda path: path.startswith(prefix + "/"))
    except BackupError as exc:
        result.fail(f"{label}: its files do not restore ({exc})")
        return
    try:
        result.checked["champion"] = verify_champion_files(service.settings, champion, workdir / prefix)
    except ChampionProblem as exc:
        result.fail(str(exc))


def _artifact_prefix(service: BackupService, storage_location: str) -> str | None:
    """Where a version's files are in the restore tree: `mlartifacts/<path under the root>`
    (`champion.artifact_path`: `file:` and `mlflow-artifacts:` locations map; others are not
    backed up here)."""
    from .champion import artifact_path

    inside = artifact_path(service.settings.mlflow_artifact_root, storage_location)
    return None if inside is None else f"{ARTIFACTS}/{inside}".rstrip("/")


__all__ = ["DrillResult", "restore_drill"]
