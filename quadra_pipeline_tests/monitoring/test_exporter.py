"""`quadra exporter`: the metrics' values from a real Dagster instance, SQL store, backup repository
and MLflow registry (the pipeline run for real: training_job, backup_job, a failing job twice);
what a good backup is; a source that is down or hangs never fails a scrape; the store is read
read-only; the command line. The scrape is parsed from Prometheus's text format, as Prometheus
reads it."""

import datetime as dt
import math
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from quadra_pipeline.monitoring import known, server
from quadra_pipeline.monitoring.exporter import QuadraCollector, registry_for
from quadra_pipeline.monitoring.sources import (
    BackupsSource,
    DagsterSource,
    MlflowSource,
    SourceResult,
    StoreSource,
    failure_streak,
    read_only_engine,
)
from quadra_pipeline.settings import load_settings

Samples = dict[tuple[str, frozenset], float]


def scrape(collector: QuadraCollector) -> Samples:
    text = generate_latest(registry_for(collector)).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def labels_of(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


def collector_for(instance: dg.DagsterInstance, deadline: float = 30.0) -> QuadraCollector:
    settings = load_settings()
    return QuadraCollector([DagsterSource(instance), StoreSource(settings), BackupsSource(settings),
                            MlflowSource(settings)], deadline_seconds=deadline)


def test_the_known_jobs_assets_and_checks_are_the_code_locations():
    """Every name the exporter asks about exists (a rename fails here, not as a metric going
    quiet); what the exporter does not name yet is listed by the second assertion's message."""
    from quadra_pipeline.definitions import defs as load_defs

    defs = load_defs()
    graph = defs.resolve_asset_graph()
    assets = {k.to_user_string() for k in graph.get_all_asset_keys()}
    checks = {(c.asset_key.to_user_string(), c.name) for k in graph.get_all_asset_keys() for c in graph.get(k).check_keys}
    jobs = {j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__")}
    assert set(known.ASSETS) <= assets and set(known.CHECKS) <= checks and set(known.JOBS) <= jobs
    assert {"backup", "quadra_model", "champion_model"} <= set(known.ASSETS)
    assert {("backup", "integrity"), ("backup", "restore_drill")} <= set(known.CHECKS)


# The pipeline for real -------------------------------------------------------------------------


@pytest.mark.slow
def test_metrics_of_a_real_pipeline_run(clean_env):
    """training_job (3 batches), the backup of the hour that just ended, promote_model_job failing
    twice (no version 99): every metric holds the value the instance, the store, the repository
    and the registry hold; then the same over HTTP."""
    import sqlalchemy as sa

    from quadra_pipeline.backup.names import id_time
    from quadra_pipeline.definitions import defs as load_defs
    from quadra_pipeline.registry import ModelRegistry
    from quadra_pipeline_tests.defs.conftest import run_config

    defs = load_defs()
    hour = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)).strftime("%Y-%m-%d-%H:00")  # the schedule's
    with dg.instance_for_test() as instance:
        trained = defs.resolve_job_def("training_job").execute_in_process(run_config=run_config(batches=3), instance=instance)
        assert trained.success
        backed_up = defs.resolve_job_def("backup_job").execute_in_process(instance=instance, partition_key=hour)
        assert backed_up.success
        promote = defs.resolve_job_def("promote_model_job")
        failed = [promote.execute_in_process(run_config={"ops": {"promote_version": {"config": {"version": 99}}}},
                                             instance=instance, raise_on_error=False) for _ in range(2)]
        assert not any(r.success for r in failed)

        collector = collector_for(instance)
        samples = scrape(collector)

        # Every source answered.
        for source in ("dagster", "store", "backups", "mlflow"):
            assert value(samples, "quadra_source_up", source=source) == 1.0, source

        # Jobs: the last success, the failures in a row and the newest failure's run.
        record = instance.get_run_record_by_id(trained.run_id)
        assert value(samples, "quadra_job_last_success_timestamp_seconds", dagster_job="training_job") == pytest.approx(record.end_time)
        assert value(samples, "quadra_job_consecutive_failures", dagster_job="promote_model_job") == 2
        assert value(samples, "quadra_job_consecutive_failures", dagster_job="training_job") == 0
        assert value(samples, "quadra_job_consecutive_failures", dagster_job="backup_job") == 0
        last_failure = instance.get_run_record_by_id(failed[1].run_id)
        assert value(samples, "quadra_job_last_failure_timestamp_seconds", dagster_job="promote_model_job") == pytest.approx(last_failure.end_time)
        assert value(samples, "quadra_job_last_failure_info", dagster_job="promote_model_job", run_id=failed[1].run_id,
                     partition="") == 1.0
        assert ("quadra_job_last_failure_timestamp_seconds", frozenset({("dagster_job", "training_job")})) not in samples
        assert value(samples, "quadra_runs", status="queued") == 0 and value(samples, "quadra_runs", status="started") == 0

        # Checks: the backup's integrity and restore drill, the model's weights.
        for check in ("integrity", "restore_drill"):
            assert value(samples, "quadra_asset_check_passed", asset="backup", check=check) == 1.0
            assert value(samples, "quadra_asset_check_info", asset="backup", check=check, run_id=backed_up.run_id,
                         partition=hour) == 1.0
        assert value(samples, "quadra_asset_check_passed", asset="quadra_model", check="weights_finite") == 1.0

        # Backups: bytes added, the newest good backup (its id's time), the repository, the volume.
        event = instance.get_latest_materialization_event(dg.AssetKey("backup"))
        metadata = event.asset_materialization.metadata
        backup_id = metadata["backup_id"].value
        assert value(samples, "quadra_backup_last_stored_bytes") == metadata["stored_bytes"].value > 0
        assert value(samples, "quadra_backup_last_total_bytes") == metadata["total_bytes"].value
        taken = id_time(backup_id).timestamp()
        assert value(samples, "quadra_backup_last_good_timestamp_seconds") == taken
        assert value(samples, "quadra_backup_newest_timestamp_seconds") == taken
        assert abs(taken - event.timestamp) < 120
        assert value(samples, "quadra_backup_last_good_info", backup_id=backup_id, partition=hour,
                     run_id=backed_up.run_id) == 1.0
        assert value(samples, "quadra_backup_good_backups") == 1 and value(samples, "quadra_backup_repository_backups") == 1
        path = str(load_settings().backup_dir)
        size = value(samples, "quadra_backup_volume_size_bytes", path=path)
        assert 0 < value(samples, "quadra_backup_volume_available_bytes", path=path) <= value(
            samples, "quadra_backup_volume_free_bytes", path=path) <= size

        # The newest training run, as the store has it.
        engine = sa.create_engine(load_settings().database_url)
        with engine.connect() as connection:
            run = connection.execute(sa.text("select id, external_run_id, started_at, finished_at from training_runs "
                                             "order by id desc limit 1")).one()
            last = connection.execute(sa.text("select loss, reward from training_metrics where training_run_id = :r "
                                              "order by batch_number desc limit 1"), {"r": run.id}).one()
        engine.dispose()
        assert run.external_run_id == trained.run_id
        assert value(samples, "quadra_training_last_run_final_loss") == last.loss
        assert value(samples, "quadra_training_last_run_final_reward") == last.reward
        assert value(samples, "quadra_training_last_run_batches") == 3
        assert value(samples, "quadra_training_last_run_nonfinite_loss") == 0
        duration = (dt.datetime.fromisoformat(str(run.finished_at)) - dt.datetime.fromisoformat(str(run.started_at))).total_seconds()
        assert value(samples, "quadra_training_last_run_duration_seconds") == pytest.approx(duration, abs=1e-3)
        assert value(samples, "quadra_training_last_run_info", training_run_id=str(run.id), dagster_run_id=trained.run_id,
                     status="succeeded") == 1.0

        # The champion, as the registry has it, and the gate as Dagster recorded it.
        registry = ModelRegistry.from_settings()
        gate_score = float(registry.get_version(1).tags["metric.gate_score"])
        assert value(samples, "quadra_champion_version") == 1 and value(samples, "quadra_challenger_version") == 1
        assert value(samples, "quadra_champion_gate_score") == pytest.approx(gate_score)
        registered = instance.get_latest_materialization_event(dg.AssetKey("registered_model")).asset_materialization.metadata
        assert value(samples, "quadra_registered_gate_score") == pytest.approx(registered["gate_score"].value)
        assert value(samples, "quadra_registered_gate_passed") == 1 and value(samples, "quadra_registered_version") == 1
        assert value(samples, "quadra_asset_last_materialization_timestamp_seconds", asset="champion_model") > 0

        # The same over HTTP.
        with serving(registry_for(collector)) as base:
            body = urllib.request.urlopen(f"{base}/metrics", timeout=30).read().decode()
            assert "quadra_champion_version 1.0" in body
            assert 'quadra_job_consecutive_failures{dagster_job="promote_model_job"} 2.0' in body
            assert urllib.request.urlopen(f"{base}/health", timeout=5).read() == b"OK\n"
        collector.close()


