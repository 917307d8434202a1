"""The Dagster commands a user runs from the repo root, end to end, in real processes:
`dagster job execute`, `dagster asset materialize`, `dagster job launch` picked up by a
running `dagster-daemon`, `dagster dev`, and `dagster-webserver` answering GraphQL."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from quadra_pipeline_tests.defs.conftest import REPO_ROOT

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
SMALL_RUN = """
ops:
  corpus:
    config: {training_rows: 300, held_out_rows: 50}
  train_model:
    config: {batches: 3, field_size: 24}
"""


def environment(tmp: Path) -> dict[str, str]:
    dagster_home = tmp / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUADRA_", "DAGSTER_")) and k not in {"DATABASE_URL", "MLFLOW_TRACKING_URI"}}
    env.update(DAGSTER_HOME=str(dagster_home), QUADRA_HOME=str(tmp / "home"), MLFLOW_DISABLE_TELEMETRY="true")
    return env


def run(args, env, timeout=300):
    result = subprocess.run([str(BIN / args[0]), *args[1:]], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def runs(env, job="training_job"):
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        return [(r.run_id, r.status) for r in instance.get_runs(filters=dg.RunsFilter(job_name=job))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Background:
    """A server process in its own process group, stopped with SIGTERM (SIGKILL if it hangs)."""

    def __init__(self, args, env, log: Path):
        self.log = open(log, "w")
        self.process = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]], cwd=REPO_ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self):
        """SIGTERM to the group; True if everything stopped on it (False: SIGKILL was needed)."""
        clean = True
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                clean = False
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log.close()
        return clean


def wait_for(url: str, process: subprocess.Popen, timeout: float = 120) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read()
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body = json.loads(response.read())
    assert "errors" not in body, body
    return body["data"]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """`dagster job execute` of training_job, as the README tells users to run it."""
    tmp = tmp_path_factory.mktemp("execute")
    env = environment(tmp)
    (tmp / "run.yaml").write_text(SMALL_RUN)
    result = run(["dagster", "job", "execute", "-m", "quadra_pipeline.definitions", "-j", "training_job", "-c", str(tmp / "run.yaml")], env)
    return env, result


def test_job_execute(executed):
    env, result = executed
    [(run_id, status)] = runs(env)
    assert status == dg.DagsterRunStatus.SUCCESS
    assert "batch 3 of 3" in result.stdout + result.stderr
    assert list((Path(env["QUADRA_HOME"]) / "checkpoints" / run_id).glob("checkpoint.pt"))


def test_asset_materialize_everything(tmp_path):
    """'*' includes the hourly-partitioned backup asset, so Dagster wants an hour for it (the
    hour that just ended: an older one is a backfill, refused); the other assets are
    unpartitioned and materialise in the same run, the backup last."""
    from quadra_pipeline_tests.defs.test_backup_asset import hour_that_ended

    env = environment(tmp_path)
    (tmp_path / "run.yaml").write_text(SMALL_RUN)
    hour = hour_that_ended()
    run(["dagster", "asset", "materialize", "--select", "*", "--partition", hour,
         "-m", "quadra_pipeline.definitions", "-c", str(tmp_path / "run.yaml")], env)
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        keys = ["corpus", "quadra_model", "training_metrics", "system_state", "model_evaluation", "registered_model",
                "champion_model", "backup"]
        for key in keys:
            assert instance.get_latest_materialization_event(dg.AssetKey(key)) is not None, key
        backup = instance.get_latest_materialization_event(dg.AssetKey("backup")).asset_materialization
        assert backup.partition == hour
    # Without an hour, Dagster refuses the selection with a clear message (not a silent skip).
    refused = subprocess.run([str(BIN / "dagster"), "asset", "materialize", "--select", "*", "-m", "quadra_pipeline.definitions"],
                             cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "no '--partition' option was provided" in refused.stderr


def test_job_launch_is_queued_then_run_by_the_daemon_one_training_at_a_time(tmp_path):
    env = environment(tmp_path)
    (tmp_path / "run.yaml").write_text(SMALL_RUN)
    launch = ["dagster", "job", "launch", "-j", "training_job", "-w", "workspace.yaml", "--config", str(tmp_path / "run.yaml")]
    # Two launches before any daemon runs: both wait in the queue.
    run(launch, env)
    run(launch, env)
    assert [status for _, status in runs(env)] == [dg.DagsterRunStatus.QUEUED] * 2
    daemon = Background(["dagster-daemon", "run", "-w", "workspace.yaml"], env, tmp_path / "daemon.log")
    try:
        done = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            states = runs(env)
            if all(status in done for _, status in states):
                break
            time.sleep(2)
        log = (tmp_path / "daemon.log").read_text()[-3000:]
        assert [status for _, status in states] == [dg.DagsterRunStatus.SUCCESS] * 2, (states, log)
    finally:
        stopped_on_sigterm = daemon.stop()
    assert stopped_on_sigterm
    # The tag limit in dagster.yaml (quadra/training: 1) kept the two runs from overlapping.
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        records = sorted(instance.get_run_records(filters=dg.RunsFilter(job_name="training_job")), key=lambda r: r.start_time)
    assert records[0].end_time <= records[1].start_time


def test_webserver_answers_graphql_with_assets_and_latest_materialisations(executed, tmp_path):
    env, _ = executed
    port = free_port()
    server = Background(["dagster-webserver", "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"], env, tmp_path / "web.log")
    try:
        wait_for(f"http://127.0.0.1:{port}/server_info", server.process)
        data = graphql(port, "{ assetNodes { assetKey { path } groupName hasAssetChecks } }")
        groups = {"/".join(n["assetKey"]["path"]): n["groupName"] for n in data["assetNodes"]}
        assert groups == {
            "corpus": "data", "quadra_model": "training", "training_metrics": "training", "system_state": "training",
            "model_evaluation": "evaluation", "registered_model": "registry", "champion_model": "registry",
            "backup": "backup", "hyperparameter_sweep": "sweep", "sweep_registered_model": "sweep", "wal_archive": "backup",
            "sqlite_replica": "backup", "offsite_backup": "backup",
        }
        data = graphql(port, '{ assetOrError(assetKey: {path: ["quadra_model"]}) { ... on Asset { assetMaterializations(limit: 1) { runId metadataEntries { label } } } } }')
        [latest] = data["assetOrError"]["assetMaterializations"]
        [(run_id, _)] = runs(env)
        assert latest["runId"] == run_id
        assert {"checkpoint_sha256", "mlflow_run", "curve", "rows_per_second"} <= {m["label"] for m in latest["metadataEntries"]}
    finally:
        server.stop()


def test_dagster_dev_starts_ui_and_daemon_and_stops_on_sigterm(tmp_path):
    env = environment(tmp_path)
    port = free_port()
    dev = Background(["dagster", "dev", "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"], env, tmp_path / "dev.log")
    try:
        info = json.loads(wait_for(f"http://127.0.0.1:{port}/server_info", dev.process))
        assert "dagster_version" in info
        data = graphql(port, "{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }")
        statuses = {d["daemonType"]: d for d in data["instance"]["daemonHealth"]["allDaemonStatuses"]}
        assert "SCHEDULER" in statuses and "QUEUED_RUN_COORDINATOR" in statuses
    finally:
        stopped_on_sigterm = dev.stop()
    assert stopped_on_sigterm, "dagster dev (and its webserver and daemon) must stop on SIGTERM"


@pytest.mark.parametrize(
    "command",
    [
        ["dagster", "definitions", "validate", "-m", "quadra_pipeline.definitions"],
        ["dagster", "definitions", "validate", "-w", "workspace.yaml"],
        ["dg", "check", "defs"],
    ],
    ids=["validate-module", "validate-workspace", "dg-check-defs"],
)
def test_definitions_validate(tmp_path, command):
    result = run(command, environment(tmp_path))
    assert "WARNING" not in result.stdout + result.stderr
