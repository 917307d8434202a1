"""sweep_job on Dagster's Celery executor: two `quadra worker` processes on the machine's
RabbitMQ (a virtual host of the test's own), a Dagster instance, the project database and the
MLflow store on the test PostgreSQL server, the sweep run with `dagster job execute` as a user
runs it. Trials land on both workers; one worker is SIGKILLed in the middle of a trial, and the
sweep still succeeds with one finished child run per trial; an unreachable broker fails the run
within seconds."""

import os
import signal
import subprocess
import time
import uuid
from contextlib import ExitStack

import pytest
import sqlalchemy as sa
from mlflow import MlflowClient

from quadra_pipeline_tests.defs.test_dagster_cli import BIN, REPO_ROOT
from quadra_pipeline_tests.postgres import scratch_database
from quadra_pipeline_tests.s3server import free_port

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672"
INSTANCE = """
storage:
  postgres:
    postgres_url: {url}
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
concurrency:
  pools:
    default_limit: 1
telemetry:
  enabled: false
"""


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def vhost():
    """A RabbitMQ virtual host of this test's own (nothing left in a queue from elsewhere)."""
    name = f"quadra-test-{uuid.uuid4().hex[:8]}"
    try:
        made = rabbitmqctl("add_vhost", name).returncode == 0 and \
            rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*").returncode == 0
    except FileNotFoundError:
        made = False
    if not made:
        pytest.fail("cannot make a RabbitMQ virtual host (rabbitmqctl): the Celery tests need the machine's RabbitMQ", pytrace=False)
    yield name
    rabbitmqctl("delete_vhost", name)


@pytest.fixture
def celery_env(tmp_path, vhost):
    """Everything on PostgreSQL (concurrent writers on two worker hosts), the broker on RabbitMQ."""
    with ExitStack() as stack:
        dagster_db, project_db, mlflow_db = (stack.enter_context(scratch_database(p)) for p in ("cel_dagster", "cel_quadra", "cel_mlflow"))
        home = tmp_path / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text(INSTANCE.format(url=dagster_db.render_as_string(hide_password=False)))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("QUADRA_", "DAGSTER_", "MLFLOW_")) and k != "DATABASE_URL"}
        env.update(
            DAGSTER_HOME=str(home),
            QUADRA_HOME=str(tmp_path / "home"),
            DATABASE_URL=project_db.render_as_string(hide_password=False),
            MLFLOW_TRACKING_URI=mlflow_db.render_as_string(hide_password=False),
            QUADRA_RUN_EXECUTOR="celery",
            QUADRA_CELERY_BROKER_URL=f"{RABBITMQ}/{vhost}",
            MLFLOW_DISABLE_TELEMETRY="true",
        )
        env["QUADRA_OBJECT_STORE"] = str(tmp_path / "objects")  # shared by the two "hosts" (one machine)
        yield env