class serving:
    """The exporter's HTTP server on a free loopback port, in a thread."""

    def __init__(self, registry) -> None:
        self.server = server.make("127.0.0.1", 0, registry, "test")

    def __enter__(self) -> str:
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_port}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


# What a good backup is ---------------------------------------------------------------------------


class FakeBackup(dg.Config):
    backup_id: str
    integrity: bool = True
    drill: bool | None = True  # None: the drill never ran
    materialize: bool = True  # False: as the asset does with a bad backup (checks, then failure)


BACKUP = dg.AssetKey("backup")


@dg.asset(key=BACKUP, partitions_def=dg.HourlyPartitionsDefinition(start_date="2026-11-29-00:00"),
          check_specs=[dg.AssetCheckSpec("integrity", asset=BACKUP), dg.AssetCheckSpec("restore_drill", asset=BACKUP)])
def fake_backup(config: FakeBackup):
    """The real asset's key, metadata and checks, with the outcomes a test asks for."""
    if config.materialize:
        yield dg.MaterializeResult(metadata={"backup_id": config.backup_id, "stored_bytes": dg.MetadataValue.int(1000),
                                             "total_bytes": 5000})
    yield dg.AssetCheckResult(check_name="integrity", passed=config.integrity)
    if config.drill is not None:
        yield dg.AssetCheckResult(check_name="restore_drill", passed=config.drill)
    if not config.materialize:
        raise dg.Failure(f"backup {config.backup_id} is bad; it is not materialised")


