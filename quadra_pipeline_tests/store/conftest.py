"""Fixtures: the same store tests on SQLite (a temp file) and on a real PostgreSQL server.

PostgreSQL: the server comes from `QUADRA_TEST_POSTGRES_URL` (default
`postgresql+psycopg2://postgres@127.0.0.1:5432/postgres`, an admin URL); each test session
creates its own databases (`quadra_test_<random>`) and drops them at the end. If the server
cannot be reached the PostgreSQL tests are skipped with the reason, unless `CI` is set (truthy)
or `QUADRA_REQUIRE_POSTGRES=1`: then they fail, so CI never skips them silently.
`QUADRA_REQUIRE_POSTGRES=0` (what .ci/run sets on a machine with no PostgreSQL installed)
skips them even under CI, with the reason in the summary.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, create_engine, make_url, text

from quadra_pipeline.store import Base, ensure_schema, make_engine
from quadra_pipeline.store.session import mask_url, normalize_url

DEFAULT_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no", "off")


def postgres_required() -> bool:
    explicit = os.environ.get("QUADRA_REQUIRE_POSTGRES", "").strip()
    if explicit in {"0", "1"}:  # .ci/run sets it: 1 where a server is installed, 0 where none is
        return explicit == "1"
    return _truthy(os.environ.get("CI"))


class PostgresServer:
    """Creates throw-away databases on the test server and drops them all at the end."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = normalize_url(admin_url)
        self.admin = create_engine(
            self.admin_url,
            isolation_level="AUTOCOMMIT",
            connect_args={"connect_timeout": 5},
            pool_pre_ping=True,
        )
        self.created: list[str] = []
        self.prefix = f"quadra_test_{secrets.token_hex(4)}"

    def create_database(self) -> str:
        name = f"{self.prefix}_{len(self.created)}"
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self.admin.connect() as connection:
            for name in self.created:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()
        self.admin.dispose()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The PostgreSQL test server, or a skip (a failure under CI) if it cannot be reached."""
    raw = os.environ.get("QUADRA_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL
    server = PostgresServer(raw)
    reason = None
    try:
        with server.admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means "no server"
        server.admin.dispose()
        first = next((line.strip() for line in str(getattr(exc, "orig", exc)).splitlines() if line.strip()), "")
        reason = f"PostgreSQL test server {mask_url(server.admin_url)} unreachable: {first}"
    if reason is not None:
        if postgres_required():
            pytest.fail(f"{reason} (required: CI or QUADRA_REQUIRE_POSTGRES=1 is set)", pytrace=False)
        pytest.skip(f"{reason} (set QUADRA_TEST_POSTGRES_URL to run these tests)")
    try:
        yield server
    finally:
        server.drop_all()


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def new_database_url(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[], str]:
    """Factory: the URL of a new, empty database on the current backend."""
    if backend == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        return server.create_database

    counter = iter(range(1_000_000))

    def sqlite_url() -> str:
        folder = tmp_path_factory.mktemp("sqlite")
        return f"sqlite:///{folder / f'store_{next(counter)}.db'}"

    return sqlite_url


@pytest.fixture
def empty_url(new_database_url: Callable[[], str]) -> str:
    """A new, empty database (no tables) for migration tests."""
    return new_database_url()


@pytest.fixture(scope="session")
def store_engine(new_database_url: Callable[[], str]) -> Iterator[Engine]:
    """One migrated database per backend and test session."""
    engine = make_engine(new_database_url())
    ensure_schema(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def engine(store_engine: Engine) -> Iterator[Engine]:
    """The migrated store, emptied after each test."""
    yield store_engine
    with store_engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(table.delete())


def pytest_report_header(config: pytest.Config) -> str:  # noqa: ARG001
    raw = os.environ.get("QUADRA_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL
    try:
        shown = mask_url(make_url(raw))
    except Exception:  # noqa: BLE001
        shown = "<unparseable>"
    required = "required" if postgres_required() else "optional (skipped if unreachable)"
    return f"quadra store: PostgreSQL tests use {shown}, {required}"
