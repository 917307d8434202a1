"""Engines and sessions for the store (SQLite for development, PostgreSQL in production).

PostgreSQL driver: `postgresql://` (and Heroku-style `postgres://`) URLs are normalised to
`postgresql+psycopg2://`. SQLAlchemy 2.1 changed the default driver of a bare `postgresql://`
to psycopg 3, but dagster-postgres (which stores Dagster's own runs, often in the same server
and configured from the same URL) only works with psycopg2. One driver for the whole project
keeps a single `DATABASE_URL` usable everywhere. An explicit driver (`postgresql+psycopg://`)
is left alone.

SQLite engines are set up for several processes writing at once (Dagster steps, the CLI):
`journal_mode=WAL` (readers never block writers), `busy_timeout` (a writer waits for the lock
instead of failing with "database is locked"), `foreign_keys=ON`, `synchronous=NORMAL` (safe in
WAL mode). Transactions start with `BEGIN IMMEDIATE` by default: a transaction that reads and
then writes takes the write lock up front and waits for it, instead of failing when another
writer committed in between (SQLite cannot upgrade a stale read snapshot). Pass
`sqlite_begin="deferred"` for read-mostly consumers that must never wait for a writer.
The price of IMMEDIATE: a transaction holds the write lock even if it only reads, so do not
keep one session open while a second session in the same thread writes (the second would wait
for the first, up to the busy timeout). Keep `session_scope` blocks short.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from .errors import StoreError

log = logging.getLogger(__name__)

#: Driver used for PostgreSQL URLs that name none (see the module docstring).
POSTGRES_DRIVER = "psycopg2"
#: How long a SQLite writer waits for the write lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Seconds before a PostgreSQL connection attempt gives up (unless the URL sets it).
POSTGRES_CONNECT_TIMEOUT_S = 10

SqliteBegin = Literal["immediate", "deferred"]


# URLs -------------------------------------------------------------------------------------


def mask_url(url: str | URL) -> str:
    """The URL as text with its password replaced by `***` (also for unparseable strings)."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - fall back to masking the raw text
        return _mask_raw(str(url))


def _mask_raw(text: str) -> str:
    head, at, rest = text.rpartition("@")
    if not at:
        return text
    start = head.find("//")
    start = start + 2 if start >= 0 else 0
    colon = head.find(":", start)
    if colon < 0:
        return text
    return f"{head[: colon + 1]}***@{rest}"


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL and pin the PostgreSQL driver; `StoreError` if it cannot be parsed."""
    if isinstance(url, URL):
        parsed = url
    else:
        text = str(url).strip()
        if not text:
            raise StoreError("database URL is empty (set DATABASE_URL or leave it unset)")
        try:
            parsed = make_url(text)
        except (ArgumentError, ValueError) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "Could not parse" in detail:
                detail = "expected dialect[+driver]://user:password@host:port/database"
            elif "int()" in detail:
                detail = "the port must be a number"
            raise StoreError(f"cannot parse database URL {_mask_raw(text)!r}: {detail}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername=f"postgresql+{POSTGRES_DRIVER}")
    return parsed


def _is_sqlite_memory(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or database.startswith("file::memory:") or (
        "mode=memory" in database
    )


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL (None for in-memory and `file:` URI databases)."""
    database = url.database or ""
    if _is_sqlite_memory(url) or database.startswith("file:"):
        return None
    return Path(database).expanduser()


# Engines ----------------------------------------------------------------------------------