def test_a_good_backup_passed_both_checks_and_is_still_in_the_repository(clean_env, tmp_path):
    """Five hourly backups in a real repository, recorded in a real instance: 08:00 good; 09:00
    good but its manifest since lost; 10:00 materialised although its drill failed (before only
    good backups were); 11:00 never ran its drill; 12:00 bad, not materialised (as the asset does
    now), its failed checks recorded. The newest good backup is 08:00's; the newest backup in the
    repository is 12:00's; the checks' newest evaluations are 12:00's."""
    from quadra_pipeline.backup import BackupRepository, SourceFile

    settings = load_settings()
    repository = BackupRepository(settings.backup_dir)
    (tmp_path / "data.bin").write_bytes(b"x" * 1000)
    ids = {}
    for hour in (8, 9, 10, 11, 12):
        created = dt.datetime(2026, 12, 1, hour, 0, 5, tzinfo=dt.timezone.utc)
        ids[hour] = repository.create([SourceFile("data.bin", tmp_path / "data.bin")], sources={}, created_at=created).manifest.backup_id
    repository.manifest_path(ids[9]).unlink()
    outcomes = {8: (True, True, True), 9: (True, True, True), 10: (True, False, True), 11: (True, None, True),
                12: (False, True, False)}
    with dg.instance_for_test() as instance:
        runs = {}
        for hour, (integrity, drill, materialize) in outcomes.items():
            config = {"backup_id": ids[hour], "integrity": integrity, "drill": drill, "materialize": materialize}
            result = dg.materialize([fake_backup], instance=instance, partition_key=f"2026-12-01-{hour:02d}:00",
                                    run_config={"ops": {"backup": {"config": config}}}, raise_on_error=False)
            runs[hour] = result.run_id
        samples = scrape(QuadraCollector([DagsterSource(instance), BackupsSource(settings)]))
    assert value(samples, "quadra_backup_last_good_timestamp_seconds") == dt.datetime(2026, 12, 1, 8, 0, 5, tzinfo=dt.timezone.utc).timestamp()
    assert value(samples, "quadra_backup_last_good_info", backup_id=ids[8], partition="2026-12-01-08:00", run_id=runs[8]) == 1
    assert value(samples, "quadra_backup_good_backups") == 1
    assert value(samples, "quadra_backup_newest_timestamp_seconds") == dt.datetime(2026, 12, 1, 12, 0, 5, tzinfo=dt.timezone.utc).timestamp()
    assert value(samples, "quadra_backup_repository_backups") == 4
    # The newest evaluation of each check is 12:00's: its integrity failed, its drill passed.
    assert value(samples, "quadra_asset_check_passed", asset="backup", check="integrity") == 0
    assert value(samples, "quadra_asset_check_passed", asset="backup", check="restore_drill") == 1
    assert value(samples, "quadra_asset_check_info", asset="backup", check="integrity", run_id=runs[12],
                 partition="2026-12-01-12:00") == 1
    # The newest materialisation is 11:00's (12:00 was not materialised).
    assert value(samples, "quadra_backup_last_info", backup_id=ids[11], partition="2026-12-01-11:00", run_id=runs[11]) == 1


