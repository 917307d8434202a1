"""PostgreSQL for backups: dumps streamed into the chunker, restores, and database swaps.

Dump: `pg_dump --format=plain` without compression, streamed straight into the repository (no
temporary file), so an unchanged database gives the same bytes every hour (the chunks are then
all known: ~0 new bytes) and a changed one costs about what changed. The dump runs in a snapshot
exported from a REPEATABLE READ transaction (`pg_export_snapshot`), and the Alembic revision is
read in that same snapshot; the row counts recorded in `sources` are counted from the dump's own
COPY blocks as they stream by (`CopyCounter`), so each table is read once an hour, by pg_dump,
and never by a `count(*)`. pg_dump waits at most `LOCK_WAIT` for its table locks (a migration
holding one fails the dump, not every query queued behind it). psql's `\\restrict` key (which
new pg_dump versions draw at random on every run) is derived from the deployment's secret, so
it is stable and unknown to the database's content. The password goes in `PGPASSWORD`, never
on a command line; the dump is killed after `timeout` seconds.

Restore: into an empty database, in one transaction (`psql --single-transaction`, or
`pg_restore` for format 2's custom-format dumps). An in-place restore restores into new
databases and then renames them over the live ones (`swap_databases`), so a failure leaves the
live databases as they were.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from sqlalchemy import URL

from ..store.errors import StoreError
from ..store.session import mask_url, normalize_url
from .child import child_stream
from .errors import BackupError, SnapshotError

PG_CONNECT_TIMEOUT_S = 10
DUMP_TIMEOUT_S = 3600
#: pg_dump's wait for its ACCESS SHARE table locks: a session holding an exclusive lock (a
#: migration) fails the hourly dump after this, rather than every later query queueing behind
#: the dump's waiting lock request.
LOCK_WAIT = "60s"
#: libpq connection parameters passed on from a URL's query string (never secrets).
_LIBPQ_PARAMS = frozenset(
    {
        "host", "hostaddr", "port", "dbname", "user", "passfile", "channel_binding",
        "connect_timeout", "client_encoding", "options", "application_name",
        "fallback_application_name", "keepalives", "keepalives_idle", "keepalives_interval",
        "keepalives_count", "tcp_user_timeout", "sslmode", "sslcompression", "sslcert", "sslkey",
        "sslrootcert", "sslcrl", "sslcrldir", "sslsni", "requirepeer", "ssl_min_protocol_version",
        "ssl_max_protocol_version", "krbsrvname", "gsslib", "gssencmode", "service",
        "target_session_attrs", "load_balance_hosts",
    }
)


def parse(url: str, label: str) -> URL:
    try:
        return normalize_url(url)
    except StoreError as exc:
        raise SnapshotError(f"cannot back up the {label}: {exc}") from None


def libpq(url: URL) -> tuple[str, dict[str, str]]:
    """A libpq connection string without the password, and the environment carrying it."""
    params: dict[str, str] = {}
    if url.host:
        params["host"] = url.host
    if url.port:
        params["port"] = str(url.port)
    if url.username:
        params["user"] = url.username
    if url.database:
        params["dbname"] = url.database
    password = url.password
    for key, value in url.query.items():
        value = value[-1] if isinstance(value, tuple) else value
        if key == "password":
            password = password or value
        elif key in _LIBPQ_PARAMS and key not in params:
            params[key] = value
    params.setdefault("connect_timeout", str(PG_CONNECT_TIMEOUT_S))
    params.setdefault("application_name", "quadra-backup")
    conninfo = " ".join(f"{key}='{_quote(value)}'" for key, value in params.items())
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    return conninfo, env


def _quote(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("'", "\\'")


def tool(name: str, what: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SnapshotError(
            f"{what}: {name} was not found on PATH (install the PostgreSQL client tools, "
            "the same major version as the server or newer)"
        )
    return found


def tool_version(binary: str) -> str | None:
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _supports(binary: str, option: str) -> bool:
    try:
        done = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return option in done.stdout


def _detail(text: str, password: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    detail = "; ".join(lines[:3]) or "no message"
    return detail.replace(password, "***") if password else detail


def run_tool(argv: list[str], env: dict[str, str], what: str, password: str | None, timeout: float = DUMP_TIMEOUT_S) -> None:
    try:
        done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SnapshotError(f"{what}: {Path(argv[0]).name} did not finish within {timeout:g} s (killed)") from None
    except OSError as exc:
        raise SnapshotError(f"{what}: cannot run {Path(argv[0]).name}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        raise SnapshotError(f"{what}: {Path(argv[0]).name} failed (exit {done.returncode}): {_detail(done.stderr or done.stdout, password)}")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _ident(name: str) -> str:
    return name.replace('"', '""')


# Dumping ------------------------------------------------------------------------------------


def describe(url: str, folder: str, stem: str, label: str) -> dict[str, Any]:
    """The part's description before the dump runs (completed as the stream opens)."""
    parsed = parse(url, label)
    return {"kind": "postgresql", "location": mask_url(parsed), "present": True, "method": "pg_dump --format=plain, streamed",
            "path": f"{folder}/{stem}.sql", "files": 1, "bytes": 0}


