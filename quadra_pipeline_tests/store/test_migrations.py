"""Alembic migrations on SQLite and PostgreSQL: they build exactly the models' schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from quadra_pipeline.store import Base, SchemaError, migrate, make_engine

MODEL_TABLES = {
    "alias_checks",
    "backups",
    "model_alias_events",
    "model_versions",
    "system_states",
    "training_metrics",
    "training_runs",
}


def _diffs(engine: Engine) -> list:
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        return compare_metadata(context, Base.metadata)


def _tables(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(inspect(connection).get_table_names())


@pytest.fixture
def empty_engine(empty_url: str):
    engine = make_engine(empty_url)
    yield engine
    engine.dispose()


def test_models_declare_the_expected_tables() -> None:
    assert set(Base.metadata.tables) == MODEL_TABLES


def test_upgrade_on_empty_database_creates_exactly_the_models_schema(empty_engine: Engine) -> None:
    assert _tables(empty_engine) == set()
    assert migrate.current(empty_engine) is None

    migrate.upgrade(empty_engine)

    assert migrate.current(empty_engine) == migrate.head_revision() == "0002"
    assert _tables(empty_engine) == MODEL_TABLES | {"alembic_version"}
    assert _diffs(empty_engine) == []


def test_schema_comparison_does_notice_drift(empty_engine: Engine) -> None:
    # Guard against a vacuous "no diffs": remove an index and the comparison must say so.
    migrate.upgrade(empty_engine)
    with empty_engine.begin() as connection:
        connection.execute(text("DROP INDEX ix_backups_partition_key"))
    diffs = _diffs(empty_engine)
    assert [d[0] for d in diffs] == ["add_index"]
    assert diffs[0][1].name == "ix_backups_partition_key"


def test_constraints_and_indexes_have_stable_names(empty_engine: Engine) -> None:
    migrate.upgrade(empty_engine)
    with empty_engine.connect() as connection:
        inspector = inspect(connection)
        uniques = {u["name"] for u in inspector.get_unique_constraints("training_metrics")}
        indexes = {i["name"] for i in inspector.get_indexes("training_metrics")}
        fks = {fk["referred_table"]: fk for fk in inspector.get_foreign_keys("training_metrics")}
    assert "uq_training_metrics_training_run_id_batch_number" in uniques
    assert "ix_training_metrics_model_version_id" in indexes
    assert fks["training_runs"]["options"].get("ondelete") == "CASCADE"
    assert fks["model_versions"]["options"].get("ondelete") == "SET NULL"


def test_ensure_schema_upgrades_an_empty_database_and_is_then_a_no_op(empty_url: str) -> None:
    assert migrate.current(empty_url) is None
    assert migrate.ensure_schema(empty_url) == "0002"
    assert migrate.current(empty_url) == "0002"

    engine = make_engine(empty_url)
    try:
        statements: list[str] = []

        from sqlalchemy import event

        @event.listens_for(engine, "before_cursor_execute")
        def _record(conn, cursor, statement, *args):  # noqa: ANN001
            statements.append(statement)

        assert migrate.ensure_schema(engine) == "0002"
        assert migrate.ensure_schema(engine) == "0002"
        ddl = [s for s in statements if s.lstrip().upper().startswith(("CREATE", "ALTER", "DROP", "INSERT", "UPDATE"))]
        assert ddl == []
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
        assert _diffs(engine) == []
    finally:
        engine.dispose()


def test_downgrade_to_base_removes_everything_and_upgrade_again_works(empty_engine: Engine) -> None:
    migrate.upgrade(empty_engine)
    migrate.downgrade(empty_engine, "base")
    assert migrate.current(empty_engine) is None
    assert _tables(empty_engine) <= {"alembic_version"}

    migrate.upgrade(empty_engine, "0001")
    assert migrate.current(empty_engine) == "0001"
    assert "alias_checks" not in _tables(empty_engine)
    migrate.upgrade(empty_engine)  # 0001 -> 0002 on a database that already has the first schema
    assert migrate.current(empty_engine) == "0002"
    assert _diffs(empty_engine) == []


def test_ensure_schema_refuses_tables_without_migration_history(empty_engine: Engine) -> None:
    # What the original app's `create_all` left behind: our table names, no alembic_version.
    with empty_engine.begin() as connection:
        connection.execute(text("CREATE TABLE model_versions (id INTEGER PRIMARY KEY, version VARCHAR(100))"))
    with pytest.raises(SchemaError, match="no 'alembic_version' table"):
        migrate.ensure_schema(empty_engine)
    assert migrate.current(empty_engine) is None


def test_ensure_schema_refuses_a_revision_it_does_not_know(empty_engine: Engine) -> None:
    migrate.upgrade(empty_engine)
    with empty_engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'ffff_from_the_future'"))
    with pytest.raises(SchemaError, match="ffff_from_the_future"):
        migrate.ensure_schema(empty_engine)


def test_ensure_schema_leaves_other_tables_alone(empty_engine: Engine) -> None:
    with empty_engine.begin() as connection:
        connection.execute(text("CREATE TABLE someone_elses (id INTEGER PRIMARY KEY)"))
    migrate.ensure_schema(empty_engine)
    assert _tables(empty_engine) == MODEL_TABLES | {"alembic_version", "someone_elses"}


def test_migrations_are_packaged_without_an_ini_file() -> None:
    folder = migrate.MIGRATIONS_DIR
    assert (folder / "env.py").is_file()
    assert (folder / "script.py.mako").is_file()
    assert (folder / "versions" / "0001_initial.py").is_file()
    assert Path(migrate.alembic_config().get_main_option("script_location")) == folder


@pytest.mark.timeout(60)
def test_concurrent_ensure_schema_calls_do_not_collide(empty_url: str) -> None:
    # Two processes starting at once on an empty database: one migrates, the other waits for
    # the migration lock, then finds the database current.
    import threading

    barrier = threading.Barrier(2)
    results: list[str] = []
    errors: list[BaseException] = []

    def start() -> None:
        engine = make_engine(empty_url)
        try:
            barrier.wait()
            results.append(migrate.ensure_schema(engine))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=50)
    assert errors == []
    assert results == ["0002", "0002"]
    assert migrate.current(empty_url) == "0002"


def _ensure_schema_in_a_process(url: str, start, results) -> None:  # noqa: ANN001
    start.wait(30)
    try:
        results.put(migrate.ensure_schema(url))
    except BaseException as exc:  # noqa: BLE001
        results.put(f"error: {exc!r}")


@pytest.mark.timeout(60)
def test_concurrent_ensure_schema_in_two_processes(empty_url: str) -> None:
    # Serialised by the database itself: PostgreSQL advisory lock, SQLite write lock.
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    workers = [
        context.Process(target=_ensure_schema_in_a_process, args=(empty_url, start, results))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    start.set()
    outcomes = sorted(results.get(timeout=50) for _ in workers)
    for worker in workers:
        worker.join(timeout=10)
    assert outcomes == ["0002", "0002"]
    assert migrate.current(empty_url) == "0002"