def test_no_good_backup_at_all_is_a_count_of_zero_and_no_timestamp(clean_env, tmp_path):
    with dg.instance_for_test() as instance:
        samples = scrape(QuadraCollector([DagsterSource(instance), BackupsSource(load_settings())]))
    assert value(samples, "quadra_backup_good_backups") == 0
    assert value(samples, "quadra_backup_repository_backups") == 0
    assert not labels_of(samples, "quadra_backup_last_good_timestamp_seconds")


def test_the_failure_streak_counts_back_to_the_last_success_skipping_cancels():
    assert failure_streak(["FAILURE", "CANCELED", "FAILURE", "SUCCESS", "FAILURE"]) == 2
    assert failure_streak(["SUCCESS", "FAILURE"]) == 0
    assert failure_streak([]) == 0


# The store -------------------------------------------------------------------------------------


def training_run(engine, losses: list[float], *, error: str | None = None, minutes: float = 2.0) -> int:
    from quadra_pipeline.store import add_metrics, finish_training_run, session_scope, start_training_run

    started = dt.datetime(2026, 12, 7, 3, 0, tzinfo=dt.timezone.utc) + dt.timedelta(hours=len(losses) + (1 if error else 0))
    with session_scope(engine) as session:
        run = start_training_run(session, field_size=16, seed=0, external_run_id=f"dagster-{started:%H%M}-{len(losses)}",
                                 started_at=started)
        if losses:
            add_metrics(session, run, [{"batch_number": i + 1, "loss": loss, "reward": 10.0 + i, "variance": 0.1,
                                        "field_mean": 0.5} for i, loss in enumerate(losses)])
        finish_training_run(session, run, status="failed" if error else "succeeded", error=error,
                            finished_at=started + dt.timedelta(minutes=minutes))
        return run.id


@pytest.fixture
def store(clean_env):
    from quadra_pipeline.store import ensure_schema, make_engine

    engine = make_engine(load_settings().database_url)
    ensure_schema(engine)
    yield engine
    engine.dispose()


def store_samples() -> Samples:
    return scrape(QuadraCollector([StoreSource(load_settings())]))


def test_the_newest_training_runs_figures(store):
    run_id = training_run(store, [0.9, 0.5, 0.25], minutes=1.5)
    samples = store_samples()
    assert value(samples, "quadra_training_last_run_duration_seconds") == 90.0
    assert value(samples, "quadra_training_last_run_final_loss") == 0.25
    assert value(samples, "quadra_training_last_run_final_reward") == 12.0
    assert value(samples, "quadra_training_last_run_batches") == 3
    assert value(samples, "quadra_training_last_run_nonfinite_loss") == 0
    assert value(samples, "quadra_training_last_run_info", training_run_id=str(run_id), dagster_run_id="dagster-0600-3",
                 status="succeeded") == 1


