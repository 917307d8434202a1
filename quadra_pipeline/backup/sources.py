"""What a backup takes from the live system: a consistent snapshot of everything needed to recover.

    with take_snapshot(database_url=..., mlflow_tracking_uri=..., mlflow_artifact_root=...,
                       checkpoint_dir=..., workdir=backup_dir) as snapshot:
        repository.create(snapshot.files, sources=snapshot.sources)

Pure Python (no Dagster). A `Snapshot` lists every file to store (`SourceFile`: its path in the
restore tree, where to read it, its mode) and describes the sources (`Snapshot.sources`, JSON-able).
It owns a scratch directory (for the fallback copy of a SQLite database whose WAL a reader
holds: sqlite_stream.py); `close()` (or leaving the `with` block) removes it.

Restore-tree layout
-------------------
    project-db/quadra.db        the project database, SQLite         (the file, in a read transaction, streamed)
    project-db/quadra.sql       the project database, PostgreSQL     (pg_dump --format=plain, streamed)
    mlflow-db/mlflow.db         the MLflow tracking/registry database, SQLite
    mlflow-db/mlflow.sql        the MLflow tracking/registry database, PostgreSQL
    mlartifacts/...             the MLflow artifact root, relative paths kept
    checkpoints/...             the model checkpoints, relative paths kept
    <name>/...                  each of `extra_dirs` (name -> folder), same rules as the trees
(Format-2 backups hold `*.pgdump`, pg_dump's custom format, instead of `*.sql`.)

How each source is taken
------------------------
- SQLite: `sqlite_stream.snapshot_stream`, read by the repository as it stores it: the database
  file itself, streamed in one read transaction in which nothing can change it (a child process
  does the reading; the row counts come from the same read), never a raw copy taken outside a
  transaction. The restored file is a consistent database (`make_engine` turns WAL back on when
  it is opened); the restore drill opens it and checks its integrity and row counts. An
  unchanged database streams to the same bytes every time.
  The catalogue's rows are left out (`CATALOGUE_TABLE`: the table streamed empty).
- PostgreSQL: `postgres.dump_stream`, read by the repository as it stores it (a plain dump in
  an exported snapshot; the catalogue's rows left out: `CATALOGUE_TABLE`).
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
from .errors import SnapshotError
from .postgres import parse as _parse
from .creation import SourceFile, SourceStream  # one definition each, shared with the repository
from .sqlite_stream import snapshot_stream

#: Restore-tree folders.
PROJECT_DB, MLFLOW_DB, ARTIFACTS, CHECKPOINTS = "project-db", "mlflow-db", "mlartifacts", "checkpoints"
OBJECTS = "objects"  # the shared object store (QUADRA_OBJECT_STORE), an extra tree
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
#: The project database's backup catalogue: each backup adds its row and each check marks it, so
#: its rows are left out (an unchanged system then gives the same bytes every hour): of
#: PostgreSQL dumps (`pg_dump --exclude-table-data`), and of SQLite streams, where the table is
#: streamed empty and its other pages as free pages (sqlite_leave_out.py). A restore rebuilds
#: it from the repository's manifests.
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
        return _snapshot_sqlite(url, folder, stem, label, directory, live, timeout=timeout, leave_out=leave_out)
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
    url: str, folder: str, stem: str, label: str, directory: Path, live: set[Path], *, timeout: float,
    leave_out: tuple[str, ...] = (),
) -> tuple[list[SourceStream], dict[str, Any]]:
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
    # (Not opened here: closing any descriptor of the file would drop this process's SQLite
    # locks on it. The reader, a child process, says if it cannot read the file.)
    part.update(present=True, path=f"{folder}/{stem}.db", files=1, bytes=path.stat().st_size)
    what = f"cannot back up the {label} {masked}"

    def open_snapshot():  # read when the repository stores it; completes `part`
        return snapshot_stream(path, part, what, timeout=timeout, scratch=directory / folder, leave_out=leave_out)

    mode = stat.S_IMODE(path.stat().st_mode) & 0o777
    return [SourceStream(part["path"], open_snapshot, mode)], part


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
