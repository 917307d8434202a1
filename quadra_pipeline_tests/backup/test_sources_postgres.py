"""What a backup takes from PostgreSQL: plain pg_dump streams in one snapshot, their restores.

These tests use the server at `QUADRA_TEST_POSTGRES_URL` (default
`postgresql+psycopg2://postgres@127.0.0.1:5432/postgres`), create their own databases and drop
them; they are skipped with the reason if it cannot be reached, and fail instead under `CI` or
`QUADRA_REQUIRE_POSTGRES=1` (`QUADRA_REQUIRE_POSTGRES=0` skips), as in `store/conftest.py`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from quadra_pipeline.backup.postgres import restore_dump
from quadra_pipeline.backup.sources import Snapshot, SnapshotError, SourceStream
from quadra_pipeline.store.session import mask_url, normalize_url

from .source_homes import REVISION, Home, leftover_workdirs, write

DEFAULT_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"



def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no", "off")


def postgres_required() -> bool:
    explicit = os.environ.get("QUADRA_REQUIRE_POSTGRES", "").strip()
    if explicit in {"0", "1"}:
        return explicit == "1"
    return _truthy(os.environ.get("CI"))


@pytest.fixture(scope="module")
def new_postgres_database() -> Iterator[Callable[[], str]]:
    """Factory: the URL of a new, empty database on the test server (all dropped at the end)."""
    raw = os.environ.get("QUADRA_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL
    admin_url = normalize_url(raw)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means "no server"
        admin.dispose()
        first = next((line.strip() for line in str(getattr(exc, "orig", exc)).splitlines() if line.strip()), "")
        reason = f"PostgreSQL test server {mask_url(admin_url)} unreachable: {first}"
        if postgres_required():
            pytest.fail(f"{reason} (required: CI or QUADRA_REQUIRE_POSTGRES=1 is set)", pytrace=False)
        pytest.skip(f"{reason} (set QUADRA_TEST_POSTGRES_URL to run these tests)")
    prefix = f"quadra_test_backup_{secrets.token_hex(4)}"
    created: list[str] = []

    def create() -> str:
        name = f"{prefix}_{len(created)}"
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        created.append(name)
        return admin_url.set(database=name).render_as_string(hide_password=False)

    try:
        yield create
    finally:
        with admin.connect() as connection:
            for name in created:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def fill_postgres(url: str, rows: int = 50, revision: str = REVISION) -> None:
    engine = create_engine(normalize_url(url))
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE runs (id SERIAL PRIMARY KEY, name TEXT NOT NULL)")
        connection.exec_driver_sql(f"INSERT INTO runs (name) SELECT 'run ' || g FROM generate_series(1, {rows}) g")
        connection.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        connection.exec_driver_sql(f"INSERT INTO alembic_version VALUES ('{revision}')")
        connection.exec_driver_sql("CREATE SCHEMA extra")
        connection.exec_driver_sql("CREATE TABLE extra.things (x INT)")
        connection.exec_driver_sql("INSERT INTO extra.things VALUES (1), (2), (3)")
    engine.dispose()


def pg_rows(url: str) -> dict[str, object]:
    engine = create_engine(normalize_url(url))
    with engine.connect() as connection:
        result = {
            "runs": connection.exec_driver_sql("SELECT count(*), coalesce(sum(id), 0) FROM runs").one(),
            "things": connection.exec_driver_sql("SELECT count(*) FROM extra.things").scalar(),
            "revision": connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar(),
        }
    engine.dispose()
    return result


def with_password(url: str, password: str) -> str:
    return normalize_url(url).set(password=password).render_as_string(hide_password=False)


@pytest.fixture
def pg_wrapper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `pg_dump` first on PATH that logs its arguments and PGPASSWORD, then runs the real one."""
    real = shutil.which("pg_dump")
    if real is None:
        pytest.skip("pg_dump is not installed")
    folder = tmp_path / "bin"
    folder.mkdir()
    log = tmp_path / "pg_dump.log"
    script = folder / "pg_dump"
    script.write_text(
        "#!/bin/sh\n"
        f"for a in \"$@\"; do printf 'ARG %s\\n' \"$a\" >> '{log}'; done\n"
        f"printf 'PGPASSWORD %s\\n' \"$PGPASSWORD\" >> '{log}'\n"
        f"exec '{real}' \"$@\"\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    return log


def dump_of(snapshot: Snapshot, path: str, into: Path) -> Path:
    """Read a PostgreSQL part's stream to its end, as the repository does, into a file."""
    [stream] = [f for f in snapshot.files if f.path == path]
    assert isinstance(stream, SourceStream)
    with stream.open() as handle:
        into.write_bytes(handle.read())
    return into


@pytest.mark.postgres
def test_postgres_dump_is_a_plain_stream_and_restores(
    new_postgres_database: Callable[[], str], home: Home, pg_wrapper: Path, tmp_path: Path
) -> None:
    password = "s3cr3t-Pa55word"
    project, mlflow = new_postgres_database(), new_postgres_database()
    fill_postgres(project, 50)
    fill_postgres(mlflow, 7, revision="mlflow-rev")
    write(home.checkpoints / "a.pt")
    with home.snapshot(
        database_url=with_password(project, password), mlflow_tracking_uri=with_password(mlflow, password)
    ) as snapshot:
        by_path = {f.path: f for f in snapshot.files}
        assert list(by_path) == ["checkpoints/a.pt", "mlflow-db/mlflow.sql", "project-db/quadra.sql"]
        assert isinstance(by_path["project-db/quadra.sql"], SourceStream) and by_path["project-db/quadra.sql"].mode == 0o600
        part = snapshot.sources["parts"]["project-db"]
        assert "tables" not in part  # counted when the dump runs, in its snapshot
        dump = dump_of(snapshot, "project-db/quadra.sql", tmp_path / "quadra.sql")
        assert dump.read_bytes().startswith(b"--\n-- PostgreSQL database dump")
        assert part["kind"] == "postgresql" and part["method"] == "pg_dump --format=plain, streamed"
        assert part["alembic_revision"] == REVISION
        assert part["tables"] == {"alembic_version": 1, "runs": 50, "extra.things": 3}
        assert part["location"] == mask_url(with_password(project, password))
        assert "***" in part["location"] and part["server_version"] and part["pg_dump_version"]
        dump_of(snapshot, "mlflow-db/mlflow.sql", tmp_path / "mlflow.sql")
        assert snapshot.sources["parts"]["mlflow-db"]["alembic_revision"] == "mlflow-rev"
        assert password not in json.dumps(snapshot.sources)

        # The password travels in PGPASSWORD, never on the command line.
        log = pg_wrapper.read_text()
        args = [line for line in log.splitlines() if line.startswith("ARG ")]
        assert any(a.startswith("ARG --snapshot=") for a in args) and "ARG --format=plain" in args
        assert password not in "\n".join(args)
        assert f"PGPASSWORD {password}" in log

        target = new_postgres_database()
        restore_dump(dump, with_password(target, password))
        assert pg_rows(target) == pg_rows(project)


@pytest.mark.postgres
def test_an_unchanged_postgres_database_dumps_to_the_same_bytes_without_its_catalogue_rows(
    new_postgres_database: Callable[[], str], home: Home, tmp_path: Path
) -> None:
    """What makes hourly PostgreSQL backups deduplicate: no timestamp, no random restrict key,
    no compression; and the backup catalogue (which each backup changes) dumped without rows."""
    project = new_postgres_database()
    fill_postgres(project, 20)
    engine = create_engine(normalize_url(project))
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE backups (id SERIAL PRIMARY KEY, backup_id TEXT)")
        connection.exec_driver_sql("INSERT INTO backups (backup_id) VALUES ('b1'), ('b2')")
    dumps = []
    for hour in range(2):
        with home.snapshot(database_url=project, mlflow_tracking_uri="http://mlflow:5000") as snapshot:
            dumps.append(dump_of(snapshot, "project-db/quadra.sql", tmp_path / f"{hour}.sql").read_bytes())
            part = snapshot.sources["parts"]["project-db"]
        with engine.begin() as connection:  # what a backup does to the catalogue
            connection.exec_driver_sql(f"INSERT INTO backups (backup_id) VALUES ('hour {hour}')")
    engine.dispose()
    assert dumps[0] == dumps[1]
    assert part["tables"]["backups"] == 0 and part["left_out_data"] == ["backups"]
    assert b"CREATE TABLE public.backups" in dumps[0] and b"COPY public.backups " not in dumps[0] and b"'hour 0'" not in dumps[1]


@pytest.mark.postgres
def test_the_dump_counts_its_own_rows_and_reads_no_table_twice(
    new_postgres_database: Callable[[], str], home: Home, tmp_path: Path
) -> None:
    """The hourly load on the live server: each table is read once, by pg_dump's COPY; the row
    counts in `sources` come from that stream (its COPY blocks), not from a `count(*)` of
    every table in the same snapshot. Rows with newlines, backslashes and a line that reads
    `\\.`, an empty table, a quoted name and another schema are counted right."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    project = new_postgres_database()
    fill_postgres(project, 40)
    engine = create_engine(normalize_url(project))
    with engine.begin() as connection:
        connection.exec_driver_sql('CREATE TABLE "odd ""name" (note TEXT)')
        connection.exec_driver_sql("INSERT INTO \"odd \"\"name\" VALUES (E'a\\nb'), (E'\\\\.'), (E'x\\n\\\\.\\ny'), (NULL)")
        connection.exec_driver_sql("CREATE TABLE empty_one (x INT)")
        connection.exec_driver_sql("CREATE TABLE backups (id SERIAL PRIMARY KEY, backup_id TEXT)")
        connection.exec_driver_sql("INSERT INTO backups (backup_id) VALUES ('b1')")
    engine.dispose()
    statements: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        with home.snapshot(database_url=project, mlflow_tracking_uri="http://mlflow:5000") as snapshot:
            dump = dump_of(snapshot, "project-db/quadra.sql", tmp_path / "counted.sql")
            part = snapshot.sources["parts"]["project-db"]
    finally:
        event.remove(Engine, "before_cursor_execute", seen)
    assert not [s for s in statements if "count(" in s.lower()], statements
    assert part["tables"] == {"alembic_version": 1, "runs": 40, "extra.things": 3, 'odd "name': 4, "empty_one": 0, "backups": 0}
    assert part["counted_from"] == "the dump's COPY blocks"
    import io

    from quadra_pipeline.backup.postgres import CopyCounter

    data = dump.read_bytes()
    for block in (1, 2, 3, 5, 64, 4096):  # any split of the stream, the terminator's included
        counter = CopyCounter(io.BytesIO(data))
        while counter.read(block):
            pass
        assert counter.counts() == {k: v for k, v in part["tables"].items() if k != "backups"}
    target = new_postgres_database()
    restore_dump(dump, target)
    check = create_engine(normalize_url(target))
    with check.connect() as connection:
        assert connection.exec_driver_sql('SELECT count(*) FROM "odd ""name"').scalar() == 4
    check.dispose()


@pytest.mark.postgres
def test_postgres_counts_match_the_dump_while_writes_continue(
    new_postgres_database: Callable[[], str], home: Home, tmp_path: Path
) -> None:
    project = new_postgres_database()
    fill_postgres(project, 10)
    stop = threading.Event()
    inserted = [0]

    def writer() -> None:
        engine = create_engine(normalize_url(project), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            while not stop.is_set():
                connection.exec_driver_sql("INSERT INTO runs (name) VALUES ('live')")
                inserted[0] += 1
        engine.dispose()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        while inserted[0] < 50:
            time.sleep(0.01)
        with home.snapshot(database_url=project, mlflow_tracking_uri="http://mlflow:5000") as snapshot:
            dump = dump_of(snapshot, "project-db/quadra.sql", tmp_path / "live.sql")
            recorded = snapshot.sources["parts"]["project-db"]["tables"]["runs"]
            target = new_postgres_database()
            restore_dump(dump, target)
    finally:
        stop.set()
        thread.join(timeout=30)
    restored = pg_rows(target)["runs"][0]
    assert restored == recorded > 10 + 50
    assert restored < 10 + inserted[0]  # the writer kept going during the dump


@pytest.mark.postgres
def test_postgres_errors_name_the_database_with_the_password_masked(
    new_postgres_database: Callable[[], str], home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = "hunter2-very-secret"
    url = with_password(new_postgres_database(), password)
    masked = mask_url(url)

    missing = with_password(normalize_url(url).set(database="quadra_no_such_db").render_as_string(False), password)
    with home.snapshot(database_url=missing) as snapshot, pytest.raises(SnapshotError) as caught:
        dump_of(snapshot, "project-db/quadra.sql", tmp_path / "x.sql")
    message = str(caught.value)
    assert message.startswith(f"cannot back up the project database {mask_url(missing)}: ")
    assert "quadra_no_such_db" in message and "does not exist" in message and password not in message

    failing = tmp_path / "failing"
    failing.mkdir()
    (failing / "pg_dump").write_text(
        f"#!/bin/sh\ncase \"$1\" in --help|--version) exit 0;; esac\n"
        f"echo 'pg_dump: error: simulated failure ({password})' >&2\nexit 1\n"
    )
    (failing / "pg_dump").chmod(0o755)
    monkeypatch.setenv("PATH", f"{failing}{os.pathsep}{os.environ['PATH']}")
    with home.snapshot(database_url=url) as snapshot, pytest.raises(SnapshotError) as caught:
        dump_of(snapshot, "project-db/quadra.sql", tmp_path / "y.sql")
    assert str(caught.value) == (
        f"cannot back up the project database {masked}: pg_dump failed (exit 1): "
        "pg_dump: error: simulated failure (***)"
    )

    (failing / "pg_dump").write_text("#!/bin/sh\ncase \"$1\" in --help|--version) exit 0;; esac\nsleep 30\n")
    with home.snapshot(database_url=url, dump_timeout=1) as snapshot, pytest.raises(SnapshotError) as caught:
        started = time.monotonic()
        dump_of(snapshot, "project-db/quadra.sql", tmp_path / "z.sql")
    assert str(caught.value) == f"cannot back up the project database {masked}: pg_dump did not finish within 1 s (killed)"
    assert time.monotonic() - started < 10

    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with home.snapshot(database_url=url) as snapshot, pytest.raises(SnapshotError, match=r"pg_dump was not found on PATH") as caught:
        dump_of(snapshot, "project-db/quadra.sql", tmp_path / "w.sql")
    assert masked in str(caught.value) and password not in str(caught.value)
    with pytest.raises(SnapshotError, match=r"pg_restore was not found on PATH"):
        restore_dump(write(tmp_path / "x.pgdump", b"PGDMP"), url)
    with pytest.raises(SnapshotError, match=r"psql was not found on PATH"):
        restore_dump(write(tmp_path / "x.sql", b"select 1;"), url)
    assert leftover_workdirs(home.backups) == []


def test_restore_dump_refuses_bad_input(tmp_path: Path) -> None:
    url = "postgresql://app:hunter2@127.0.0.1:5432/quadra"
    with pytest.raises(SnapshotError) as caught:
        restore_dump(tmp_path / "missing.sql", url)
    assert str(caught.value) == (
        f"cannot restore {tmp_path / 'missing.sql'} into "
        "postgresql+psycopg2://app:***@127.0.0.1:5432/quadra: the dump file does not exist"
    )
    with pytest.raises(SnapshotError, match="not a PostgreSQL database URL"):
        restore_dump(write(tmp_path / "x.pgdump", b"PGDMP"), "sqlite:///x.db")
    with pytest.raises(SnapshotError, match="neither a custom-format dump"):
        restore_dump(write(tmp_path / "x.txt", b"hello"), url)


@pytest.mark.postgres
@pytest.mark.parametrize("suffix", [".sql", ".pgdump"])
def test_restore_of_a_corrupt_dump_changes_nothing(new_postgres_database: Callable[[], str], tmp_path: Path, suffix: str) -> None:
    target = new_postgres_database()
    fill_postgres(target, 5)
    before = pg_rows(target)
    content = b"PGDMP" + os.urandom(2000) if suffix == ".pgdump" else b"CREATE TABLE fine (x int);\nTHIS IS NOT SQL;\n"
    bad = write(tmp_path / f"bad{suffix}", content)
    tool = "pg_restore" if suffix == ".pgdump" else "psql"
    with pytest.raises(SnapshotError, match=rf"cannot restore .*bad\{suffix} into .*: {tool} failed \(exit [0-9]+\): "):
        restore_dump(bad, target)
    assert pg_rows(target) == before
    engine = create_engine(normalize_url(target))
    with engine.connect() as connection:  # one transaction: the table before the error is not there either
        assert connection.exec_driver_sql("SELECT to_regclass('fine')").scalar() is None
    engine.dispose()