def test_an_infinite_loss_is_a_non_finite_run(store):
    training_run(store, [0.9])
    training_run(store, [0.9, math.inf, 0.3])
    samples = store_samples()
    assert value(samples, "quadra_training_last_run_nonfinite_loss") == 1
    assert value(samples, "quadra_training_last_run_final_loss") == 0.3


def test_a_nan_loss_the_store_refused_is_a_non_finite_run(store):
    """The store refuses a NaN loss (the run fails with that error): the run is non-finite too."""
    from quadra_pipeline.store import InvalidDataError, add_metrics, session_scope, start_training_run

    with session_scope(store) as session, pytest.raises(InvalidDataError) as refused:
        run = start_training_run(session, field_size=16, seed=0)
        add_metrics(session, run, [{"batch_number": 1, "loss": math.nan, "reward": 1.0, "variance": 0.1, "field_mean": 0.5}])
    training_run(store, [0.9, 0.8], error=str(refused.value))
    assert "loss is NaN" in str(refused.value)
    assert value(store_samples(), "quadra_training_last_run_nonfinite_loss") == 1


def test_the_store_is_opened_read_only(store):
    import sqlalchemy as sa

    training_run(store, [0.5])
    engine = read_only_engine(load_settings().database_url)
    with engine.connect() as connection, pytest.raises(sa.exc.OperationalError, match="readonly|read-only"):
        connection.execute(sa.text("delete from training_metrics"))
    engine.dispose()


@pytest.mark.postgres
def test_on_postgresql_the_exporter_reads_in_read_only_transactions(clean_env, monkeypatch):
    import sqlalchemy as sa

    from quadra_pipeline.store import ensure_schema, make_engine
    from quadra_pipeline_tests.postgres import scratch_database

    with scratch_database("quadra_exporter") as url:
        writer = make_engine(url.render_as_string(hide_password=False))
        ensure_schema(writer)
        training_run(writer, [0.7, 0.4])
        writer.dispose()
        monkeypatch.setenv("DATABASE_URL", url.render_as_string(hide_password=False))
        samples = store_samples()
        assert value(samples, "quadra_source_up", source="store") == 1
        assert value(samples, "quadra_training_last_run_final_loss") == 0.4
        engine = read_only_engine(url.render_as_string(hide_password=False))
        with engine.connect() as connection, pytest.raises(sa.exc.InternalError, match="read-only transaction"):
            connection.execute(sa.text("delete from training_metrics"))
        engine.dispose()


# Sources that are down -----------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_every_source_down_is_still_a_scrape_with_up_zero_and_reasons_in_the_log(clean_env, tmp_path, monkeypatch, caplog):
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("DATABASE_URL", f"postgresql://quadra:pw-s3cret@127.0.0.1:{free_port()}/quadra")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("QUADRA_BACKUP_DIR", str(tmp_path / "not-a-folder"))
    collector = QuadraCollector.from_settings(load_settings(), deadline_seconds=10)  # DAGSTER_HOME unset
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="quadra.exporter"), serving(registry_for(collector)) as base:
        response = urllib.request.urlopen(f"{base}/metrics", timeout=30)
        body = response.read().decode()
    assert response.status == 200 and time.monotonic() - started < 10
    for source in ("dagster", "store", "backups", "mlflow"):
        assert f'quadra_source_up{{source="{source}"}} 0.0' in body, source
    log = caplog.text
    assert "source dagster is down: DAGSTER_HOME is not set" in log
    assert "source store is down" in log and "Connection refused" in log
    assert "source backups is down: QUADRA_BACKUP_DIR" in log and "is not a folder" in log
    assert "source mlflow is down: MLflow tracking server at http://127.0.0.1:" in log
    assert "pw-s3cret" not in log and "pw-s3cret" not in body
    collector.close()


class SlowSource:
    name = "slow"

    def __init__(self, seconds: float) -> None:
        self.seconds, self.calls = seconds, 0

    def collect(self) -> SourceResult:
        from quadra_pipeline.monitoring.sources import Families

        self.calls += 1
        time.sleep(self.seconds)
        families = Families()
        families.gauge("quadra_test_slow", "slow", 1.0)
        return SourceResult(families)


