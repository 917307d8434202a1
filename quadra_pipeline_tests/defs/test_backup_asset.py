"""The backup asset: hourly partitions, its schedule, freshness policy and both checks; only a
good backup is materialised; a backfill of past hours is refused."""

import datetime as dt

import dagster as dg
import pytest
import sqlalchemy as sa

from quadra_pipeline.definitions import defs as load_defs
from quadra_pipeline_tests.defs.conftest import run_config


def hour_that_ended(now: dt.datetime | None = None) -> str:
    """The partition the hourly schedule runs at the top of this hour: the hour that just ended."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return (now - dt.timedelta(hours=1)).strftime("%Y-%m-%d-%H:00")


def check_results(result) -> dict:
    return {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data
            for e in result.all_events if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION}


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
    assets_def = defs.resolve_assets_def(dg.AssetKey("backup"))
    assert all(spec.blocking for spec in assets_def.check_specs)  # integrity and restore_drill block


def test_a_backfill_of_past_hours_is_refused_and_the_schedules_own_runs_pass():
    from quadra_pipeline.defs.backup.assets import backfill_problem

    schedule = load_defs().resolve_schedule_def("hourly_backup_schedule")
    for now in (dt.datetime(2026, 12, 7, 11, 0, 3, tzinfo=dt.timezone.utc), dt.datetime(2026, 12, 7, 11, 58, tzinfo=dt.timezone.utc)):
        tick = dt.datetime(2026, 12, 7, 11, tzinfo=dt.timezone.utc)
        with dg.build_schedule_context(scheduled_execution_time=tick) as context:
            [request] = schedule.evaluate_tick(context).run_requests
        assert request.partition_key == "2026-12-07-10:00"
        assert backfill_problem(request.partition_key, now) is None  # started on time, or queued for most of an hour
    assert backfill_problem("2026-12-07-11:00", dt.datetime(2026, 12, 7, 11, 30, tzinfo=dt.timezone.utc)) is None  # the hour it is
    late = backfill_problem("2026-12-07-09:00", dt.datetime(2026, 12, 7, 11, 0, 5, tzinfo=dt.timezone.utc))
    assert late == (
        "refusing to back up partition 2026-12-07-09:00 at 2026-12-07 11:00 UTC: a backup can only copy the system as it is "
        "now, so a backup labelled with a past hour would be a copy of the present under a false date; a missed hour stays "
        "missing (its RPO was not met). Back up now with the partition of the hour that just ended (2026-12-07-10:00) "
        "or quadra backup create."
    )
    assert "in the future" in backfill_problem("2026-12-07-13:00", dt.datetime(2026, 12, 7, 11, 30, tzinfo=dt.timezone.utc))


@pytest.mark.slow
def test_a_backfilled_hour_fails_before_anything_is_copied(instance, quadra_env):
    from quadra_pipeline.settings import load_settings

    result = load_defs().resolve_job_def("backup_job").execute_in_process(
        instance=instance, partition_key="2026-11-29-10:00", raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "refusing to back up partition 2026-11-29-10:00" in failure.step_failure_data.error.message
    assert instance.get_latest_materialization_event(dg.AssetKey("backup")) is None
    assert not (load_settings().backup_dir / "manifests").exists()


@pytest.mark.slow
def test_backup_partition_materialises_with_integrity_and_restore_drill(instance, quadra_env):
    defs = load_defs()
    assert defs.resolve_job_def("training_job").execute_in_process(run_config=run_config(batches=3), instance=instance).success
    job = defs.resolve_job_def("backup_job")
    hour = hour_that_ended()
    result = job.execute_in_process(instance=instance, partition_key=hour)
    assert result.success
    checks = check_results(result)
    assert checks["integrity"].passed and checks["restore_drill"].passed
    drill = checks["restore_drill"].metadata["checked"].value
    assert drill["champion"]["version"] == 1
    assert drill["project-db/quadra.db"]["rows"] > 0
    assert checks["restore_drill"].metadata["scratch_bytes"].value > 0
    integrity = checks["integrity"].metadata
    assert integrity["rotation_period_runs"].value == 24 and integrity["chunks_stored"].value > 0
    assert integrity["rotation_chunks_read"].value < integrity["chunks_stored"].value  # one share of the rotation
    event = instance.get_latest_materialization_event(dg.AssetKey("backup"))
    backup_id = event.asset_materialization.metadata["backup_id"].value
    assert event.asset_materialization.partition == hour
    assert event.asset_materialization.metadata["good"].value is True

    # A second, unchanged hour stores almost nothing new (a retry of the same hour: allowed).
    second = job.execute_in_process(instance=instance, partition_key=hour)
    assert second.success
    latest = instance.get_latest_materialization_event(dg.AssetKey("backup")).asset_materialization.metadata
    assert latest["stored_bytes"].value <= 64 << 10

    from quadra_pipeline.settings import load_settings

    engine = sa.create_engine(load_settings().database_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select backup_id, partition_key, status from backups order by id")).all()
    engine.dispose()
    assert rows[0][0] == backup_id and rows[0][1] == hour and rows[0][2] == "verified"  # verified = good
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
    result = defs.resolve_job_def("backup_job").execute_in_process(instance=instance, partition_key=hour_that_ended(),
                                                                   raise_on_error=False)
    drill = check_results(result)["restore_drill"]
    assert not drill.passed and drill.blocking
    problems = drill.metadata["problems"].value
    assert any("champion" in p and "version 1" in p for p in problems), problems
    # A bad backup: the run fails, and it is not materialised, so the freshness policy (which
    # looks at the newest materialisation) counts good backups only; the catalogue says "failed".
    assert not result.success
    assert instance.get_latest_materialization_event(dg.AssetKey("backup")) is None
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "is bad" in failure.step_failure_data.error.message and "restore drill" in failure.step_failure_data.error.message
    from quadra_pipeline.settings import load_settings

    engine = sa.create_engine(load_settings().database_url)
    with engine.connect() as conn:
        [(status, error)] = conn.execute(sa.text("select status, error from backups")).all()
    engine.dispose()
    assert status == "failed" and error.startswith("restore drill:") and "version 1" in error


@pytest.mark.slow
def test_damage_only_an_older_backup_holds_fails_the_hour_until_it_is_gone(instance, quadra_env, monkeypatch):
    """The rotation finds a flipped byte in a chunk only an older backup holds: the integrity
    check fails, naming that backup, so the hour is not good (not materialised: the repository
    is not all good), and it stays red every hour (the damaged chunk is read again) until the
    damaged backup is gone; then the hour is good again."""
    from quadra_pipeline.backup.service import BackupService
    from quadra_pipeline.settings import load_settings

    monkeypatch.setenv("QUADRA_BACKUP_VERIFY_RUNS", "1")  # every run re-reads everything: the damage is found now
    defs = load_defs()
    assert defs.resolve_job_def("training_job").execute_in_process(run_config=run_config(batches=3), instance=instance).success
    extra = quadra_env / "checkpoints" / "extra.bin"
    extra.parent.mkdir(parents=True, exist_ok=True)
    extra.write_bytes(__import__("os").urandom(300_000))
    service = BackupService(load_settings())
    old = service.create().manifest.backup_id
    extra.unlink()
    [entry] = [e for e in service.repository.read_manifest(old).files if e.path == "checkpoints/extra.bin"]
    victim = entry.chunks[0][0]  # random bytes: held by this file of the old backup alone
    path = service.repository.chunks.path(victim)
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[7] ^= 1
    path.write_bytes(bytes(data))
    job = defs.resolve_job_def("backup_job")
    result = job.execute_in_process(instance=instance, partition_key=hour_that_ended(), raise_on_error=False)
    checks = check_results(result)
    assert not checks["integrity"].passed and checks["restore_drill"].passed
    assert any(victim in p and old in p for p in checks["integrity"].metadata["problems"].value)
    assert checks["integrity"].metadata["damaged_backups"].value == [old]
    assert not result.success and instance.get_latest_materialization_event(dg.AssetKey("backup")) is None
    engine = sa.create_engine(load_settings().database_url)
    with engine.connect() as conn:
        statuses = dict(conn.execute(sa.text("select backup_id, status from backups")).all())
    engine.dispose()
    assert statuses[old] == "failed" and set(statuses.values()) == {"failed"}

    monkeypatch.setenv("QUADRA_BACKUP_VERIFY_RUNS", "24")  # another share next hour: the damage is read again anyway
    service.repository.delete(old)
    service.repository.gc()
    fixed = job.execute_in_process(instance=instance, partition_key=hour_that_ended(), raise_on_error=False)
    assert fixed.success and check_results(fixed)["integrity"].passed
    event = instance.get_latest_materialization_event(dg.AssetKey("backup"))
    assert event is not None and event.asset_materialization.metadata["good"].value is True
