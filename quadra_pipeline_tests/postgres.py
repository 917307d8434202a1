"""A throwaway database on the test PostgreSQL server, for tests outside the store package.

Same rule as `store/conftest.py`: no server means skip with the reason, except under `CI` or
`QUADRA_REQUIRE_POSTGRES=1`, where it is a failure (`QUADRA_REQUIRE_POSTGRES=0` skips).
"""

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

ADMIN_URL = os.environ.get("QUADRA_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


def postgres_required() -> bool:
    explicit = os.environ.get("QUADRA_REQUIRE_POSTGRES", "").strip()
    if explicit in {"0", "1"}:
        return explicit == "1"
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


@contextmanager
def scratch_database(prefix: str) -> Iterator[sa.URL]:
    """Create a database named `<prefix>_<random>`, yield its URL, drop it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'create database "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        reason = f"no PostgreSQL server at {sa.make_url(ADMIN_URL).render_as_string()}: {str(exc).splitlines()[0]}"
        if postgres_required():
            pytest.fail(f"{reason} (required: CI or QUADRA_REQUIRE_POSTGRES=1)", pytrace=False)
        pytest.skip(reason)
    try:
        yield sa.make_url(ADMIN_URL).set(database=name)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))
        admin.dispose()
