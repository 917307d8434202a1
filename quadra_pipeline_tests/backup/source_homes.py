"""A data home laid out like `Settings`, and small helpers the source tests share (the `home`
fixture is in conftest.py)."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from quadra_pipeline.backup.sources import WORKDIR_PREFIX, Snapshot, SourceStream, take_snapshot

REVISION = "0123abcd4567"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_sqlite(path: Path, rows: int = 100, *, wal: bool = True, revision: str | None = REVISION) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, isolation_level=None)
    if wal:
        connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL, pad BLOB)")
    connection.execute("BEGIN")
    connection.executemany("INSERT INTO t (v, pad) VALUES (?, randomblob(300))", [(i,) for i in range(rows)])
    connection.execute("COMMIT")
    if revision is not None:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        connection.execute("INSERT INTO alembic_version VALUES (?)", (revision,))
    connection.close()
    return path


class Home:
    """A data home laid out like `Settings` (quadra.db, mlflow.db, mlartifacts/, checkpoints/)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.project_db = root / "quadra.db"
        self.mlflow_db = root / "mlflow.db"
        self.artifacts = root / "mlartifacts"
        self.checkpoints = root / "checkpoints"
        self.backups = root / "backups"

    def snapshot(self, **overrides) -> Snapshot:
        arguments = dict(
            database_url=f"sqlite:///{self.project_db}",
            mlflow_tracking_uri=f"sqlite:///{self.mlflow_db}",
            mlflow_artifact_root=self.artifacts,
            checkpoint_dir=self.checkpoints,
            workdir=self.backups,
        )
        arguments.update(overrides)
        return take_snapshot(**arguments)


def write(path: Path, content: bytes | str = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def stream_to_file(snapshot: Snapshot, path: str, target: Path) -> Path:
    """Read one streamed source (a database) to its end, as the repository does, into `target`."""
    source = next(f for f in snapshot.files if f.path == path)
    assert isinstance(source, SourceStream), f"{path} is not streamed"
    with source.open() as stream:
        target.write_bytes(stream.read())
    return target


def leftover_workdirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(f"{WORKDIR_PREFIX}*")) if folder.exists() else []
