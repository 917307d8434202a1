"""What a backup takes from the live system: a consistent snapshot of everything needed to recover.

    with take_snapshot(database_url=..., mlflow_tracking_uri=..., mlflow_artifact_root=...,
                       checkpoint_dir=..., workdir=backup_dir) as snapshot:
        repository.create(snapshot.files, sources=snapshot.sources)

Pure Python (no Dagster). A `Snapshot` lists every file to store (`SourceFile`: its path in the
restore tree, where to read it, its mode) and describes the sources (`Snapshot.sources`, JSON-able).
It owns a temporary directory with the database copies; `close()` (or leaving the `with` block)
removes it.

Restore-tree layout
-------------------
    project-db/quadra.db        the project database, SQLite         (online backup API copy)
    project-db/quadra.sql       the project database, PostgreSQL     (pg_dump --format=plain, streamed)
    mlflow-db/mlflow.db         the MLflow tracking/registry database, SQLite
    mlflow-db/mlflow.sql        the MLflow tracking/registry database, PostgreSQL
    mlartifacts/...             the MLflow artifact root, relative paths kept
    checkpoints/...             the model checkpoints, relative paths kept
    <name>/...                  each of `extra_dirs` (name -> folder), same rules as the trees
(Format-2 backups hold `*.pgdump`, pg_dump's custom format, instead of `*.sql`.)

How each source is taken
------------------------
- SQLite: through the online backup API (`sqlite3.Connection.backup`, all pages in one step, so
  under one read transaction), never a raw copy of the live file: the copy is a consistent
  database even while other processes write. It is switched to `journal_mode=DELETE` so it is
  one self-contained file (`make_engine` turns WAL back on when the restored file is opened),
  the backup catalogue's rows are left out (`CATALOGUE_TABLE`), and it must pass
  `PRAGMA quick_check`. An unchanged database copies to the same bytes every time.
- PostgreSQL: `postgres.dump_stream`, read by the repository as it stores it (a plain dump in
  an exported snapshot; the catalogue's rows left out there too).
- MLflow: the tracking database (`sqlite:///...` or PostgreSQL, as above) and the local artifact
  root. With an `http(s)://` tracking URI the server's database is backed up through
  `mlflow_backend_uri` (QUADRA_MLFLOW_BACKEND_URI) when it is set; otherwise `sources` records it
  as not reachable and only the local artifact root is backed up. Other tracking URIs (file
  stores, MySQL, Databricks, ...) are refused rather than backed up partially.
- File trees (artifacts, checkpoints, extra folders): walked without following symlinks (each
  symlink is recorded as skipped in `sources`, never followed or stored; only the configured root
  itself may be a symlink), relative paths kept, temporary files (`*.tmp`, `.*.tmp`) skipped, and
  never secrets: `exclude` (default `DEFAULT_EXCLUDE`: `.env`, `.env.*` except `.env.example`,
  `*.key`, `*.pem`, `id_rsa*` and other SSH keys, `*.p12`, `*.pfx`, `.pgpass`, `.netrc`,
  `secrets/`). Tree files are read in place, not copied: MLflow artifacts are written once and
  checkpoints are replaced atomically (temp file + rename: hence the `*.tmp` rule).

Order: project database, then MLflow database, then artifacts, then checkpoints. Each refers
only to things written before it (a project row names an MLflow version; an MLflow row names
artifacts already written), so anything the database copies refer to is already on disk when
its tree is walked: a backup may hold an artifact nothing refers to yet, never a reference to a
missing one.

Missing pieces are not errors: a data home where nothing has run yet gives an empty, valid
snapshot whose `sources` says what was absent. Errors (`SnapshotError`, one line, passwords
masked) name the source and the file: an unreadable file, a corrupt database, pg_dump missing or
failing, an unsupported URL.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import sqlite3
import stat
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from importlib import metadata
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..store.session import mask_url
from . import postgres
from .postgres import SnapshotError
from .postgres import parse as _parse
from .repository import (  # one definition each, shared with the repository
    SourceFile,
    SourceStream,
)

#: Restore-tree folders.
PROJECT_DB, MLFLOW_DB, ARTIFACTS, CHECKPOINTS = "project-db", "mlflow-db", "mlartifacts", "checkpoints"
RESERVED_NAMES = frozenset({PROJECT_DB, MLFLOW_DB, ARTIFACTS, CHECKPOINTS})

#: Never stored. Patterns match a file or folder name (case-insensitive); a pattern ending in
#: `/` matches folders only; one with another `/` matches the path relative to the tree root;
#: `!pattern` takes a name back; the last matching pattern wins (as in .gitignore).
DEFAULT_EXCLUDE: tuple[str, ...] = (
    ".env",
    ".env.*",
    "!.env.example",
    "*.key",
    "*.pem",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    "*.p12",
    "*.pfx",
    ".pgpass",
    ".netrc",
    "secrets/",
)
#: Files being written (checkpoints are written to a temp file, then renamed): always skipped.
TEMPORARY_PATTERNS: tuple[str, ...] = ("*.tmp", ".*.tmp")

REMOTE_NOTE = "remote: not reachable from here (set QUADRA_MLFLOW_BACKEND_URI to back up the server's database)"
WORKDIR_PREFIX = "quadra-snapshot-"
PACKAGES = ("quadra-pipeline", "mlflow", "torch")
#: Seconds a SQLite backup waits for a writer's lock.
SQLITE_TIMEOUT_S = 60
#: The project database's backup catalogue: its rows are left out of every copy (each backup
#: changes it, so an unchanged system would otherwise never back up to the same bytes); it is
#: rebuilt from the repository's manifests after a restore.
CATALOGUE_TABLE = "backups"


# Snapshot -----------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """Every file to store (`files`, sorted by path) and a JSON-able description (`sources`).

    `sources`:
        {"layout": 1,
         "packages": {"quadra-pipeline": "0.1.0", "mlflow": "3.17.2", "torch": "2.13.0", ...},
         "parts": {"project-db": {...}, "mlflow-db": {...}, "mlartifacts": {...},
                   "checkpoints": {...}, <extra name>: {...}},
         "absent": ["mlartifacts", ...],      # parts with nothing to back up
         "files": <total>, "bytes": <total>}
    Each part has `kind` (sqlite, postgresql, remote, directory), `location` (passwords masked),
    `present`, `files`, `bytes`; databases add `alembic_revision` (None if never migrated) and
    `tables` (row counts); trees add `excluded`, `skipped_symlinks`, `skipped_temporary`,
    `skipped_special` (relative paths).

    A context manager: the database copies live in `directory` until `close()`.
    """

    files: list[SourceFile]
    sources: dict[str, Any]
    directory: Path | None = None
    _finalizer: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.directory is not None:
            self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.directory), True)

    @property
    def total_bytes(self) -> int:
        return int(self.sources.get("bytes", 0))

    def close(self) -> None:
        """Remove the temporary copies (idempotent)."""
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def take_snapshot(
    *,
    database_url: str,
    mlflow_tracking_uri: str,
    mlflow_artifact_root: Path,
    checkpoint_dir: Path,
    extra_dirs: Mapping[str, Path] = MappingProxyType({}),
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    workdir: Path | None = None,
    mlflow_backend_uri: str | None = None,
    secret: str | None = None,
    dump_timeout: float = postgres.DUMP_TIMEOUT_S,
) -> Snapshot:
    """Snapshot the project database, the MLflow database and artifacts, and the checkpoints.

    `workdir`: where the temporary database copies go (default: the system temp folder); use a
    folder on the same disk as the backups. `extra_dirs`: more folders, each stored under its
    name. `mlflow_backend_uri`: the MLflow server's own database, when the tracking URI is an
    http(s) server whose database this process can reach (our deployment: it is on the same
    PostgreSQL server). PostgreSQL databases are streams (`SourceStream`), dumped when the
    repository reads them; `secret` seeds their psql restrict key. Raises `SnapshotError`
    naming the source and file that cannot be read.
    """
    for name in extra_dirs:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or name in RESERVED_NAMES:
            raise ValueError(
                f"extra folder name {name!r} must be one plain name (letters, digits, . _ -) "
                f"other than {', '.join(sorted(RESERVED_NAMES))}"
            )
    if isinstance(exclude, str):
        raise TypeError("exclude must be a sequence of patterns, not one string")
    directory = _make_workdir(workdir)
    try:
        files: list[SourceFile] = []
        parts: dict[str, dict[str, Any]] = {}
        live_databases: set[Path] = set()

        dumps = {"secret": secret, "timeout": dump_timeout}
        found, parts[PROJECT_DB] = _snapshot_database(
            database_url, PROJECT_DB, "quadra", "project database", directory, live_databases,
            leave_out=(CATALOGUE_TABLE,), **dumps,
        )
        files += found
        found, parts[MLFLOW_DB] = _snapshot_mlflow_database(
            mlflow_backend_uri or mlflow_tracking_uri, directory, live_databases, **dumps
        )
        files += found

        skip = {directory.resolve(), *live_databases}
        if workdir is not None:
            skip.add(Path(workdir).resolve())
        trees = [(ARTIFACTS, Path(mlflow_artifact_root)), (CHECKPOINTS, Path(checkpoint_dir))]
        trees += [(name, Path(folder)) for name, folder in extra_dirs.items()]
        for name, folder in trees:
            found, parts[name] = _snapshot_tree(folder, name, tuple(exclude), skip)
            files += found

        files.sort(key=lambda f: f.path)
        sources: dict[str, Any] = {
            "layout": 1,
            "packages": package_versions(),
            "parts": parts,
            "absent": [name for name, part in parts.items() if not part["present"]],
            "files": sum(part["files"] for part in parts.values()),
            "bytes": sum(part["bytes"] for part in parts.values()),
        }
        return Snapshot(files=files, sources=sources, directory=directory)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a restore must match (None if not installed)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["sqlite"] = sqlite3.sqlite_version
    return versions


# Temporary folder ---------------------------------------------------------------------------


def _make_workdir(workdir: Path | None) -> Path:
    parent = Path(workdir) if workdir is not None else Path(tempfile.gettempdir())
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_workdirs(parent)
        host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:40] or "host"
        return Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{host}-{os.getpid()}-", dir=parent))
    except OSError as exc:
        raise SnapshotError(f"cannot create a temporary folder in {parent}: {_os_reason(exc)}") from None


def _remove_stale_workdirs(parent: Path) -> None:
    """Remove the temporary folders of snapshots killed on this host (their process is gone)."""
    host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:40] or "host"
    pattern = re.compile(rf"{re.escape(WORKDIR_PREFIX)}{re.escape(host)}-(\d+)-")
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for entry in entries:
        match = pattern.match(entry.name)
        if not match or not entry.is_dir(follow_symlinks=False):
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and not _process_alive(pid):
            shutil.rmtree(entry.path, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


# Databases ----------------------------------------------------------------------------------


def _classify(url: str) -> str:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "sqlite" or scheme.startswith("sqlite+"):
        return "sqlite"
    if scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+"):
        return "postgresql"
    if scheme in ("http", "https"):
        return "remote"
    return scheme or "path"


def _snapshot_database(
    url: str, folder: str, stem: str, label: str, directory: Path, live: set[Path], *,
    leave_out: tuple[str, ...] = (), secret: str | None = None, timeout: float = postgres.DUMP_TIMEOUT_S,
) -> tuple[list[SourceFile | SourceStream], dict[str, Any]]:
    kind = _classify(url)
    if kind == "sqlite":
        return _snapshot_sqlite(url, folder, stem, label, directory, live, leave_out)
    if kind == "postgresql":
        part = postgres.describe(url, folder, stem, label)

        def open_dump():
            return postgres.dump_stream(url, part, label, leave_out_data=leave_out, secret=secret, timeout=timeout)

        return [SourceStream(part["path"], open_dump, 0o600)], part
    raise SnapshotError(
        f"cannot back up the {label} {_mask_any(url)}: only sqlite:/// and postgresql:// "
        "databases are supported"
    )


def _snapshot_mlflow_database(
    uri: str, directory: Path, live: set[Path], **dumps: Any
) -> tuple[list[SourceFile | SourceStream], dict[str, Any]]:
    kind = _classify(uri)
    if kind == "remote":
        return [], {
            "kind": "remote",
            "location": _mask_any(uri),
            "present": False,
            "note": REMOTE_NOTE,
            "files": 0,
            "bytes": 0,
        }
    if kind in ("sqlite", "postgresql"):
        return _snapshot_database(uri, MLFLOW_DB, "mlflow", "MLflow database", directory, live, **dumps)
    raise SnapshotError(
        f"cannot back up the MLflow tracking store {_mask_any(uri)}: backups support sqlite:///, "
        "postgresql:// and http(s):// (a remote server backs up its own database) tracking URIs"
    )


def _snapshot_sqlite(
    url: str, folder: str, stem: str, label: str, directory: Path, live: set[Path], leave_out: tuple[str, ...] = ()
) -> tuple[list[SourceFile], dict[str, Any]]:
    parsed = _parse(url, label)
    masked = url.strip()  # a SQLite URL holds no password; show it as configured
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:") or "mode=memory" in database:
        raise SnapshotError(
            f"cannot back up the {label} {masked}: only a SQLite database file can be backed up"
        )
    path = Path(database).expanduser().absolute()
    part: dict[str, Any] = {"kind": "sqlite", "location": masked, "present": False, "files": 0, "bytes": 0}
    if not path.exists():
        part["note"] = f"absent: no database file at {path}"
        return [], part
    live.update(path.with_name(path.name + suffix).resolve() for suffix in ("", "-wal", "-shm", "-journal"))
    if not path.is_file():
        raise SnapshotError(f"cannot back up the {label} {masked}: {path} is not a file")
    _check_readable(path, f"the {label} {masked}")

    target = directory / folder / f"{stem}.db"
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        journal_mode, revision, tables = _sqlite_online_backup(path, target, leave_out)
    except sqlite3.Error as exc:
        raise SnapshotError(f"cannot back up the {label} {masked}: {_first_line(exc)}") from None
    size = target.stat().st_size
    if leave_out:
        part["left_out_data"] = sorted(leave_out)
    part.update(
        present=True,
        method="sqlite3 online backup API",
        path=f"{folder}/{target.name}",
        journal_mode=journal_mode,
        alembic_revision=revision,
        tables=tables,
        files=1,
        bytes=size,
    )
    mode = stat.S_IMODE(path.stat().st_mode) & 0o777
    return [SourceFile(f"{folder}/{target.name}", target, mode)], part


def _sqlite_online_backup(path: Path, target: Path, leave_out: tuple[str, ...] = ()) -> tuple[str, str | None, dict[str, int]]:
    """Copy `path` to `target` with the online backup API; empty the `leave_out` tables in the
    copy; check and describe it."""
    # mode=rw: never creates a missing file (and falls back to read-only on a read-only file).
    source = sqlite3.connect(f"file:{_uri_path(path)}?mode=rw", uri=True, timeout=SQLITE_TIMEOUT_S)
    try:
        source.execute("PRAGMA query_only = ON")
        journal_mode = str(source.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        copy = sqlite3.connect(str(target), isolation_level=None)
        try:
            source.backup(copy)  # pages=-1: every page in one step, under one read transaction
        finally:
            copy.close()
    finally:
        source.close()
    copy = sqlite3.connect(str(target), isolation_level=None)
    try:
        copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        # Freed pages are zeroed (no VACUUM: that would rewrite the whole copy every hour), so the
        # copy of an unchanged database differs from the last one only where the catalogue grew.
        copy.execute("PRAGMA secure_delete = ON")
        for table in leave_out:
            if copy.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone():
                copy.execute(f'DELETE FROM "{_ident(table)}"')
        problems = [line for row in copy.execute("PRAGMA quick_check") for line in str(row[0]).splitlines()]
        if problems != ["ok"]:
            # SQLite heads its report with "*** in database main ***": show the first real problem.
            details = [p.strip() for p in problems if p.strip() and not p.startswith("***")] or problems
            more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
            raise sqlite3.DatabaseError(f"the copy fails PRAGMA quick_check: {details[0]}{more}")
        names = [
            str(row[0])
            for row in copy.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        tables = {name: int(copy.execute(f'SELECT count(*) FROM "{_ident(name)}"').fetchone()[0]) for name in names}
        revision = None
        if "alembic_version" in tables:
            row = copy.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = None if row is None else str(row[0])
    finally:
        copy.close()
    for suffix in ("-wal", "-shm", "-journal"):  # none should be left; never store one
        target.with_name(target.name + suffix).unlink(missing_ok=True)
    return journal_mode, revision, tables


def _uri_path(path: Path) -> str:
    return str(path).replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def _ident(name: str) -> str:
    return name.replace('"', '""')


# File trees ---------------------------------------------------------------------------------


def _snapshot_tree(
    root: Path, name: str, exclude: tuple[str, ...], skip: set[Path]
) -> tuple[list[SourceFile], dict[str, Any]]:
    location = str(root)
    part: dict[str, Any] = {"kind": "directory", "location": location, "present": False, "files": 0, "bytes": 0}
    if not root.exists():
        broken = " (a broken symlink)" if root.is_symlink() else ""
        part["note"] = f"absent: no folder at {location}{broken}"
        return [], part
    if not root.is_dir():
        raise SnapshotError(f"cannot back up {name}: {location} is not a folder")
    resolved = root.resolve()  # the configured root itself may be a symlink; nothing inside is followed
    if resolved != root.absolute():
        part["resolved"] = str(resolved)

    files: list[SourceFile] = []
    skipped: dict[str, list[str]] = {
        "excluded": [], "skipped_symlinks": [], "skipped_temporary": [], "skipped_special": [], "skipped_internal": []
    }
    total = 0
    stack: list[tuple[str, Path]] = [("", resolved)]
    while stack:
        prefix, folder = stack.pop()
        for entry in _list_folder(folder, name):
            rel = prefix + entry.name
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                raise SnapshotError(
                    f"cannot back up {name}: the name {rel!r} in {location} is not valid UTF-8; rename it"
                ) from None
            if entry.is_symlink():  # never followed, never stored
                skipped["skipped_symlinks"].append(rel)
                continue
            is_dir = entry.is_dir(follow_symlinks=False)
            if Path(entry.path) in skip:  # our own temporary folder, the backups, a live database
                skipped["skipped_internal"].append(rel + "/" * is_dir)
                continue
            if not is_dir and not entry.is_file(follow_symlinks=False):
                skipped["skipped_special"].append(rel)  # FIFO, socket, device
                continue
            if not is_dir and _matches(entry.name, TEMPORARY_PATTERNS):
                skipped["skipped_temporary"].append(rel)
                continue
            if _excluded(rel, entry.name, is_dir, exclude):
                skipped["excluded"].append(rel + "/" * is_dir)
                continue
            if is_dir:
                stack.append((rel + "/", Path(entry.path)))
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # removed since its folder was listed
                continue
            path = Path(entry.path)
            _check_readable(path, name)
            files.append(SourceFile(f"{name}/{rel}", path, stat.S_IMODE(info.st_mode) & 0o777))
            total += info.st_size
    part.update(present=True, files=len(files), bytes=total)
    part.update({key: sorted(values) for key, values in skipped.items() if values or key != "skipped_internal"})
    return files, part


def _list_folder(folder: Path, name: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except FileNotFoundError:  # removed while we walked: nothing left to back up there
        return []
    except OSError as exc:
        raise SnapshotError(f"cannot back up {name}: cannot read the folder {folder}: {_os_reason(exc)}") from None


def _matches(name: str, patterns: Sequence[str]) -> bool:
    lowered = name.lower()
    return any(fnmatchcase(lowered, pattern.lower()) for pattern in patterns)


def _excluded(rel: str, name: str, is_dir: bool, patterns: Sequence[str]) -> bool:
    """Whether the exclude patterns drop this file or folder (see `DEFAULT_EXCLUDE`)."""
    verdict = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        dir_only = pattern.endswith("/")
        pattern = pattern.strip("/")
        if not pattern or (dir_only and not is_dir):
            continue
        subject = rel if "/" in pattern else name
        if fnmatchcase(subject.lower(), pattern.lower()):
            verdict = not negate
    return verdict


def is_excluded(rel_path: str, patterns: Sequence[str] = DEFAULT_EXCLUDE, *, is_dir: bool = False) -> bool:
    """Whether a path (relative to a tree root, POSIX) is excluded by `patterns`."""
    rel = rel_path.strip("/")
    return _excluded(rel, rel.rsplit("/", 1)[-1], is_dir, patterns)


# Helpers ------------------------------------------------------------------------------------


def _check_readable(path: Path, what: str) -> None:
    """Open the file once: a clear error naming it if it cannot be read (e.g. permissions)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        return  # removed meanwhile; the caller decides
    except OSError as exc:
        raise SnapshotError(f"cannot back up {what}: cannot read {path}: {_os_reason(exc)}") from None
    os.close(fd)


def _os_reason(exc: OSError) -> str:
    if exc.errno is not None:
        return exc.strerror or errno.errorcode.get(exc.errno, str(exc.errno))
    return str(exc)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _mask_any(uri: str) -> str:
    """A URI with any password replaced by `***` (database URLs and http(s) URLs alike)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return mask_url(uri)
    if parts.password is None:
        return uri if "@" not in parts.netloc else mask_url(uri)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}" if parts.username else f"***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


__all__ = [
    "ARTIFACTS",
    "CHECKPOINTS",
    "DEFAULT_EXCLUDE",
    "MLFLOW_DB",
    "PROJECT_DB",
    "REMOTE_NOTE",
    "Snapshot",
    "SnapshotError",
    "SourceFile",
    "TEMPORARY_PATTERNS",
    "is_excluded",
    "package_versions",
    "SourceStream",
    "take_snapshot",
]
