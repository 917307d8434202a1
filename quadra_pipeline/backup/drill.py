"""The restore drill: prove a backup can be recovered, not only that its bytes are intact.

Restores a backup into a temporary folder, then opens what came back as the system would:
each SQLite database must pass `PRAGMA integrity_check` and hold the row counts recorded at
backup time (a PostgreSQL dump is restored into a scratch database on the same server,
counted, and dropped); every restored file must hash to its manifest entry; the champion model named
by the restored MLflow registry must be found in the restored artifacts with the SHA-256 its
version is tagged with, its files must match its signature (model-signing, the public key
from settings), and it must load and run.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..model import file_sha256, load_checkpoint, probe
from ..registry.client import MODEL_NAME
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
    tree = workdir / "restored"
    try:
        manifest = service.repository.restore(backup_id, tree)
    except BackupError as exc:
        result.fail(f"restore failed: {exc}")
        result.seconds = time.perf_counter() - started
        return result

    mismatched = [e.path for e in manifest.files if file_sha256(tree / e.path) != e.sha256]
    result.checked["files_rehashed"] = len(manifest.files)
    for path in mismatched:
        result.fail(f"{path}: restored bytes do not match the manifest's SHA-256")

    for part in (PROJECT_DB, MLFLOW_DB):
        recorded = manifest.sources.get("parts", {}).get(part, {})
        counts, path = recorded.get("tables"), recorded.get("path")
        if recorded.get("kind") == "postgresql" and counts is not None and path:
            url = service.settings.database_url if part == PROJECT_DB else service.settings.mlflow_tracking_uri
            _check_postgres(result, part, tree / path, counts, url)
            continue
        if recorded.get("kind") != "sqlite" or counts is None or not path:
            result.checked[part] = recorded.get("note") or f"{recorded.get('kind', 'absent')}: not opened by the drill"
            continue
        db = tree / path
        try:
            connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                status = connection.execute("pragma integrity_check").fetchone()[0]
            finally:
                connection.close()
            actual = table_counts(db)
        except sqlite3.Error as exc:
            result.fail(f"{path}: cannot open the restored database ({exc})")
            continue
        if status != "ok":
            result.fail(f"{path}: integrity_check says {status}")
        if actual != counts:
            differing = sorted(t for t in set(actual) | set(counts) if actual.get(t) != counts.get(t))
            result.fail(f"{path}: row counts differ from the source in {', '.join(differing)}")
        result.checked[path] = {"tables": len(actual), "rows": sum(actual.values())}

    _check_champion(service, tree, result)
    result.seconds = time.perf_counter() - started
    return result


def _check_postgres(result: DrillResult, part: str, dump: Path, counts: dict, url: str) -> None:
    """Restore the dump into a scratch database on the same server, count its rows, drop it."""
    import uuid

    from sqlalchemy import create_engine

    from ..store.session import normalize_url
    from .sources import restore_pg_dump

    base = normalize_url(url)
    scratch = f"quadra_drill_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        try:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'CREATE DATABASE "{scratch}"')
        except Exception as exc:
            result.fail(f"{part}: cannot create a scratch database for the drill ({str(exc).splitlines()[0][:200]})")
            return
        scratch_url = base.set(database=scratch)
        try:
            restore_pg_dump(dump, scratch_url.render_as_string(hide_password=False))
            engine = create_engine(scratch_url)
            try:
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
            finally:
                engine.dispose()
        except Exception as exc:
            result.fail(f"{part}: the dump does not restore ({str(exc).splitlines()[0][:200]})")
            return
        finally:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
        if actual != counts:
            differing = sorted(t for t in set(actual) | set(counts) if actual.get(t) != counts.get(t))
            result.fail(f"{part}: row counts differ from the source in {', '.join(differing)}")
        result.checked[part] = {"tables": len(actual), "rows": sum(actual.values()), "restored_into": "scratch PostgreSQL database"}
    finally:
        admin.dispose()


def _check_champion(service: BackupService, tree: Path, result: DrillResult) -> None:
    mlflow_db = tree / MLFLOW_DB / "mlflow.db"
    if not mlflow_db.exists():
        result.checked["champion"] = "no MLflow SQLite database in this backup"
        return
    connection = sqlite3.connect(f"file:{mlflow_db}?mode=ro", uri=True)
    try:
        row = connection.execute(
            "select v.version, v.storage_location, t.value from registered_model_aliases a "
            "join model_versions v on v.name = a.name and v.version = a.version "
            "left join model_version_tags t on t.name = v.name and t.version = v.version and t.key = 'checkpoint_sha256' "
            "where a.alias = 'champion' and a.name = ?",
            (MODEL_NAME,),
        ).fetchone()
        artifact_tag = connection.execute(
            "select value from model_version_tags where name = ? and version = ? and key = 'checkpoint_artifact'",
            (MODEL_NAME, row[0]),
        ).fetchone() if row else None
    except sqlite3.Error as exc:
        result.fail(f"cannot read the champion from the restored MLflow database ({exc})")
        return
    finally:
        connection.close()
    if row is None:
        result.checked["champion"] = "no champion registered yet"
        return
    version, storage_location, tagged_sha = row
    relative = artifact_tag[0] if artifact_tag else "extra_files/checkpoint.pt"
    checkpoint = _restored_artifact(service, tree, storage_location, relative)
    if checkpoint is None or not checkpoint.exists():
        result.fail(f"champion version {version}: its checkpoint is not in the restored artifacts")
        return
    signature = _check_signature(service, mlflow_db, int(version), _restored_artifact(service, tree, storage_location, ""))
    if signature is not None:
        result.fail(signature)
        return
    actual = file_sha256(checkpoint)
    if actual != tagged_sha:
        result.fail(f"champion version {version}: checkpoint SHA-256 {actual[:12]} differs from the tagged {str(tagged_sha)[:12]}")
        return
    try:
        loaded = load_checkpoint(checkpoint)
        figures = probe(loaded.model, count=20)
    except Exception as exc:  # the drill reports, it does not crash the check
        result.fail(f"champion version {version}: the restored checkpoint does not load ({exc})")
        return
    result.checked["champion"] = {
        "version": int(version), "sha256": actual, "signature": "verified", "probe_update_field": figures.update_field,
    }


def _check_signature(service: BackupService, mlflow_db: Path, version: int, model_dir: Path | None) -> str | None:
    """The restored model directory against the version's signature (None: it verifies)."""
    from ..keys import KeyProblem, model_signing_keys
    from ..registry.versions import VersionInfo, verify_model_directory
    from ..registry.signing import SignatureError

    label = f"champion {MODEL_NAME} version {version}"
    connection = sqlite3.connect(f"file:{mlflow_db}?mode=ro", uri=True)
    try:
        tags = dict(connection.execute(
            "select key, value from model_version_tags where name = ? and version = ?", (MODEL_NAME, version)
        ).fetchall())
    finally:
        connection.close()
    if not tags.get("signature_sha256"):
        return f"{label} is not signed (quadra model sign {version}), so the restored files cannot be verified"
    try:
        keys = model_signing_keys(service.settings)
        info = VersionInfo(version, [], tags, dt.datetime.now(dt.timezone.utc), None, model_name=MODEL_NAME)
        verify_model_directory(model_dir, info, keys, f"restored {label}")
    except (SignatureError, KeyProblem) as exc:
        return str(exc)
    return None


def _restored_artifact(service: BackupService, tree: Path, storage_location: str, relative: str) -> Path | None:
    """Map a live artifact location (file:///<artifact root>/...) into the restored tree."""
    parsed = urlparse(storage_location)
    if parsed.scheme not in ("file", ""):
        return None
    live = Path(unquote(parsed.path))
    root = service.settings.mlflow_artifact_root
    try:
        inside = live.relative_to(root)
    except ValueError:
        return None
    return tree / ARTIFACTS / inside / relative


__all__ = ["DrillResult", "restore_drill"]