@contextlib.contextmanager
def dump_stream(
    url: str, part: dict[str, Any], label: str, *, leave_out_data: tuple[str, ...] = (), secret: str | None = None,
    timeout: float = DUMP_TIMEOUT_S,
) -> Iterator[IO[bytes]]:
    """pg_dump's output as a stream, in a snapshot whose row counts go into `part` (the
    tables in `leave_out_data` are dumped without their rows, counted as 0)."""
    from sqlalchemy.exc import DBAPIError

    from ..store.session import make_engine

    parsed = parse(url, label)
    what = f"cannot back up the {label} {mask_url(parsed)}"
    pg_dump = tool("pg_dump", what)
    conninfo, env = libpq(parsed)
    argv = [pg_dump, "--format=plain", "--no-owner", "--no-privileges", "--no-password", f"--lock-wait-timeout={LOCK_WAIT}"]
    if _supports(pg_dump, "--restrict-key"):
        seed = f"{secret or 'quadra-backup'}\0{parsed.host}\0{parsed.database}".encode()
        argv.append(f"--restrict-key={hashlib.sha256(seed).hexdigest()[:32]}")
    try:
        engine = make_engine(parsed)
    except StoreError as exc:
        raise SnapshotError(f"{what}: {exc}") from None
    try:
        with engine.connect() as connection:
            connection = connection.execution_options(isolation_level="REPEATABLE READ")
            with connection.begin():
                connection.exec_driver_sql("SET TRANSACTION READ ONLY")
                snapshot_id = connection.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
                part["server_version"] = str(connection.exec_driver_sql("SHOW server_version").scalar_one())
                revision = None
                if connection.exec_driver_sql("SELECT to_regclass('alembic_version')").scalar() is not None:
                    revision = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
                part["alembic_revision"] = None if revision is None else str(revision)
                tables = _tables(connection)  # (the catalogue only: no table is read here)
                if leave_out_data:
                    part["left_out_data"] = sorted(leave_out_data)
                part["pg_dump_version"] = tool_version(pg_dump)
                # The left-out tables' rows, and their sequences' values (which move with each row).
                left_out = [*leave_out_data, *_owned_sequences(connection, leave_out_data)]
                argv += [f"--exclude-table-data={_ident(name)}" for name in left_out]
                with child_stream(argv + [f"--snapshot={snapshot_id}", f"--dbname={conninfo}"], env=env, what=what,
                                  name="pg_dump", timeout=timeout, error=SnapshotError,
                                  failure=lambda code, text: f"pg_dump failed (exit {code}): {_detail(text, parsed.password)}") as dump:
                    counter = CopyCounter(dump.stdout)
                    yield counter
                counted = counter.counts()
                part["tables"] = {name: counted.get(name, 0) for name in tables} | counted
                part["counted_from"] = "the dump's COPY blocks"
    except DBAPIError as exc:
        detail = _first_line(getattr(exc, "orig", None) or exc)
        raise SnapshotError(f"{what}: {detail.replace(parsed.password, '***') if parsed.password else detail}") from None
    finally:
        engine.dispose()


