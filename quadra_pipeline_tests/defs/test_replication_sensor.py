"""The replication's health in the UI: replication_lag_sensor evaluates the `replication_lag`
check of `sqlite_replica` (Litestream, the embedded default) and of `wal_archive` (PostgreSQL's
continuous archive), each where it is configured, without a run."""

import logging

import dagster as dg

from quadra_pipeline.defs.backup.wal import SQLITE_REPLICA, replication_lag_sensor
from quadra_pipeline.settings import load_settings
from quadra_pipeline.store import ensure_schema, make_engine


def test_nothing_configured_is_said_and_nothing_evaluated(instance):
    result = replication_lag_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.SkipReason) and "no replication is configured here" in result.skip_message


def test_a_replica_nobody_feeds_fails_the_check_naming_each_database(instance, quadra_env, monkeypatch):
    """QUADRA_REPLICA set, Litestream not running: every database is 'not replicated', the check
    fails (red in the UI) with one line per database."""
    monkeypatch.setenv("QUADRA_REPLICA", str(quadra_env.parent / "replica"))
    ensure_schema(make_engine(load_settings().database_url))  # the project database exists
    result = replication_lag_sensor(dg.build_sensor_context(instance=instance))
    [evaluation] = result.asset_events
    assert evaluation.asset_key == SQLITE_REPLICA and evaluation.check_name == "replication_lag"
    assert evaluation.passed is False
    assert "project: not replicated (limit 60 s)" in evaluation.description


def test_wal_archive_not_configured_materialises_nothing_and_says_so(instance, quadra_env):
    """The embedded default has no continuous archive: `--select '*'` still succeeds, and the
    step's log says why wal_archive has no materialisation (its check is skipped with it)."""
    from quadra_pipeline.defs.backup.wal import WAL_ARCHIVE, replication_lag_check, wal_archive

    result = dg.materialize([wal_archive, replication_lag_check], instance=instance)
    assert result.success
    assert instance.get_latest_materialization_event(WAL_ARCHIVE) is None
    [said] = [r for r in instance.all_logs(result.run_id) if "continuous archiving" in r.user_message]
    assert "not configured" in said.user_message and said.level == logging.WARNING


def test_wal_archive_half_configured_fails_naming_what_is_missing(instance, quadra_env, monkeypatch):
    from quadra_pipeline.defs.backup.wal import WAL_ARCHIVE, wal_archive

    monkeypatch.setenv("QUADRA_WAL_ARCHIVE", str(quadra_env.parent / "wal"))
    result = dg.materialize([wal_archive], instance=instance, raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "half configured" in failure.step_failure_data.error.message
    assert "QUADRA_WAL_URL_FILE" in failure.step_failure_data.error.message
    assert instance.get_latest_materialization_event(WAL_ARCHIVE) is None