def test_a_hung_source_is_down_after_the_deadline_and_is_never_asked_twice_at_once(clean_env):
    slow = SlowSource(2.0)
    with dg.instance_for_test() as instance:
        collector = QuadraCollector([slow, DagsterSource(instance)], deadline_seconds=0.5)
        started = time.monotonic()
        first = scrape(collector)
        second = scrape(collector)
        took = time.monotonic() - started
        assert took < 1.9, took
        for samples in (first, second):
            assert value(samples, "quadra_source_up", source="slow") == 0
            assert value(samples, "quadra_source_up", source="dagster") == 1
        assert slow.calls == 1  # the second scrape waited for the same call
        time.sleep(2.0)  # the hung call ends; the source answers quickly again
        slow.seconds = 0.0
        third = scrape(collector)
        assert slow.calls == 2 and value(third, "quadra_source_up", source="slow") == 1
        assert value(third, "quadra_test_slow") == 1
    collector.close()


# The command line ------------------------------------------------------------------------------


def quadra(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("quadra")), *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=cwd)


def test_quadra_exporter_once_prints_a_scrape(clean_env, tmp_path):
    import os

    env = {k: v for k, v in os.environ.items()}
    env["DAGSTER_HOME"] = str(tmp_path / "dagster")
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text("telemetry: {enabled: false}\n")
    result = quadra("exporter", "--once", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'quadra_source_up{source="dagster"} 1.0' in result.stdout
    assert 'quadra_source_up{source="store"} 0.0' in result.stdout  # nothing has run in this data home
    assert "source store is down: the store" in result.stderr and "does not exist yet" in result.stderr
    assert not (tmp_path / "home" / "quadra.db").exists()  # the exporter created nothing


def test_quadra_exporter_refuses_bad_arguments_in_one_line(clean_env, tmp_path):
    missing = quadra("exporter", "--multiprocess-dir", str(tmp_path / "nope"), "--once")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert "--multiprocess-dir" in missing.stderr and "no such folder" in missing.stderr
    port = quadra("exporter", "--port", "70000")
    assert port.returncode == 2 and "must be between 0 and 65535" in port.stderr


def test_the_replication_lag_as_its_check_last_measured_it(clean_env):
    """The wal_archive asset's replication_lag check, as replication_lag_sensor records it (a
    runless evaluation): its outcome and its measured lag; not streaming: failed, no lag."""
    key = dg.AssetKey("wal_archive")
    with dg.instance_for_test() as instance:
        def report(passed: bool, metadata: dict) -> Samples:
            instance.report_runless_asset_event(dg.AssetCheckEvaluation(
                asset_key=key, check_name="replication_lag", passed=passed, metadata=metadata))
            return scrape(QuadraCollector([DagsterSource(instance)]))

        samples = report(True, {"lag_seconds": 1.25, "limit_seconds": 60.0})
        assert value(samples, "quadra_asset_check_passed", asset="wal_archive", check="replication_lag") == 1
        assert value(samples, "quadra_replication_lag_seconds", asset="wal_archive", check="replication_lag") == 1.25
        samples = report(False, {"limit_seconds": 60.0})
        assert value(samples, "quadra_asset_check_passed", asset="wal_archive", check="replication_lag") == 0
        assert not labels_of(samples, "quadra_replication_lag_seconds")


def test_the_daily_point_in_time_drill_as_its_check_last_ran_it(clean_env):
    """wal_archive's pitr_drill (base_backup_job's non-blocking check): a failed drill is
    quadra_asset_check_passed 0 with its info (what QuadraPitrDrillFailed alerts on); the next
    one passing is 1. No lag is exported for it."""
    key = dg.AssetKey("wal_archive")
    with dg.instance_for_test() as instance:
        def report(passed: bool) -> Samples:
            instance.report_runless_asset_event(dg.AssetCheckEvaluation(
                asset_key=key, check_name="pitr_drill", passed=passed, metadata={"target": "2026-12-07T02:29:00+00:00"}))
            return scrape(QuadraCollector([DagsterSource(instance)]))

        samples = report(False)
        assert value(samples, "quadra_asset_check_passed", asset="wal_archive", check="pitr_drill") == 0
        [info] = [labels for labels in labels_of(samples, "quadra_asset_check_info") if labels["check"] == "pitr_drill"]
        assert info["asset"] == "wal_archive" and info["partition"] == ""
        assert not labels_of(samples, "quadra_replication_lag_seconds")
        samples = report(True)
        assert value(samples, "quadra_asset_check_passed", asset="wal_archive", check="pitr_drill") == 1


@pytest.mark.postgres
def test_the_stacks_exporter_instance_reads_dagsters_postgresql_storage_and_writes_nothing_in_its_home(
        clean_env, tmp_path, monkeypatch):
    """deploy/prometheus/exporter-dagster.yaml as the stack mounts it (storage only, the passfile)
    with the stack's read-only role (deploy/compose/db-init/dagster-grants.sql): the exporter
    reads what another process of the instance recorded, cannot write Dagster's storage, and its
    DAGSTER_HOME keeps nothing but dagster.yaml."""
    import os
    import uuid

    import sqlalchemy as sa

    from quadra_pipeline_tests.defs.conftest import REPO_ROOT
    from quadra_pipeline_tests.monitoring.conftest import PROMETHEUS_DIR
    from quadra_pipeline_tests.monitoring.test_alerts import nightly_job
    from quadra_pipeline_tests.postgres import ADMIN_URL, scratch_database

    reader = f"quadra_monitor_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'create role "{reader}" login'))
    try:
        with scratch_database("quadra_exporter_dagster") as url:
            def passfile_for(user: str) -> Path:
                path = tmp_path / f"{user}.pgpass"
                path.write_text(f"{url.host}:{url.port or 5432}:{url.database}:{user}:{url.password or 'unused'}\n")
                path.chmod(0o600)
                return path

            home = tmp_path / "exporter-home"
            home.mkdir()
            template = (PROMETHEUS_DIR / "exporter-dagster.yaml").read_text()
            for name, setting in {"DAGSTER_HOME": str(home), "DAGSTER_PG_HOST": url.host, "DAGSTER_PG_DB": url.database}.items():
                monkeypatch.setenv(name, setting)
            # The daemon's side, as the storage's owner: it makes the tables and runs jobs.
            owner_home = tmp_path / "owner-home"
            owner_home.mkdir()
            (owner_home / "dagster.yaml").write_text(template.replace("/run/secrets/dagster.pgpass", str(passfile_for(url.username))))
            monkeypatch.setenv("DAGSTER_PG_USER", url.username)
            with dg.DagsterInstance.from_config(str(owner_home)) as other:
                for _ in range(2):
                    nightly_job.execute_in_process(instance=other, raise_on_error=False)
            # db-init's grants, as the stack runs them (there, the owner is the `dagster` role).
            granted = subprocess.run(
                ["psql", "--no-psqlrc", "--quiet", "-h", url.host, "-U", url.username, "-d", url.database,
                 "-v", f"reader={reader}", "-v", f"owner={url.username}",
                 "-f", str(REPO_ROOT / "deploy/compose/db-init/dagster-grants.sql")],
                capture_output=True, text=True, timeout=60, check=False)
            assert granted.returncode == 0, granted.stderr
            (home / "dagster.yaml").write_text(template.replace("/run/secrets/dagster.pgpass", str(passfile_for(reader))))
            monkeypatch.setenv("DAGSTER_PG_USER", reader)
            source = DagsterSource()  # DagsterInstance.get(), as `quadra exporter` opens it
            samples = scrape(QuadraCollector([source]))
            assert value(samples, "quadra_source_up", source="dagster") == 1
            assert value(samples, "quadra_job_consecutive_failures", dagster_job="nightly_job") == 2
            source.instance().dispose()
            assert os.listdir(home) == ["dagster.yaml"]
            as_reader = sa.create_engine(url.set(username=reader))
            with as_reader.connect() as connection, pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                connection.execute(sa.text("delete from runs"))
            as_reader.dispose()
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'drop role if exists "{reader}"'))
        admin.dispose()
