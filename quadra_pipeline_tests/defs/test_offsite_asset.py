"""offsite_backup: backup_job pushes each good backup off the host (a real SeaweedFS bucket) and
reads the copy back with the public keys; a copy that cannot be reached fails the run, never the
backup; a damaged copy fails the check; nothing configured materialises nothing and says so."""

import logging
import uuid

import dagster as dg
import pytest

from quadra_pipeline.backup import offsite
from quadra_pipeline.defs.backup.offsite import OFFSITE_BACKUP
from quadra_pipeline.definitions import defs as load_defs
from quadra_pipeline.objectstore import open_object_store
from quadra_pipeline_tests.defs.conftest import run_config
from quadra_pipeline_tests.defs.test_backup_asset import check_results, hour_that_ended

BACKUP = dg.AssetKey("backup")


@pytest.fixture
def trained(instance, quadra_env):
    defs = load_defs()
    assert defs.resolve_job_def("training_job").execute_in_process(run_config=run_config(batches=3), instance=instance).success
    return defs


def backup_run(defs, instance, hour):
    return defs.resolve_job_def("backup_job").execute_in_process(instance=instance, partition_key=hour, raise_on_error=False)


@pytest.mark.slow
def test_each_good_backup_is_pushed_and_read_back_with_the_public_keys(trained, instance, s3_env, monkeypatch):
    bucket = s3_env.make_bucket(f"off-{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("QUADRA_BACKUP_OFFSITE", f"s3://{bucket}/backups")
    first = backup_run(trained, instance, hour_that_ended())
    assert first.success
    backup_id = instance.get_latest_materialization_event(BACKUP).asset_materialization.metadata["backup_id"].value
    pushed = instance.get_latest_materialization_event(OFFSITE_BACKUP).asset_materialization
    assert pushed.partition == hour_that_ended()
    assert pushed.metadata["head"].value == backup_id and pushed.metadata["bytes_written"].value > 0
    checked = check_results(first)["offsite_integrity"]
    assert checked.passed and checked.metadata["backups_checked"].value >= 1 and checked.metadata["chunks_read"].value > 0
    copy = open_object_store(f"s3://{bucket}/backups")
    assert offsite.list_backups(copy) == [backup_id]

    # Again, nothing changed (the hour's partition re-run): the push writes the new manifest, no chunk.
    second = backup_run(trained, instance, hour_that_ended())
    assert second.success
    again = instance.get_latest_materialization_event(OFFSITE_BACKUP).asset_materialization
    assert again.metadata["chunks_written"].value == 0
    assert len(offsite.list_backups(copy)) == 2


@pytest.mark.slow
def test_a_copy_that_cannot_be_reached_fails_the_run_not_the_backup(trained, instance, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "quadra")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-used")
    monkeypatch.setenv("QUADRA_BACKUP_OFFSITE", "s3://quadra-offsite/backups")
    result = backup_run(trained, instance, hour_that_ended())
    assert not result.success
    assert instance.get_latest_materialization_event(BACKUP) is not None  # the local backup is good and counted
    assert check_results(result)["integrity"].passed and check_results(result)["restore_drill"].passed
    assert instance.get_latest_materialization_event(OFFSITE_BACKUP) is None
    [failure] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert failure.step_key == "offsite_backup"
    message = failure.step_failure_data.error.message
    assert "the off-site push failed" in message and "not-used" not in message


@pytest.mark.slow
def test_a_damaged_copy_fails_the_offsite_check(trained, instance, monkeypatch, tmp_path):
    copy_dir = tmp_path / "offsite"
    monkeypatch.setenv("QUADRA_BACKUP_OFFSITE", str(copy_dir))
    assert backup_run(trained, instance, hour_that_ended()).success
    # A manifest of the copy altered (same size: the push does not rewrite it): its signature fails.
    [manifest] = [p for p in (copy_dir / "manifests").rglob("*") if p.is_file() and p.suffix == ".json"][:1]
    data = bytearray(manifest.read_bytes())
    index = data.index(b'"created_at"') + len(b'"created_at": "') + 3
    data[index] = ord("7") if data[index] != ord("7") else ord("6")
    manifest.write_bytes(bytes(data))
    result = backup_run(trained, instance, hour_that_ended())
    checked = check_results(result)["offsite_integrity"]
    assert not checked.passed
    assert any(manifest.name.split(".")[0] in p for p in checked.metadata["problems"].value), checked.metadata["problems"]


def test_nothing_configured_pushes_nothing_and_says_so(instance, quadra_env):
    from quadra_pipeline.defs.backup.offsite import offsite_backup
    from quadra_pipeline.defs.resources import resources_for
    from quadra_pipeline.settings import load_settings

    result = dg.materialize([offsite_backup], instance=instance, partition_key=hour_that_ended(),
                            resources=resources_for(load_settings()))
    assert result.success
    assert instance.get_latest_materialization_event(OFFSITE_BACKUP) is None
    [said] = [r for r in instance.all_logs(result.run_id) if "off-site" in r.user_message]
    assert "no off-site copy is configured" in said.user_message and said.level == logging.WARNING
