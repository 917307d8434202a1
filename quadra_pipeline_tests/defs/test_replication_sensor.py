"""The replication's health in the UI: replication_lag_sensor evaluates the `replication_lag`
check of `sqlite_replica` (Litestream, the embedded default) and of `wal_archive` (PostgreSQL's
continuous archive), each where it is configured, without a run."""

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