def make_engine(
    url: str | URL | None = None,
    *,
    check: bool = False,
    sqlite_busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
    sqlite_begin: SqliteBegin = "immediate",
    **engine_kwargs: Any,
) -> Engine:
    """An engine for `url` (default: `load_settings().database_url`).

    `check=True` connects once and raises `StoreError` (one line, password masked) if the
    database cannot be reached. Extra keyword arguments go to `sqlalchemy.create_engine`.
    """
    if url is None:
        from quadra_pipeline.settings import load_settings

        url = load_settings().database_url
    parsed = normalize_url(url)
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = dict(engine_kwargs)
    connect_args: dict[str, Any] = dict(kwargs.pop("connect_args", {}) or {})

    if backend == "sqlite":
        path = _sqlite_file(parsed)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the folder for database {mask_url(parsed)}: {exc}"
                ) from None
        connect_args.setdefault("timeout", sqlite_busy_timeout_ms / 1000)
    elif backend == "postgresql":
        kwargs.setdefault("pool_pre_ping", True)
        if parsed.get_driver_name() in ("psycopg2", "psycopg"):
            if "connect_timeout" not in parsed.query:
                connect_args.setdefault("connect_timeout", POSTGRES_CONNECT_TIMEOUT_S)
            if "application_name" not in parsed.query:
                connect_args.setdefault("application_name", "quadra-pipeline")
    if connect_args:
        kwargs["connect_args"] = connect_args

    try:
        engine = create_engine(parsed, **kwargs)
    except NoSuchModuleError:
        raise StoreError(
            f"unknown database dialect or driver {parsed.drivername!r} in URL {mask_url(parsed)}"
        ) from None
    except ImportError as exc:
        raise StoreError(
            f"database driver for {mask_url(parsed)} is not installed "
            f"({exc.name or exc}); install it or use sqlite:/// or postgresql+psycopg2://"
        ) from None
    except (ArgumentError, TypeError, ValueError) as exc:
        raise StoreError(f"cannot create an engine for {mask_url(parsed)}: {exc}") from None

    if backend == "sqlite":
        _configure_sqlite(
            engine,
            busy_timeout_ms=sqlite_busy_timeout_ms,
            wal=not _is_sqlite_memory(parsed),
            begin=sqlite_begin,
        )
    if check:
        check_connection(engine)
    return engine


def _configure_sqlite(engine: Engine, *, busy_timeout_ms: int, wal: bool, begin: SqliteBegin) -> None:
    if begin not in ("immediate", "deferred"):
        raise StoreError(f"sqlite_begin must be 'immediate' or 'deferred', not {begin!r}")
    begin_sql = "BEGIN IMMEDIATE" if begin == "immediate" else "BEGIN"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy (the "begin" hook below) start transactions, not the sqlite3 module,
        # whose implicit BEGIN only before DML breaks SAVEPOINT and read-then-write atomicity.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            if wal:
                _enable_wal(cursor, busy_timeout_ms)
                cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql(begin_sql)


def _enable_wal(cursor: Any, busy_timeout_ms: int) -> None:
    """Switch the database file to WAL (persistent: a no-op once the file is in WAL mode).

    Switching needs an exclusive lock, and SQLite reports a lock conflict at that moment
    immediately instead of calling the busy handler (two processes opening a brand-new file
    at once): retry until the busy timeout.
    """
    if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + busy_timeout_ms / 1000
    delay = 0.01
    while True:
        try:
            mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
    if str(mode).lower() != "wal":
        log.warning("SQLite refused WAL mode (journal_mode=%s)", mode)


def check_connection(engine: Engine) -> None:
    """Connect once; `StoreError` naming the (masked) URL and the cause if that fails."""
    try:
        with engine.connect() as connection:
            cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute("SELECT 1")
                cursor.fetchall()
            finally:
                cursor.close()
    except DBAPIError as exc:
        raise connection_error(engine, exc) from None


def connection_error(engine_or_url: Engine | URL | str, exc: BaseException) -> StoreError:
    """A one-line `StoreError` for a failure to reach the database."""
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else engine_or_url
    cause = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    detail = lines[0] if lines else type(cause).__name__
    return StoreError(f"cannot connect to database {mask_url(url)}: {detail}")


# Sessions ---------------------------------------------------------------------------------


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (`expire_on_commit=False`)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(bind: Engine | sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success, rolls back and re-raises on error, always closes."""
    if isinstance(bind, Engine):
        session = Session(bind=bind, expire_on_commit=False)
    elif isinstance(bind, sessionmaker):
        session = bind()
    else:
        raise TypeError(f"session_scope needs an Engine or a sessionmaker, not {type(bind).__name__}")
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


__all__ = [
    "POSTGRES_DRIVER",
    "SQLITE_BUSY_TIMEOUT_MS",
    "check_connection",
    "connection_error",
    "make_engine",
    "make_sessionmaker",
    "mask_url",
    "normalize_url",
    "session_scope",
]
