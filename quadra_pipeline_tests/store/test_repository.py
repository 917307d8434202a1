"""The repository functions, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from sqlalchemy import Engine, delete, func, select

from quadra_pipeline.store import (
    DEFAULT_MODEL_NAME,
    METRIC_FIELDS,
    DuplicateError,
    DuplicateMetricsError,
    InvalidDataError,
    ModelAliasEvent,
    ModelVersion,
    StoreError,
    SystemState,
    TrainingMetric,
    TrainingRun,
    UnknownBackupError,
    UnknownRunError,
    UnknownVersionError,
    add_metrics,
    alias_history,
    alias_holder_at,
    attach_metrics_to_version,
    finish_training_run,
    get_backup,
    get_model_version,
    get_training_run,
    latest_system_state,
    list_backups,
    list_model_versions,
    mark_backup,
    metrics_for_run,
    metrics_for_version,
    move_alias,
    production_version,
    promote_version,
    record_backup,
    register_model_version,
    remove_alias,
    save_system_state,
    session_scope,
    start_training_run,
)

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 2, 9, 0, tzinfo=UTC)  # a Monday


def sha(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def metric_row(batch: int, **extra) -> dict:
    row = {
        "batch_number": batch,
        "loss": 1.0 / (batch + 1),
        "reward": 14.0 + batch * 0.01,
        "reward_per_item": (14.0 + batch * 0.01) / 21,
        "variance": 0.01 * (batch % 7),
        "field_mean": -0.5 + batch * 1e-4,
        "learning_rate": 0.001 * 1.1,
        "k_clusters": 3,
        "speedup_factor": 1.1,
        "resonance": 0.25,
        "stability": 0.9,
        "throttle_events": batch % 3,
        "texts": 6,
        "batch_seconds": 2.5,
    }
    row.update(extra)
    return row


def count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


@pytest.fixture
def run_id(engine: Engine) -> int:
    with session_scope(engine) as session:
        return start_training_run(session, field_size=100, seed=0, external_run_id="dagster-run-1").id


# Training runs ---------------------------------------------------------------------------


def test_training_run_round_trip(engine: Engine) -> None:
    started = dt.datetime(2026, 11, 29, 12, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    with session_scope(engine) as session:
        run = start_training_run(
            session,
            field_size=150,
            seed=2**62,
            config={"batches": 20, "rows_per_batch": 10, "lr": 0.001, "noise": True},
            source={"dataset": "wikitext", "config": "wikitext-2-raw-v1", "split": "train", "rows": [0, 200]},
            external_run_id="0b6c3d0e-run",
            started_at=started,
        )
    with session_scope(engine) as session:
        found = get_training_run(session, "0b6c3d0e-run")
        assert found.id == run.id == get_training_run(session, run.id).id
        assert found.status == "running" and found.finished_at is None
        assert found.started_at == started and found.started_at.tzinfo == UTC
        assert found.config["noise"] is True and found.source["rows"] == [0, 200]
        assert found.seed == 2**62
        finish_training_run(session, found, status="failed", error="diverged at batch 7")
    with session_scope(engine) as session:
        found = get_training_run(session, run.id)
        assert found.status == "failed" and found.error == "diverged at batch 7"
        assert found.finished_at.tzinfo == UTC and found.finished_at >= found.started_at
        finish_training_run(session, found, status="failed")  # same status again: no-op
        with pytest.raises(StoreError, match="already finished as 'failed'"):
            finish_training_run(session, found, status="succeeded")


def test_training_run_errors(engine: Engine) -> None:
    with session_scope(engine) as session:
        start_training_run(session, field_size=10, external_run_id="dup")
        start_training_run(session, field_size=10)  # CLI runs: no external id, many allowed
        start_training_run(session, field_size=10)
        with pytest.raises(DuplicateError, match="'dup' already exists"):
            start_training_run(session, field_size=10, external_run_id="dup")
        with pytest.raises(UnknownRunError):
            finish_training_run(session, 999_999)
        with pytest.raises(UnknownRunError):
            get_training_run(session, "no-such-dagster-run")
        with pytest.raises(InvalidDataError, match="status must be one of"):
            finish_training_run(session, "dup", status="running")
        with pytest.raises(InvalidDataError, match="naive datetime"):
            start_training_run(session, field_size=10, started_at=dt.datetime(2026, 1, 1))
    with session_scope(engine) as session:  # the refusals did not undo the good rows
        assert count(session, TrainingRun) == 3


# Metrics ---------------------------------------------------------------------------------


def test_bulk_insert_of_5000_rows_all_there_in_order(engine: Engine, run_id: int) -> None:
    rows = [metric_row(b) for b in range(5000)]
    with session_scope(engine) as session:
        assert add_metrics(session, run_id, reversed(rows)) == 5000  # any order, any iterable
    with session_scope(engine) as session:
        stored = metrics_for_run(session, run_id)
        assert [m.batch_number for m in stored] == list(range(5000))
        sample = stored[1234]
        for field in METRIC_FIELDS:
            assert getattr(sample, field) == pytest.approx(rows[1234][field]), field
        assert sample.training_run_id == run_id and sample.model_version_id is None
        assert sample.timestamp.tzinfo == UTC
        assert metrics_for_run(session, "dagster-run-1")[0].batch_number == 0


def test_add_metrics_is_one_executemany_statement(engine: Engine, run_id: int) -> None:
    from sqlalchemy import event

    inserts: list[tuple[str, bool]] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if statement.lstrip().upper().startswith("INSERT INTO TRAINING_METRICS"):
            inserts.append((statement, executemany))

    event.listen(engine, "before_cursor_execute", record)
    try:
        with session_scope(engine) as session:
            add_metrics(session, run_id, [metric_row(b) for b in range(300)])
    finally:
        event.remove(engine, "before_cursor_execute", record)
    # SQLite: one cursor.executemany(); psycopg2: "insertmanyvalues" pages of multi-row VALUES.
    assert 1 <= len(inserts) <= 3
    if engine.dialect.name == "sqlite":
        assert inserts[0][1] is True


def test_duplicate_batches_raise_and_leave_earlier_data_intact(engine: Engine, run_id: int) -> None:
    with session_scope(engine) as session:
        add_metrics(session, run_id, [metric_row(b) for b in range(100)])

    # Committed earlier: the clash is refused, nothing of the new rows is inserted.
    with session_scope(engine) as session:
        with pytest.raises(DuplicateMetricsError, match=r"already has metrics for batch\(es\) 98, 99"):
            add_metrics(session, run_id, [metric_row(b) for b in range(98, 150)])
        assert count(session, TrainingMetric) == 100

    # Earlier in the same transaction: those rows survive the failed call and commit.
    with session_scope(engine) as session:
        other = start_training_run(session, field_size=100)
        add_metrics(session, other, [metric_row(b) for b in range(10)])
        with pytest.raises(DuplicateMetricsError):
            add_metrics(session, other, [metric_row(b) for b in range(5, 15)])
        add_metrics(session, other, [metric_row(b) for b in range(10, 15)])  # session still usable
    with session_scope(engine) as session:
        assert [m.batch_number for m in metrics_for_run(session, other.id)] == list(range(15))
        assert count(session, TrainingMetric) == 115

    # The same batch twice in one call is caught before touching the database.
    with session_scope(engine) as session:
        with pytest.raises(DuplicateMetricsError, match="batch 3 appears twice"):
            add_metrics(session, other.id, [metric_row(300), metric_row(3 + 0), metric_row(3)])
        assert count(session, TrainingMetric) == 115


def test_the_database_itself_enforces_one_row_per_run_and_batch(engine: Engine, run_id: int) -> None:
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError):
        with session_scope(engine) as session:
            for _ in range(2):
                session.add(TrainingMetric(training_run_id=run_id, **metric_row(1)))
                session.flush()


def test_bad_metric_rows_are_refused_with_a_clear_message(engine: Engine, run_id: int) -> None:
    with session_scope(engine) as session:
        with pytest.raises(InvalidDataError, match="row 1 has no field_mean"):
            add_metrics(session, run_id, [metric_row(0), {"batch_number": 1, "loss": 1, "reward": 1, "variance": 1}])
        with pytest.raises(InvalidDataError, match=r"unknown column\(s\) \['lossy'\]"):
            add_metrics(session, run_id, [metric_row(0, lossy=1.0)])
        with pytest.raises(InvalidDataError, match=r"batch 4\): loss is NaN"):
            add_metrics(session, run_id, [metric_row(4, loss=float("nan"))])
        with pytest.raises(InvalidDataError, match="must be an integer"):
            add_metrics(session, run_id, [metric_row(0, k_clusters=2.5)])
        with pytest.raises(UnknownRunError):
            add_metrics(session, 987_654, [metric_row(0)])
        assert add_metrics(session, run_id, []) == 0
        # Numeric look-alikes (numpy scalars, integral floats, text numbers) are converted.
        assert add_metrics(session, run_id, [metric_row(7, k_clusters=3.0, loss="0.25", texts=True)]) == 1
        assert count(session, TrainingMetric) == 1


def test_deleting_a_run_cascades_to_its_metrics(engine: Engine, run_id: int) -> None:
    # Needs PRAGMA foreign_keys=ON on SQLite.
    with session_scope(engine) as session:
        add_metrics(session, run_id, [metric_row(b) for b in range(5)])
    with session_scope(engine) as session:
        session.execute(delete(TrainingRun).where(TrainingRun.id == run_id))
    with session_scope(engine) as session:
        assert count(session, TrainingMetric) == 0


# Model versions ----------------------------------------------------------------------------


def test_register_version_and_attach_metrics(engine: Engine, run_id: int) -> None:
    with session_scope(engine) as session:
        add_metrics(session, run_id, [metric_row(b) for b in range(20)])
        other = start_training_run(session, field_size=100)
        add_metrics(session, other, [metric_row(b) for b in range(3)])
        version = register_model_version(
            session,
            version="quadra-20261129-120000",
            sha256_hash=sha("weights").upper(),  # stored lowercase
            file_path="/models/model_vquadra-20261129-120000.pth",
            description="first",
            metrics={"final_loss": 0.09, "final_reward": 20.1},
            registry_version=1,
            mlflow_run_id="a" * 32,
            training_run=run_id,
        )
    with session_scope(engine) as session:
        found = get_model_version(session, "quadra-20261129-120000")
        assert found.id == version.id and found.sha256_hash == sha("weights")
        assert found.registered_model_name == DEFAULT_MODEL_NAME and found.registry_version == 1
        assert found.is_production is False and found.aliases == []
        assert found.metrics == {"final_loss": 0.09, "final_reward": 20.1}
        assert found.timestamp.tzinfo == UTC
        attached = metrics_for_version(session, found)
        assert [m.batch_number for m in attached] == list(range(20))
        assert {m.training_run_id for m in attached} == {run_id}
        # Explicit attach: the other run's rows too.
        assert attach_metrics_to_version(session, other.id, found.id) == 3
        assert len(metrics_for_version(session, found.id)) == 23
        with pytest.raises(UnknownVersionError):
            attach_metrics_to_version(session, other.id, "nope")


def test_register_version_errors(engine: Engine) -> None:
    with session_scope(engine) as session:
        register_model_version(session, version="v1", sha256_hash=sha("1"), registry_version=1)
        with pytest.raises(DuplicateError, match="'v1' is already registered"):
            register_model_version(session, version="v1", sha256_hash=sha("1b"))
        with pytest.raises(DuplicateError, match="v1 is already recorded"):
            register_model_version(session, version="v1-again", sha256_hash=sha("1c"), registry_version=1)
        with pytest.raises(InvalidDataError, match="64 hexadecimal"):
            register_model_version(session, version="v2", sha256_hash="abc")
        with pytest.raises(InvalidDataError, match="64 hexadecimal"):
            register_model_version(session, version="v2", sha256_hash="g" * 64)
        with pytest.raises(InvalidDataError, match="longer than 100"):
            register_model_version(session, version="v" * 101, sha256_hash=sha("x"))
        with pytest.raises(UnknownRunError):
            register_model_version(session, version="v3", sha256_hash=sha("3"), training_run=424242)
    with session_scope(engine) as session:
        assert [v.version for v in list_model_versions(session)] == ["v1"]


def _versions(session, *labels: str, model: str = DEFAULT_MODEL_NAME) -> None:
    for i, label in enumerate(labels):
        register_model_version(
            session,
            version=label,
            sha256_hash=sha(label),
            registered_model_name=model,
            timestamp=T0 + dt.timedelta(minutes=i),
        )


def _snapshot(session) -> list[tuple]:
    versions = session.scalars(select(ModelVersion).order_by(ModelVersion.id))
    return [(v.version, v.is_production, tuple(v.aliases)) for v in versions]


def test_promote_version_makes_it_the_only_production_version(engine: Engine) -> None:
    with session_scope(engine) as session:
        _versions(session, "v1", "v2", "v3")
        promote_version(session, "v1", moved_by="alice", reason="first release")
        promote_version(session, "v2", moved_by="bob")
    with session_scope(engine) as session:
        assert _snapshot(session) == [
            ("v1", False, ()),
            ("v2", True, ("champion",)),
            ("v3", False, ()),
        ]
        assert production_version(session).version == "v2"
        events = alias_history(session, DEFAULT_MODEL_NAME, "champion")
        assert [(e.from_version, e.to_version, e.moved_by) for e in events] == [
            (None, "v1", "alice"),
            ("v1", "v2", "bob"),
        ]
        assert events[0].reason == "first release"
        # Promoting the current champion again is not a move: no event.
        promote_version(session, "v2")
        assert len(alias_history(session, DEFAULT_MODEL_NAME)) == 2


def test_promoting_an_unknown_version_raises_and_changes_nothing(engine: Engine) -> None:
    # The original demoted every version before looking the new one up: a typo left the
    # system with no production model at all.
    with session_scope(engine) as session:
        _versions(session, "v1", "v2")
        promote_version(session, "v1")
    with session_scope(engine) as session:
        before = _snapshot(session)
        events_before = count(session, ModelAliasEvent)
        with pytest.raises(UnknownVersionError, match="'v9' is not registered"):
            promote_version(session, "v9")
        with pytest.raises(UnknownVersionError):
            promote_version(session, 123_456)
        # The session is committed after the refusals: nothing may have changed.
    with session_scope(engine) as session:
        assert _snapshot(session) == before == [("v1", True, ("champion",)), ("v2", False, ())]
        assert count(session, ModelAliasEvent) == events_before == 1
        assert production_version(session).version == "v1"


def test_promotion_is_scoped_to_the_registered_model(engine: Engine) -> None:
    with session_scope(engine) as session:
        _versions(session, "a1", "a2", model="model-a")
        _versions(session, "b1", model="model-b")
        promote_version(session, "a1")
        promote_version(session, "b1")
        promote_version(session, "a2")
    with session_scope(engine) as session:
        assert production_version(session, "model-a").version == "a2"
        assert production_version(session, "model-b").version == "b1"
        assert alias_holder_at(session, "model-b", "champion", dt.datetime.now(UTC)) == "b1"


def test_alias_holder_at_answers_who_was_champion_last_tuesday(engine: Engine) -> None:
    monday, wednesday, friday = T0, T0 + dt.timedelta(days=2), T0 + dt.timedelta(days=4)
    tuesday, thursday = T0 + dt.timedelta(days=1), T0 + dt.timedelta(days=3)
    with session_scope(engine) as session:
        _versions(session, "v1", "v2", "v3")
        promote_version(session, "v1", when=monday, alias="production")
        promote_version(session, "v2", when=wednesday, alias="production")
        promote_version(session, "v3", when=friday, alias="production")
        move_alias(session, "v1", "challenger", when=tuesday)
    with session_scope(engine) as session:
        holder = lambda when, alias="production": alias_holder_at(session, DEFAULT_MODEL_NAME, alias, when)  # noqa: E731
        assert holder(monday - dt.timedelta(seconds=1)) is None
        assert holder(monday) == "v1"
        assert holder(tuesday) == "v1"
        assert holder(wednesday) == "v2"  # the move at exactly that instant counts
        assert holder(thursday) == "v2"
        assert holder(friday + dt.timedelta(days=30)) == "v3"
        # Another time zone, same instant.
        assert holder(tuesday.astimezone(dt.timezone(dt.timedelta(hours=-7)))) == "v1"
        assert holder(tuesday, "challenger") == "v1"
        assert holder(tuesday, "champion") is None
        assert alias_holder_at(session, "other-model", "production", friday) is None
        with pytest.raises(InvalidDataError, match="naive"):
            alias_holder_at(session, DEFAULT_MODEL_NAME, "production", dt.datetime(2026, 11, 3))
        # move_alias does not touch the production flag.
        assert production_version(session).version == "v3"
        assert get_model_version(session, "v1").aliases == ["challenger"]
        removed = remove_alias(session, DEFAULT_MODEL_NAME, "production", when=friday + dt.timedelta(days=1))
        assert (removed.from_version, removed.to_version) == ("v3", None)
        assert holder(friday + dt.timedelta(days=2)) is None
        assert holder(thursday) == "v2"
        assert remove_alias(session, DEFAULT_MODEL_NAME, "production") is None


# System state -----------------------------------------------------------------------------


def test_system_state_round_trip_and_latest(engine: Engine, run_id: int) -> None:
    with session_scope(engine) as session:
        assert latest_system_state(session) is None
        save_system_state(session, field_size=100, timestamp=T0)
        save_system_state(
            session,
            field_size=100,
            iteration_count=20,
            is_running=True,
            is_initialized=True,
            current_version="v1",
            loss_history=[0.42, 0.2, 0.09],
            reward_history=(14.0, 17.5, 20.0),
            variance_history=[0.01, 0.02, 0.03],
            field_mean_history=[-0.1, 0.0, 0.1],
            training_run=run_id,
            timestamp=T0 + dt.timedelta(hours=1),
        )
        save_system_state(session, field_size=100, iteration_count=5, timestamp=T0 + dt.timedelta(minutes=30))
        with pytest.raises(InvalidDataError, match=r"loss_history\[1\] is NaN"):
            save_system_state(session, field_size=100, loss_history=[1.0, float("nan")])
    with session_scope(engine) as session:
        latest = latest_system_state(session)
        assert latest.iteration_count == 20 and latest.is_running is True and latest.is_initialized is True
        assert latest.loss_history == [0.42, 0.2, 0.09] and latest.reward_history == [14.0, 17.5, 20.0]
        assert latest.current_version == "v1" and latest.training_run_id == run_id
        assert latest.timestamp == T0 + dt.timedelta(hours=1) and latest.timestamp.tzinfo == UTC
        assert latest_system_state(session, training_run=run_id).id == latest.id
        assert count(session, SystemState) == 3


# Backups catalogue ----------------------------------------------------------------------------


def test_backups_catalogue_round_trip(engine: Engine) -> None:
    with session_scope(engine) as session:
        for i in range(3):
            record_backup(
                session,
                backup_id=f"bk-{i}",
                manifest_sha256=sha(f"manifest-{i}"),
                location=f"/backups/bk-{i}",
                total_bytes=5 * 2**31 + i,  # needs BIGINT
                stored_bytes=1000 * i,
                file_count=10 + i,
                partition_key="2026-11-29" if i < 2 else "2026-11-30",
                signed=i == 2,
                created_at=T0 + dt.timedelta(hours=i),
            )
    with session_scope(engine) as session:
        newest = list_backups(session)
        assert [b.backup_id for b in newest] == ["bk-2", "bk-1", "bk-0"]
        assert [b.backup_id for b in list_backups(session, newest_first=False, limit=2)] == ["bk-0", "bk-1"]
        assert [b.backup_id for b in list_backups(session, partition_key="2026-11-29")] == ["bk-1", "bk-0"]
        assert [b.backup_id for b in list_backups(session, since=T0 + dt.timedelta(hours=1))] == ["bk-2", "bk-1"]
        first = get_backup(session, "bk-0")
        assert first.total_bytes == 5 * 2**31 and first.status == "created" and first.signed is False
        assert first.created_at == T0 and first.verified_at is None and first.error is None
        assert get_backup(session, "bk-2").signed is True

        verified_at = T0 + dt.timedelta(days=1)
        mark_backup(session, "bk-0", "verified", when=verified_at)
        mark_backup(session, "bk-1", "failed", error="checksum mismatch: models/model_v1.pth")
        mark_backup(session, "bk-2", "deleted")
    with session_scope(engine) as session:
        assert get_backup(session, "bk-0").verified_at == verified_at
        assert get_backup(session, "bk-1").error == "checksum mismatch: models/model_v1.pth"
        assert [b.backup_id for b in list_backups(session, status="verified")] == ["bk-0"]
        assert [b.backup_id for b in list_backups(session, status=["failed", "deleted"])] == ["bk-2", "bk-1"]
        with pytest.raises(StoreError, match="is deleted"):
            mark_backup(session, "bk-2", "verified")
        with pytest.raises(InvalidDataError, match="backup status must be one of"):
            mark_backup(session, "bk-0", "lost")
        with pytest.raises(UnknownBackupError):
            mark_backup(session, "bk-9", "verified")
        with pytest.raises(DuplicateError, match="'bk-0' is already in the catalogue"):
            record_backup(session, backup_id="bk-0", manifest_sha256=sha("m"), location="/x")
        with pytest.raises(InvalidDataError, match="must not be negative"):
            record_backup(session, backup_id="bk-x", manifest_sha256=sha("m"), location="/x", total_bytes=-1)
        assert len(list_backups(session)) == 3