class Worker:
    def __init__(self, name: str, env: dict, log):
        self.name = name
        self.log = log
        self.process = subprocess.Popen([str(BIN / "quadra"), "worker", "--name", name], cwd=log.parent, env=env,
                                        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        while f"{self.name} ready." not in self.log.read_text():
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"worker {self.name} not ready in {timeout} s"
            time.sleep(0.5)

    def kill(self):
        """A lost host: the worker and its pool process, at once."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> bool:
        if self.process.poll() is not None:
            return True
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
            return True
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
            return False


def child_runs(env, dagster_run: str | None = None):
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("quadra-matrix")
    if experiment is None:
        return []
    query = "tags.`quadra.sweep` = 'trial'" + (f" and tags.dagster_run_id = '{dagster_run}'" if dagster_run else "")
    return client.search_runs([experiment.experiment_id], filter_string=query, max_results=500)


SWEEP = """
ops:
  corpus: {{config: {{training_rows: 600, held_out_rows: 60}}}}
  hyperparameter_sweep: {{config: {{grid: {{seed: [0, 1, 2, 3]}}, fixed: {{field_size: 64, batches: {batches}, rows_per_batch: 10}}}}}}
"""


def test_trials_fan_out_to_two_workers_and_survive_one_killed_mid_trial(celery_env, tmp_path):
    (tmp_path / "sweep.yaml").write_text(SWEEP.format(batches=60))
    workers = [Worker(f"w{i}@quadra-test", celery_env, tmp_path / f"w{i}.log") for i in (1, 2)]
    try:
        for worker in workers:
            worker.wait_ready()
        execute = subprocess.Popen(
            [str(BIN / "dagster"), "job", "execute", "-m", "quadra_pipeline.definitions", "-j", "sweep_job", "-c", str(tmp_path / "sweep.yaml")],
            cwd=REPO_ROOT, env=celery_env, stdout=(tmp_path / "execute.log").open("w"), stderr=subprocess.STDOUT,
        )
        # Wait until worker 1 is in the middle of a trial (its child run RUNNING with a few batches), then kill it.
        victim, deadline = workers[0], time.monotonic() + 300
        while True:
            assert execute.poll() is None, (tmp_path / "execute.log").read_text()[-4000:]
            running = [r for r in child_runs(celery_env) if r.info.status == "RUNNING" and r.data.tags.get("worker") == victim.name]
            client = MlflowClient(celery_env["MLFLOW_TRACKING_URI"])
            if running and len(client.get_metric_history(running[0].info.run_id, "loss")) >= 10:
                break
            assert time.monotonic() < deadline, "no trial ever ran on worker 1"
            time.sleep(0.5)
        killed_trial = running[0].data.tags["trial"]
        victim.kill()
        assert execute.wait(timeout=600) == 0, (tmp_path / "execute.log").read_text()[-4000:]
    finally:
        stopped = [w.stop() for w in workers]
    assert stopped[1], "the surviving worker did not stop on SIGTERM"

    runs = child_runs(celery_env)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["trial"] for r in finished) == ["trial_000", "trial_001", "trial_002", "trial_003"]
    assert {r.data.tags["worker"] for r in finished} == {"w1@quadra-test", "w2@quadra-test"} or \
        {r.data.tags["worker"] for r in runs} == {"w1@quadra-test", "w2@quadra-test"}  # both took trials
    # The killed attempt: closed FAILED by the attempt that ran the trial again on the other worker.
    [lost] = [r for r in runs if r.info.status != "FINISHED"]
    assert lost.info.status == "FAILED" and lost.data.tags["trial"] == killed_trial and lost.data.tags["worker"] == "w1@quadra-test"
    again = next(r for r in finished if r.data.tags["trial"] == killed_trial)
    assert again.data.tags["worker"] == "w2@quadra-test" and again.data.tags["attempt"] == "2"
    # One version: the best trial, registered once.
    engine = sa.create_engine(celery_env["DATABASE_URL"])
    with engine.connect() as conn:
        versions = conn.execute(sa.text("select count(*) from model_versions")).scalar()
        attempts = dict(conn.execute(sa.text("select external_run_id, status from training_runs")).all())
    engine.dispose()
    assert versions == 1
    assert sorted(attempts.values()).count("failed") == 1 and sorted(attempts.values()).count("succeeded") == 4
    # What the trials' steps wrote on the workers is in their captured logs (the UI's stdout/stderr).
    assert "trial_00" in captured_output(celery_env["DAGSTER_HOME"])


def captured_output(dagster_home: str) -> str:
    """Every step's captured stdout and stderr of the newest run, as the UI reads them."""
    import dagster as dg

    with dg.DagsterInstance.from_config(dagster_home) as instance:
        [record] = instance.get_run_records(limit=1)
        text = []
        for entry in instance.all_logs(record.dagster_run.run_id, of_type=dg.DagsterEventType.LOGS_CAPTURED):
            data = entry.dagster_event.event_specific_data
            log = instance.compute_log_manager.get_log_data([record.dagster_run.run_id, "compute_logs", data.file_key])
            text += [(log.stdout or b"").decode(errors="replace"), (log.stderr or b"").decode(errors="replace")]
    return "\n".join(text)


def test_an_unreachable_broker_fails_the_run_within_seconds(celery_env, tmp_path):
    (tmp_path / "sweep.yaml").write_text(SWEEP.format(batches=2))
    env = {**celery_env, "QUADRA_CELERY_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}//"}  # nothing listens
    started = time.monotonic()
    done = subprocess.run(
        [str(BIN / "dagster"), "job", "execute", "-m", "quadra_pipeline.definitions", "-j", "sweep_job", "-c", str(tmp_path / "sweep.yaml")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    elapsed = time.monotonic() - started
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "Encountered error during celery task submission" in output and "Connection refused" in output, output[-3000:]
    assert elapsed < 90, f"took {elapsed:.0f} s"