def _owned_sequences(connection: Any, tables: tuple[str, ...]) -> list[str]:
    if not tables:
        return []
    rows = connection.exec_driver_sql(
        "SELECT DISTINCT s.relname FROM pg_class s JOIN pg_depend d ON d.objid = s.oid AND d.deptype IN ('a', 'i') "
        "JOIN pg_class t ON d.refobjid = t.oid WHERE s.relkind = 'S' AND t.relname = ANY(%(tables)s)",
        {"tables": list(tables)},
    ).all()
    return sorted(str(row[0]) for row in rows)


def _tables(connection: Any) -> list[str]:
    """Every base table, named as `sources` names them (`table` in public, else `schema.table`)."""
    rows = connection.exec_driver_sql(
        "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
        "AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY table_schema, table_name"
    ).all()
    return [table if schema == "public" else f"{schema}.{table}" for schema, table in rows]


class CopyCounter:
    """pg_dump's plain output, passed on unchanged, its rows counted as they go by: in the text
    COPY format each row is one line (a newline or a backslash in a value is escaped), and a
    block ends at the line `\\.`, which no row can be. Blocks are counted with `bytes.find` and
    `bytes.count` (no per-row Python work); only the lines outside COPY blocks (the schema) are
    looked at one by one."""

    _END = b"\\.\n"

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._pending = b""
        self._table: str | None = None
        self._rows: dict[str, int] = {}

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if data:
            self._feed(data)
        return data

    def counts(self) -> dict[str, int]:
        if self._table is not None:
            raise SnapshotError(f"the dump ended inside the COPY block of {self._table}")
        return dict(self._rows)

    def _feed(self, data: bytes) -> None:
        buffer = self._pending + data if self._pending else data
        position = 0
        while True:
            if self._table is None:
                newline = buffer.find(b"\n", position)
                if newline < 0:
                    break
                line = buffer[position:newline]
                position = newline + 1
                if line.startswith(b"COPY ") and line.endswith(b" FROM stdin;"):
                    self._table = _copy_table(line)
                    self._rows.setdefault(self._table, 0)
                continue
            if buffer.startswith(self._END, position):  # (at a line's start)
                self._table = None
                position += len(self._END)
                continue
            end = buffer.find(b"\n" + self._END, position)
            if end >= 0:
                self._rows[self._table] += buffer.count(b"\n", position, end + 1)
                position = end + 1
                continue
            last = buffer.rfind(b"\n", position)
            if last >= 0:
                self._rows[self._table] += buffer.count(b"\n", position, last + 1)
                position = last + 1
            break
        self._pending = buffer[position:]


def _copy_table(line: bytes) -> str:
    """`COPY public."odd ""name" (a, b) FROM stdin;` -> 'odd "name' (another schema: schema.table)."""
    text, parts, at = line[len(b"COPY "):].decode("utf-8", "replace"), [], 0
    while at < len(text):
        if text[at] == '"':
            end, name = at + 1, []
            while end < len(text):
                if text[end] == '"' and text[end + 1:end + 2] == '"':
                    name.append('"')
                    end += 2
                elif text[end] == '"':
                    break
                else:
                    name.append(text[end])
                    end += 1
            parts.append("".join(name))
            at = end + 1
        else:
            end = at
            while end < len(text) and text[end] not in '. (':
                end += 1
            parts.append(text[at:end])
            at = end
        if at < len(text) and text[at] == ".":
            at += 1
            continue
        break
    schema, table = (parts[0], parts[1]) if len(parts) > 1 else ("public", parts[0])
    return table if schema == "public" else f"{schema}.{table}"


# Restoring and swapping ---------------------------------------------------------------------


