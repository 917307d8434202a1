"""Schema migrations, run from code (no `alembic.ini` needed; works from an installed wheel).

    upgrade(url)                # to the newest revision ("head")
    current(url)                # revision the database is at, None if never migrated
    ensure_schema(engine)       # upgrade if empty or behind; no-op if current
    downgrade(url, "base")      # back to nothing (tests, or undoing a revision)

Developers add a revision with `revision(url, "message", autogenerate=True)` (against a database
at head) and review the generated file under `migrations/versions/`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import URL, Engine, inspect
from sqlalchemy.exc import DBAPIError

from .errors import SchemaError
from .session import connection_error, make_engine, mask_url

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version"

EngineOrUrl = Engine | URL | str

# Alembic keeps the running migration environment in module globals (`alembic.context`,
# `alembic.op`): two threads migrating at once would trample each other. Between processes
# the database serialises migrations (see migrations/env.py).
_ALEMBIC_LOCK = threading.RLock()


def alembic_config(engine_or_url: EngineOrUrl | None = None) -> Config:
    """An Alembic `Config` pointing at the packaged migrations (for `alembic.command.*`)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    if isinstance(engine_or_url, Engine):
        cfg.attributes["engine"] = engine_or_url
        url = engine_or_url.url
    else:
        url = engine_or_url
    if url is not None:
        rendered = url.render_as_string(hide_password=False) if isinstance(url, URL) else str(url)
        # ConfigParser interpolation: a literal % (URL-encoded passwords) must be doubled.
        cfg.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migrations packaged"
    return head


@contextmanager
def _engine(engine_or_url: EngineOrUrl) -> Iterator[Engine]:
    if isinstance(engine_or_url, Engine):
        yield engine_or_url
        return
    engine = make_engine(engine_or_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _run(engine: Engine, what: str, fn, *args) -> None:
    try:
        with _ALEMBIC_LOCK:
            fn(alembic_config(engine), *args)
    except DBAPIError as exc:
        if exc.statement is None:  # failed to connect (no statement ran)
            raise connection_error(engine, exc) from None
        raise
    except CommandError as exc:
        raise SchemaError(f"{what} failed on {mask_url(engine.url)}: {exc}") from None


def upgrade(engine_or_url: EngineOrUrl, revision: str = "head") -> None:
    """Upgrade the database to `revision` (default: the newest)."""
    with _engine(engine_or_url) as engine:
        _run(engine, f"upgrade to {revision}", command.upgrade, revision)


def downgrade(engine_or_url: EngineOrUrl, revision: str) -> None:
    """Downgrade the database to `revision` ("base" removes every table of the store)."""
    with _engine(engine_or_url) as engine:
        _run(engine, f"downgrade to {revision}", command.downgrade, revision)


def current(engine_or_url: EngineOrUrl) -> str | None:
    """The revision the database is at; None if it was never migrated (or is empty)."""
    with _engine(engine_or_url) as engine:
        try:
            with engine.connect() as connection:
                return MigrationContext.configure(connection).get_current_revision()
        except DBAPIError as exc:
            raise connection_error(engine, exc) from None


def ensure_schema(engine_or_url: EngineOrUrl) -> str:
    """Bring the database to the newest revision if it is empty or behind; return the revision.

    A no-op (one query) on a current database. Refuses, with `SchemaError`, a database that
    has tables but no migration history (e.g. one made by the original app's `create_all`),
    and one at a revision this code does not know (made by newer code).
    """
    head = head_revision()
    with _ALEMBIC_LOCK, _engine(engine_or_url) as engine:
        try:
            with engine.connect() as connection:
                at = MigrationContext.configure(connection).get_current_revision()
                tables = set(inspect(connection).get_table_names()) if at is None else set()
        except DBAPIError as exc:
            raise connection_error(engine, exc) from None
        if at == head:
            return head
        if at is None:
            ours = tables & set(_model_tables())
            if ours:
                raise SchemaError(
                    f"database {mask_url(engine.url)} has tables {sorted(ours)} but no "
                    f"'{VERSION_TABLE}' table: it was not created by these migrations "
                    "(e.g. the original app's create_all); migrate its data into a new database"
                )
        else:
            script = ScriptDirectory.from_config(alembic_config())
            try:
                known = script.get_revision(at) is not None
            except CommandError:
                known = False
            if not known:
                raise SchemaError(
                    f"database {mask_url(engine.url)} is at revision {at!r}, which this version "
                    f"of quadra-pipeline does not know (newest known: {head!r}); "
                    "was it migrated by newer code?"
                )
        upgrade(engine, "head")
        return head


def revision(engine_or_url: EngineOrUrl, message: str, *, autogenerate: bool = True) -> None:
    """Write a new revision file (development only; review it before committing)."""
    with _engine(engine_or_url) as engine:
        _run(
            engine,
            "revision",
            lambda cfg: command.revision(cfg, message=message, autogenerate=autogenerate),
        )


def _model_tables() -> list[str]:
    from .models import Base

    return list(Base.metadata.tables)


__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "current",
    "downgrade",
    "ensure_schema",
    "head_revision",
    "revision",
    "upgrade",
]
