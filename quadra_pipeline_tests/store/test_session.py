"""Engines and sessions: URL handling, clear errors, SQLite concurrency settings, session_scope."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from quadra_pipeline.store import (
    StoreError,
    TrainingMetric,
    TrainingRun,
    add_metrics,
    current,
    ensure_schema,
    finish_training_run,
    make_engine,
    make_sessionmaker,
    mask_url,
    normalize_url,
    session_scope,
    start_training_run,
    upgrade,
)
from quadra_pipeline.store.session import SQLITE_BUSY_TIMEOUT_MS

SECRET = "s3cr3t-pw"


# URLs and errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("postgresql://u:p@db.example:5432/quadra", "postgresql+psycopg2"),
        ("postgres://u:p@db.example/quadra", "postgresql+psycopg2"),
        ("postgresql+psycopg2://u@db.example/quadra", "postgresql+psycopg2"),
        ("postgresql+psycopg://u@db.example/quadra", "postgresql+psycopg"),
        ("sqlite:////tmp/x.db", "sqlite"),
    ],
)
def test_postgres_urls_are_pinned_to_psycopg2(given: str, driver: str) -> None:
    assert normalize_url(given).drivername == driver


def test_mask_url_hides_the_password_even_when_unparseable() -> None:
    assert SECRET not in mask_url(f"postgresql://u:{SECRET}@h/db")
    assert "***" in mask_url(f"postgresql://u:{SECRET}@h/db")
    assert mask_url(f"weird//u:{SECRET}@h:port:x/db") == "weird//u:***@h:port:x/db"
    assert mask_url("sqlite:///plain.db") == "sqlite:///plain.db"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url", "cannot parse database URL 'not a url'"),
        (f"postgresql://u:{SECRET}@host:notaport/db", "port must be a number"),
        ("", "database URL is empty"),
        (f"nosuchdb://u:{SECRET}@h/db", "unknown database dialect or driver 'nosuchdb'"),
        (f"mysql+mysqldb://u:{SECRET}@h/db", "is not installed (MySQLdb)"),
    ],
)
def test_bad_urls_and_missing_drivers_give_one_clear_line(url: str, expected: str) -> None:
    with pytest.raises(StoreError) as caught:
        make_engine(url)
    message = str(caught.value)
    assert expected in message
    assert SECRET not in message
    assert "\n" not in message


@pytest.mark.timeout(30)
def test_unreachable_postgres_fails_fast_with_a_clear_message() -> None:
    url = f"postgresql://postgres:{SECRET}@127.0.0.1:1/quadra"
    expected = "cannot connect to database postgresql+psycopg2://postgres:***@127.0.0.1:1/quadra"
    for attempt in (
        lambda: make_engine(url, check=True),
        lambda: ensure_schema(url),
        lambda: current(url),
        lambda: upgrade(url),
    ):
        with pytest.raises(StoreError) as caught:
            attempt()
        message = str(caught.value)
        assert message.startswith(expected), message
        assert "refused" in message.lower()
        assert SECRET not in message
        assert "\n" not in message


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("env", "outcome"),
    [({}, "1 skipped"), ({"CI": "true"}, "1 error"), ({"QUADRA_REQUIRE_POSTGRES": "1"}, "1 error")],
)
def test_unreachable_test_server_skips_locally_but_fails_under_ci(env: dict, outcome: str) -> None:
    # The PostgreSQL half of this suite must never vanish silently from a CI run.
    child_env = {k: v for k, v in os.environ.items() if k not in ("CI", "QUADRA_REQUIRE_POSTGRES")}
    child_env.update(env, QUADRA_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:1/postgres")
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", f"{Path(__file__).resolve()}::test_session_scope_accepts_a_sessionmaker",
         "-q", "-rs", "-p", "no:cacheprovider", "-W", "ignore"],
        cwd=root, env=child_env, capture_output=True, text=True, timeout=50,
    )
    summary = result.stdout.strip().splitlines()[-1]
    assert f"1 passed, {outcome}" in summary, result.stdout[-2000:]
    assert "127.0.0.1:1/postgres unreachable" in result.stdout


def test_default_url_comes_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QUADRA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    engine = make_engine()
    try:
        assert Path(engine.url.database) == tmp_path / "home" / "quadra.db"
        assert (tmp_path / "home").is_dir()  # parent folder created
    finally:
        engine.dispose()


# SQLite settings -------------------------------------------------------------------------


def _raw_pragma(connection, name: str):
    # On the DBAPI connection: through SQLAlchemy the statement would first BEGIN IMMEDIATE.
    return connection.connection.driver_connection.execute(f"PRAGMA {name}").fetchone()[0]


def _pragma(engine: Engine, name: str):
    with engine.connect() as connection:
        return _raw_pragma(connection, name)


def test_sqlite_gets_wal_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'a' / 'b' / 'store.db'}")
    try:
        assert (tmp_path / "a" / "b").is_dir()
        assert _pragma(engine, "journal_mode") == "wal"
        assert _pragma(engine, "busy_timeout") == SQLITE_BUSY_TIMEOUT_MS == 30000
        assert _pragma(engine, "foreign_keys") == 1
        assert _pragma(engine, "synchronous") == 1  # NORMAL
        # Every pooled connection gets them, not only the first.
        with engine.connect() as one, engine.connect() as two:
            assert one.connection.driver_connection is not two.connection.driver_connection
            for connection in (one, two):
                assert _raw_pragma(connection, "busy_timeout") == 30000
                assert _raw_pragma(connection, "foreign_keys") == 1
                assert _raw_pragma(connection, "journal_mode") == "wal"
    finally:
        engine.dispose()


def test_sqlite_busy_timeout_is_configurable_and_memory_databases_work(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 's.db'}", sqlite_busy_timeout_ms=1234)
    memory = make_engine("sqlite://")
    try:
        assert _pragma(engine, "busy_timeout") == 1234
        assert _pragma(memory, "foreign_keys") == 1
        assert _pragma(memory, "journal_mode") == "memory"
    finally:
        engine.dispose()
        memory.dispose()


@pytest.fixture
def sqlite_store(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'concurrent.db'}")
    ensure_schema(engine)
    yield engine
    engine.dispose()


@pytest.mark.timeout(60)
def test_a_sqlite_writer_waits_for_the_lock_instead_of_failing(sqlite_store: Engine) -> None:
    events: list[str] = []
    holding = threading.Event()
    errors: list[BaseException] = []

    def second_writer() -> None:
        holding.wait()
        try:
            with session_scope(sqlite_store) as session:
                start_training_run(session, field_size=8, external_run_id="second")
            events.append("second committed")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=second_writer)
    thread.start()
    with session_scope(sqlite_store) as session:
        start_training_run(session, field_size=8, external_run_id="first")  # holds the write lock
        holding.set()
        thread.join(timeout=0.5)  # the second writer is blocked meanwhile
        assert thread.is_alive()
        events.append("first committing")
    thread.join(timeout=30)
    assert errors == []
    assert events == ["first committing", "second committed"]
    with session_scope(sqlite_store) as session:
        assert session.scalar(select(func.count()).select_from(TrainingRun)) == 2


def _write_runs(engine: Engine, label: str, runs: int, batches: int) -> None:
    for number in range(runs):
        with session_scope(engine) as session:
            # Read, then write, in one transaction: fails under SQLite's default deferred BEGIN
            # when another writer commits in between; BEGIN IMMEDIATE makes it wait instead.
            session.scalar(select(func.count()).select_from(TrainingRun))
            run = start_training_run(session, field_size=8, external_run_id=f"{label}-{number}")
            add_metrics(
                session,
                run,
                [
                    {"batch_number": b, "loss": 0.5, "reward": 1.0, "variance": 0.1, "field_mean": 0.0}
                    for b in range(batches)
                ],
            )
            finish_training_run(session, run)


@pytest.mark.timeout(60)
def test_concurrent_sqlite_writer_threads_both_succeed(sqlite_store: Engine) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def worker(label: str) -> None:
        try:
            barrier.wait()
            _write_runs(sqlite_store, label, runs=40, batches=25)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=50)
    assert errors == []
    with session_scope(sqlite_store) as session:
        assert session.scalar(select(func.count()).select_from(TrainingRun)) == 80
        assert session.scalar(select(func.count()).select_from(TrainingMetric)) == 80 * 25


def _process_writer(url: str, label: str, start: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    engine = make_engine(url)
    start.wait(30)
    try:
        _write_runs(engine, label, runs=30, batches=50)
    finally:
        engine.dispose()


@pytest.mark.timeout(90)
def test_concurrent_sqlite_writer_processes_both_succeed(sqlite_store: Engine) -> None:
    url = sqlite_store.url.render_as_string(hide_password=False)
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    workers = [context.Process(target=_process_writer, args=(url, name, start)) for name in ("p", "q")]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(timeout=80)
    assert [worker.exitcode for worker in workers] == [0, 0]
    with session_scope(sqlite_store) as session:
        assert session.scalar(select(func.count()).select_from(TrainingRun)) == 60
        assert session.scalar(select(func.count()).select_from(TrainingMetric)) == 60 * 50


# session_scope (both databases) ------------------------------------------------------------


def test_session_scope_commits_on_success(engine: Engine) -> None:
    with session_scope(engine) as session:
        run = start_training_run(session, field_size=16, external_run_id="commit-me")
    assert inspect(run).detached  # closed, yet still readable (expire_on_commit=False)
    assert run.id is not None and run.external_run_id == "commit-me"
    with session_scope(engine) as session:
        assert session.scalar(select(TrainingRun.field_size).where(TrainingRun.id == run.id)) == 16


def test_session_scope_rolls_back_and_reraises(engine: Engine) -> None:
    class Boom(Exception):
        pass

    seen = {}
    with pytest.raises(Boom):
        with session_scope(engine) as session:
            seen["session"] = session
            start_training_run(session, field_size=16, external_run_id="rolled-back")
            raise Boom
    assert not seen["session"].in_transaction()
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(TrainingRun)) == 0


def test_session_scope_rolls_back_a_failed_flush_and_keeps_the_original_error(engine: Engine) -> None:
    with pytest.raises(IntegrityError):
        with session_scope(engine) as session:
            session.add(TrainingRun(field_size=1, status="running", config={}))
            session.add(TrainingRun(field_size=1, status="no-such-status", config={}))
            session.flush()
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(TrainingRun)) == 0


def test_session_scope_accepts_a_sessionmaker(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    assert isinstance(factory, sessionmaker)
    with session_scope(factory) as session:
        session.execute(text("SELECT 1"))
        start_training_run(session, field_size=4)
    with session_scope(factory) as session:
        assert session.scalar(select(func.count()).select_from(TrainingRun)) == 1
    with pytest.raises(TypeError):
        with session_scope("sqlite://"):  # type: ignore[arg-type]
            pass