def restore_dump(dump: Path, database_url: str, *, timeout: float = DUMP_TIMEOUT_S) -> None:
    """Restore a dump into an (empty) PostgreSQL database, in one transaction: a plain dump
    (`.sql`, format 3) with psql, a custom-format one (`.pgdump`, format 2) with pg_restore.
    Ownership and grants are not restored (objects belong to the connecting user, as on a new
    machine whose roles differ). A failure leaves the database as it was."""
    parsed = normalize_url(database_url)
    what = f"cannot restore {dump} into {mask_url(parsed)}"
    if parsed.get_backend_name() != "postgresql":
        raise SnapshotError(f"{what}: not a PostgreSQL database URL")
    dump = Path(dump)
    if not dump.is_file():
        raise SnapshotError(f"{what}: the dump file does not exist")
    try:
        with open(dump, "rb") as handle:
            head = handle.read(5)
    except OSError as exc:
        raise SnapshotError(f"{what}: cannot read the dump: {exc.strerror or exc}") from None
    conninfo, env = libpq(parsed)
    if head == b"PGDMP":
        argv = [tool("pg_restore", what), "--single-transaction", "--exit-on-error", "--no-password",
                "--no-owner", "--no-privileges", f"--dbname={conninfo}", str(dump)]
    elif dump.suffix == ".sql":
        argv = [tool("psql", what), "--no-psqlrc", "--quiet", "--no-password", "--single-transaction",
                "--set=ON_ERROR_STOP=1", f"--dbname={conninfo}", f"--file={dump}"]
    else:
        raise SnapshotError(f"{what}: neither a custom-format dump (PGDMP) nor a plain SQL dump (.sql)")
    run_tool(argv, env, what, parsed.password, timeout)


@contextlib.contextmanager
def admin(url: str) -> Iterator[Any]:
    """An AUTOCOMMIT connection to the server of `url` (to create, drop and rename databases)."""
    from sqlalchemy import create_engine

    engine = create_engine(normalize_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def create_database(url: str, name: str) -> str:
    """Create an empty database `name` on the server of `url`; returns its URL (with the password)."""
    with admin(url) as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{_ident(name)}"')
    return normalize_url(url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str, name: str) -> None:
    with admin(url) as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{_ident(name)}" WITH (FORCE)')


def other_sessions(url: str) -> list[str]:
    """Who else is connected to the database of `url` ("application (user@address, pid N)")."""
    database = normalize_url(url).database
    with admin(url) as connection:
        rows = connection.exec_driver_sql(
            "SELECT pid, coalesce(nullif(application_name, ''), 'unnamed'), usename, coalesce(client_addr::text, 'local') "
            "FROM pg_stat_activity WHERE datname = %(db)s AND pid <> pg_backend_pid()", {"db": database}
        ).all()
    return [f"{app} ({user}@{address}, pid {pid})" for pid, app, user, address in rows]


def swap_databases(pairs: list[tuple[str, str]], aside_suffix: str, *, stop_others: bool = False) -> list[str]:
    """For each (live URL, restored database name): rename the live database to
    `<name><aside_suffix>` and the restored one to the live name. All or nothing: a failure puts
    back the renames made. Refuses while other sessions use a live database, naming them,
    unless `stop_others` (they are then terminated, and named in the result)."""
    stopped: list[str] = []
    for live_url, _ in pairs:
        sessions = other_sessions(live_url)
        if sessions and not stop_others:
            database = normalize_url(live_url).database
            raise SnapshotError(
                f"cannot restore in place: database {database} is in use by {', '.join(sessions)}; stop those "
                "(Dagster daemon and code server, MLflow server, runs) or pass --stop-writers"
            )
        stopped += sessions
    done: list[tuple[str, str, str]] = []  # (url, from, to), to undo
    try:
        for live_url, restored in pairs:
            live = normalize_url(live_url).database
            with admin(live_url) as connection:
                if stop_others:
                    connection.exec_driver_sql(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %(db)s AND pid <> pg_backend_pid()",
                        {"db": live},
                    )
                connection.exec_driver_sql(f'ALTER DATABASE "{_ident(live)}" RENAME TO "{_ident(live + aside_suffix)}"')
                done.append((live_url, live, live + aside_suffix))
                connection.exec_driver_sql(f'ALTER DATABASE "{_ident(restored)}" RENAME TO "{_ident(live)}"')
                done.append((live_url, restored, live))
    except BaseException as exc:
        for url, old, new in reversed(done):
            with contextlib.suppress(Exception), admin(url) as connection:
                connection.exec_driver_sql(f'ALTER DATABASE "{_ident(new)}" RENAME TO "{_ident(old)}"')
        if isinstance(exc, Exception) and not isinstance(exc, BackupError):
            raise SnapshotError(f"cannot restore in place: renaming the databases failed ({_first_line(exc)}); "
                                "the live databases were put back") from None
        raise
    return stopped
