"""The backup asset: hourly partitions, its schedule, freshness policy and both checks."""

import dagster as dg
import pytest
import sqlalchemy as sa

from quadra_pipeline.definitions import defs as load_defs
from quadra_pipeline_tests.defs.conftest import run_config


def test_schedule_is_hourly_from_the_partitioned_job_and_running_by_default():
    defs = load_defs()
    schedule = defs.resolve_schedule_def("hourly_backup_schedule")
    assert schedule.cron_schedule == "0 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == "backup_job"
    node = defs.resolve_asset_graph().get(dg.AssetKey("backup"))
    assert isinstance(node.partitions_def, dg.HourlyPartitionsDefinition)
    policy = node.freshness_policy
    assert policy is not None and policy.fail_window.to_timedelta().total_seconds() == 3600 + 600
    assert {k.to_user_string() for k in node.parent_keys} >= {"quadra_model", "training_metrics", "registered_model", "champion_model"}


@pytest.mark.slow
def test_backup_partition_materialises_with_integrity_and_restore_drill(instance, quadra_env):
    defs = load_defs()
    assert defs.resolve_job_def("training_job").execute_in_process(run_config=run_config(batches=3), instance=instance).success
    job = defs.resolve_job_def("backup_job")
    result = job.execute_in_process(instance=instance, partition_key="2026-11-29-10:00")
    assert result.success
    checks = {
        e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data
        for e in result.all_events if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
    }
    assert checks["integrity"].passed and checks["restore_drill"].passed
    drill = checks["restore_drill"].metadata["checked"].value
    assert drill["champion"]["version"] == 1
    assert drill["project-db/quadra.db"]["rows"] > 0
    event = instance.get_latest_materialization_event(dg.AssetKey("backup"))
    backup_id = event.asset_materialization.metadata["backup_id"].value
    assert event.asset_materialization.partition == "2026-11-29-10:00"

    # A second, unchanged hour stores almost nothing new.
    second = job.execute_in_process(instance=instance, partition_key="2026-11-29-11:00")
    assert second.success
    latest = instance.get_latest_materialization_event(dg.AssetKey("backup")).asset_materialization.metadata
    assert latest["stored_bytes"].value < 0.1 * latest["total_bytes"].value

    from quadra_pipeline.settings import load_settings

    engine = sa.create_engine(load_settings().database_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select backup_id, partition_key, status from backups order by id")).all()
    engine.dispose()
    assert rows[0][0] == backup_id and rows[0][1] == "2026-11-29-10:00" and rows[0][2] == "verified"
    assert len(rows) == 2


@pytest.mark.slow
def test_the_restore_drill_verifies_the_champions_signature(instance, quadra_env):
    """A champion whose checkpoint was altered in the artifact store (and so in the backup)
    fails the drill, which names the version and the file."""
    from quadra_pipeline_tests.registry.test_signing import flip_a_byte, stored_file
    from quadra_pipeline.registry import ModelRegistry

    defs = load_defs()
    assert defs.resolve_job_def("training_job").execute_in_process(run_config=run_config(batches=3), instance=instance).success
    flip_a_byte(stored_file(ModelRegistry.from_settings(), 1, "extra_files/checkpoint.pt"))
    result = defs.resolve_job_def("backup_job").execute_in_process(instance=instance, partition_key="2026-11-29-10:00",
                                                                   raise_on_error=False)
    [drill] = [e.asset_check_evaluation_data for e in result.all_events
               if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION and e.asset_check_evaluation_data.check_name == "restore_drill"]
    assert not drill.passed
    problems = drill.metadata["problems"].value
    assert any("champion" in p and "version 1" in p for p in problems), problems
