"""Alembic environment for the store, configured from code (see `quadra_pipeline.store.migrate`).

The caller passes an engine in `config.attributes["engine"]` (made by `make_engine`, so SQLite
gets WAL, busy timeout and `BEGIN IMMEDIATE`), or only a URL in the `sqlalchemy.url` option.

- The whole upgrade runs in one transaction, on PostgreSQL and on SQLite (both have
  transactional DDL): a failed migration leaves the database as it was.
- Concurrent upgrades are serialised: a PostgreSQL advisory lock, SQLite's write lock. The
  current revision is read after the lock is held, so the second process finds nothing to do.
- SQLite: `render_as_batch=True` (ALTER through copy-and-move) with foreign keys switched off
  during the migration (a batch copy drops the old table, which would fire ON DELETE actions),
  then checked with `PRAGMA foreign_key_check` and switched back on.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from quadra_pipeline.store.errors import SchemaError
from quadra_pipeline.store.models import Base
from quadra_pipeline.store.session import make_engine

#: Key of the PostgreSQL advisory lock held during migrations ("quadra_m" as an int64).
ADVISORY_LOCK_KEY = 0x7175616472615F6D

config = context.config
target_metadata = Base.metadata


def _common_options() -> dict:
    return {
        "target_metadata": target_metadata,
        "render_as_batch": True,
        "compare_type": True,
        "compare_server_default": True,
        "transactional_ddl": True,
    }


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_common_options(),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    owned = engine is None
    if owned:
        engine = make_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                _sqlite_pragma(connection, "PRAGMA foreign_keys = OFF")
            try:
                with connection.begin():
                    if connection.dialect.name == "postgresql":
                        connection.execute(
                            text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
                        )
                    context.configure(connection=connection, **_common_options())
                    context.run_migrations()
                    if sqlite:
                        problems = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                        if problems:
                            raise SchemaError(
                                f"migration left {len(problems)} broken foreign key(s), first: "
                                f"{tuple(problems[0])}; rolled back"
                            )
            finally:
                if sqlite:
                    _sqlite_pragma(connection, "PRAGMA foreign_keys = ON")
    finally:
        if owned:
            engine.dispose()


def _sqlite_pragma(connection, statement: str) -> None:
    # Outside any transaction (SQLite ignores `foreign_keys` inside one), on the raw
    # connection so that SQLAlchemy does not begin a transaction for it.
    cursor = connection.connection.driver_connection.cursor()
    try:
        cursor.execute(statement)
    finally:
        cursor.close()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
