"""Faults on the running stack (after test_stack.py, on the same stack): real containers are
stopped or killed while work runs, and what the stack does about it is checked and timed. The
recovery times go into the phase table printed at the end of `make deploy-test`."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import time

import pytest

from .stack import PHASES, StackError, docker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

#: A training run long enough to break things in: ~30 s of training at ~20 ms a batch (a corpus
#: of 20,000 rows holds 2,000 batches of 10).
LONG_BATCHES = 1500
LONG = {"ops": {"corpus": {"config": {"training_rows": 20_000}},
                "train_model": {"config": {"batches": LONG_BATCHES, "metrics_flush_every": 5, "log_every": 50}}}}
#: Minutes of training (3,000 batches on a 30,000-row corpus), far past a 20 s max_runtime.
LONGER = {"ops": {"corpus": {"config": {"training_rows": 30_000}},
                  "train_model": {"config": {"batches": 3000, "metrics_flush_every": 10, "log_every": 100}}}}
#: The run launched after each fault, to show the stack recovered. Its model is judged by the
#: champion gate against whatever the faults left as champion: a LONG run that a retry finished
#: is a champion a default run cannot beat, and the gate rightly fails it. These runs test the
#: infrastructure, not the model, so they pass any model (as test_pipeline's resume test does).
RECOVERY = {"ops": {"registered_model": {"config": {"tolerance": 1.0}}}}


def versions_of(stack, run_id: str) -> list[str]:
    status, answer = stack.mlflow("/api/2.0/mlflow/registered-models/get?name=quadra-matrix")
    assert status == 200, answer
    found = []
    for version in range(1, 100):
        code, got = stack.mlflow(f"/api/2.0/mlflow/model-versions/get?name=quadra-matrix&version={version}")
        if code != 200:
            break
        tags = {t["key"]: t["value"] for t in got["model_version"].get("tags", [])}
        if tags.get("dagster_run_id") == run_id:
            found.append(str(version))
    return found


def wait_for_batches(stack, run_id: str, at_least: int, timeout: float = 600) -> int:
    return stack.wait(f"run {run_id}: {at_least} batches in SQL",
                      lambda: (n := stack.batches_in_sql(run_id)) >= at_least and n, timeout)


def test_mlflow_stopped_during_training_fails_the_run_clearly_registers_nothing_and_recovers(stack, runs):
    """MLflow's container stopped mid-training: the client's bounded retries with backoff end in
    one clear failure; our training run is marked failed with the reason, no model version is
    registered for it; once MLflow is back, the next training run succeeds and closes the failed
    run's MLflow run as FAILED (it could not be reached to be told)."""
    run_id = stack.launch("training_job", config=LONG)
    wait_for_batches(stack, run_id, 10)
    stopped = time.perf_counter()
    stack.compose("stop", "mlflow")
    try:
        run = stack.wait_for_run(run_id, timeout=600)
        failed_after = time.perf_counter() - stopped
        assert run["status"] == "FAILURE"
        status, error, mlflow_run = stack.training_row(run_id)
        assert status == "failed" and "MLflow" in error, error
        assert failed_after < 180, f"the run took {failed_after:.0f} s to fail: retries are not bounded"
        batches = stack.batches_in_sql(run_id)
        assert 10 <= batches < LONG_BATCHES  # every batch that finished is kept
        PHASES.append(("fault: MLflow stopped", failed_after, f"training run failed clearly after the stop ({batches} batches kept in SQL)"))
    finally:  # whatever was found, the later tests get their MLflow back
        back = time.perf_counter()
        stack.compose("start", "mlflow")
        stack.wait("mlflow healthy again", lambda: stack.healthy("mlflow"), 180)
    assert versions_of(stack, run_id) == []  # nothing half-registered
    next_run = stack.launch("training_job", config=RECOVERY)
    assert stack.wait_for_run(next_run)["status"] == "SUCCESS", stack.run_messages(next_run)[-20:]
    PHASES.append(("recovery: MLflow back", time.perf_counter() - back, "MLflow started, the next training run succeeded"))
    code, got = stack.mlflow(f"/api/2.0/mlflow/runs/get?run_id={mlflow_run}")
    assert code == 200 and got["run"]["info"]["status"] == "FAILED", got
    runs["training_after_mlflow"] = next_run


def test_postgresql_restarted_mid_run_loses_nothing_and_the_next_launch_succeeds(stack, runs):
    """PostgreSQL restarted while a training run writes to it: the run fails or is retried
    cleanly (never left running), the instance recovers without restarts, the next launch
    succeeds, and nothing written before the restart is lost."""
    before = {job: stack.batches_in_sql(run_id) for job, run_id in runs.items() if job.startswith("training")}
    run_id = stack.launch("training_job", config=LONG)
    wait_for_batches(stack, run_id, 10)
    restarted = time.perf_counter()
    stack.compose("restart", "postgres")
    stack.wait("postgres healthy again", lambda: stack.healthy("postgres"), 180)

    def ended() -> dict | None:
        first = stack.run(run_id)
        if first.get("status") not in ("SUCCESS", "FAILURE", "CANCELED"):
            return None
        retries = stack.graphql(
            'query($f: RunsFilter) { runsOrError(filter: $f) { ... on Runs { results { runId status } } } }',
            {"f": {"tags": [{"key": "dagster/parent_run_id", "value": run_id}]}})["runsOrError"]["results"]
        if any(r["status"] not in ("SUCCESS", "FAILURE", "CANCELED") for r in retries):
            return None
        return {"first": first["status"], "retries": [r["status"] for r in retries]}

    outcome = stack.wait(f"run {run_id} (and any retry) ended", ended, 900, every=5)
    assert outcome["first"] in ("SUCCESS", "FAILURE"), outcome
    hit_batches = stack.batches_in_sql(run_id)
    assert hit_batches >= 10  # what it wrote before the restart is still there
    assert stack.training_row(run_id)[0] in ("failed", "succeeded")  # never left "running"
    for service in ("webserver", "daemon", "code", "mlflow"):
        stack.wait(f"{service} healthy", lambda s=service: stack.healthy(s), 180)
    next_run = stack.launch("training_job", config=RECOVERY)
    assert stack.wait_for_run(next_run)["status"] == "SUCCESS", stack.run_messages(next_run)[-20:]
    PHASES.append(("recovery: PostgreSQL restarted", time.perf_counter() - restarted,
                   f"restart -> the next training run succeeded (the run it hit: {outcome['first'].lower()}, "
                   f"{hit_batches} batches kept; retries: {len(outcome['retries'])})"))
    for job, count in before.items():
        assert stack.batches_in_sql(runs[job]) == count, job
    assert stack.run(runs["backup"])["status"] == "SUCCESS"  # the run history survived
    assert stack.backup_tool("verify", check=False).returncode == 0


def location_state(stack) -> str:
    """'loaded', 'error' or 'loading': the code location as the webserver sees it."""
    data = stack.graphql("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                         "locationOrLoadError { __typename } } } } }")
    [entry] = data["workspaceOrError"]["locationEntries"]
    kind = (entry["locationOrLoadError"] or {}).get("__typename")
    if kind == "PythonError":
        return "error"
    if kind == "RepositoryLocation" and entry["loadStatus"] == "LOADED":
        return "loaded"
    return "loading"


def test_the_code_server_killed_shows_a_location_error_and_everything_recovers_without_restarts(stack, runs):
    """The code server's process killed (SIGKILL from the host, as an OOM kill would): the
    webserver shows the location's error (on a reload, as the UI's "Reload" does), Docker's
    restart policy brings the container back, and the webserver and daemon recover without
    being restarted: the location loads again and a launched run succeeds."""
    webserver_started = stack.container("webserver")["State"]["StartedAt"]
    daemon_started = stack.container("daemon")["State"]["StartedAt"]
    assert location_state(stack) == "loaded"
    killed = time.perf_counter()
    os.kill(stack.container("code")["State"]["Pid"], signal.SIGKILL)
    def reload() -> str:
        """What a user's "Reload" in the UI shows (the webserver keeps the last snapshot until then)."""
        stack.graphql('mutation { reloadRepositoryLocation(repositoryLocationName: "quadra_pipeline") { __typename } }')
        return location_state(stack)

    saw = stack.wait("the webserver showing the location error", lambda: (state := reload()) == "error" and state, 120, every=1)
    stack.wait("the code server healthy again", lambda: stack.healthy("code"), 300)

    def reloaded() -> bool:
        return location_state(stack) == "loaded" or reload() == "loaded"

    stack.wait("the location loaded again in the webserver", reloaded, 180, every=3)
    next_run = stack.launch("training_job", config=RECOVERY)
    assert stack.wait_for_run(next_run)["status"] == "SUCCESS", stack.run_messages(next_run)[-20:]
    PHASES.append(("recovery: code server killed", time.perf_counter() - killed,
                   f"kill -> location {saw} in the UI -> back, a launched run succeeded"))
    assert stack.container("webserver")["State"]["StartedAt"] == webserver_started  # not restarted
    assert stack.container("daemon")["State"]["StartedAt"] == daemon_started
    assert stack.container("code")["RestartCount"] >= 1


def test_a_run_past_its_max_runtime_is_stopped_by_run_monitoring(stack):
    """A run tagged dagster/max_runtime (seconds) that runs longer is stopped by the daemon's run
    monitoring (every 30 s here), its container stopped, and it ends failed or canceled."""
    started = time.perf_counter()
    run_id = stack.launch("training_job", tags={"dagster/max_runtime": "20"}, config=LONGER)
    run = stack.wait_for_run(run_id, timeout=300)
    stopped_after = time.perf_counter() - started
    assert run["status"] in ("FAILURE", "CANCELED"), run
    assert stack.batches_in_sql(run_id) < 3000  # stopped, not finished
    assert stack.training_row(run_id)[0] != "succeeded"
    # Stopped by run monitoring, for this reason (not by anything else that could end a run).
    assert any("maximum runtime of 20 seconds" in m for m in stack.run_messages(run_id)), stack.run_messages(run_id)[-5:]
    tags = {t["key"]: t["value"] for t in run["tags"]}
    stack.wait("the run's container stopped (and removed)",
               lambda: not docker("ps", "-aq", "--filter", f"id={tags['docker/container_id']}").stdout.strip(), 120)
    # Its step, on a Celery worker, stopped too (it asks whether its run still goes): no batch after it.
    settled = stack.batches_in_sql(run_id)
    time.sleep(15)
    assert stack.batches_in_sql(run_id) == settled
    PHASES.append(("fault: max_runtime 20 s", stopped_after, f"launch -> run {run['status'].lower()} by run monitoring"))
    if stopped_after > 200:
        raise StackError(f"a 20 s max_runtime took {stopped_after:.0f} s to stop the run")


class CommitProbe:
    """Commits a row every `every` seconds into the project database, as a writer that does not
    know a disaster is coming, and remembers when each commit returned."""

    def __init__(self, stack, every: float = 0.2):
        import threading

        self.stack, self.every = stack, every
        self.committed: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.stack.sql("quadra", "create table if not exists rpo_probe (id bigserial primary key, t double precision)")
        self._thread.start()
        return self

    def _run(self):
        import subprocess

        psql = subprocess.Popen(self.stack.compose_argv("exec", "-T", "postgres", "psql", "-U", "postgres", "-d", "quadra",
                                                        "-v", "ON_ERROR_STOP=1", "-qAt"),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env=self.stack.compose_env())
        try:
            while not self._stop.is_set():
                now = time.time()
                psql.stdin.write(f"insert into rpo_probe (t) values ({now}) returning 'ok';\n")
                psql.stdin.flush()
                if psql.stdout.readline().strip() != "ok":
                    break  # the server is gone
                self.committed.append(now)
                time.sleep(self.every)
        except (BrokenPipeError, OSError):
            pass
        finally:
            psql.kill()

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=10)


def test_the_database_server_and_the_backups_lost_recovered_from_the_archive_and_the_off_site_copy(stack, runs):
    """The disaster: the PostgreSQL container and its volume destroyed, and the local backup
    volume with them. Recovered from what was off the host alone: the continuous archive (the
    newest base backup and the streamed WAL) and the off-site copy of the backups. Every commit
    up to the moment of the loss is back but the last seconds (the RPO, measured), the registry
    and its champion, Dagster's run history; the time to a healthy stack that runs a job is the
    RTO."""
    base = stack.launch("base_backup_job")
    assert stack.wait_for_run(base)["status"] == "SUCCESS", stack.run_messages(base)[-20:]
    drill = stack.checks_of_latest("wal_archive")["pitr_drill"]  # the daily point-in-time drill, in the image
    assert drill["success"] is True, drill
    hourly = stack.launch("backup_job", tags={"dagster/partition": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d-%H:00")})
    assert stack.wait_for_run(hourly)["status"] == "SUCCESS", stack.run_messages(hourly)[-20:]  # pushed off-site too
    status = json.loads(stack.backup_tool_command("wal", "status", "--json").stdout)
    assert status["base_backups"] and status["continuous_from"], status
    assert stack.wait("the replication_lag check evaluated and passing",
                      lambda: stack.checks_of_latest_evaluation("wal_archive").get("replication_lag", {}).get("success") is True,
                      180, every=5)
    # Committed work: a training run (metrics, a registered version), a registry change (a rollback).
    trained = stack.launch("training_job", config=RECOVERY)
    assert stack.wait_for_run(trained)["status"] == "SUCCESS"
    metrics = stack.sql("quadra", "select count(*) from training_metrics")
    rollback = stack.launch("promote_model_job", config={"ops": {"promote_version": {"config": {"version": 1, "reason": "before the disaster"}}}})
    assert stack.wait_for_run(rollback)["status"] == "SUCCESS"
    moves = stack.sql("quadra", "select count(*) from model_alias_events")
    backups = [line.split()[0] for line in stack.backup_tool("list").stdout.splitlines() if line.strip()]
    probe = CommitProbe(stack).start()
    time.sleep(8)
    docker("kill", stack.container("postgres")["Id"])  # the host's disk goes: no shutdown, no flush
    lost_at = time.time()
    probe.stop()
    last_commit = probe.committed[-1]
    # Destroyed: the server, its volume, the local backups.
    stack.compose("stop", timeout=300)
    stack.compose("rm", "-fsv", "postgres")
    docker("volume", "rm", "-f", "quadra-pgdata")
    for container in docker("ps", "-aq", "--filter", "volume=quadra-backups").stdout.split():
        docker("rm", "-f", container)
    docker("volume", "rm", "-f", "quadra-backups")
    started = time.perf_counter()
    stack.make("deploy-restore")
    pulled = stack.backup_tool("offsite", "pull", check=False)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    # The registry as it was at the loss (before the run below registers and promotes a version).
    status, answer = stack.mlflow("/api/2.0/mlflow/registered-models/get?name=quadra-matrix")
    assert status == 200 and {a["alias"]: a["version"] for a in answer["registered_model"]["aliases"]}["champion"] == "1"
    after = stack.launch("training_job", config=RECOVERY)
    assert stack.wait_for_run(after)["status"] == "SUCCESS", stack.run_messages(after)[-20:]
    rto = time.perf_counter() - started
    # What came back.
    newest = float(stack.sql("quadra", "select coalesce(max(t), 0) from rpo_probe"))
    rpo = last_commit - newest
    PHASES.append(("disaster: RPO", rpo, f"seconds of committed data lost (the last commit returned {lost_at - last_commit:.1f} s before the kill)"))
    PHASES.append(("disaster: RTO", rto, "make deploy-restore + the off-site pull -> a training run succeeded"))
    assert rpo <= 5, f"lost {rpo:.1f} s of committed data"
    assert int(stack.sql("quadra", "select count(*) from training_metrics")) >= int(metrics)
    assert int(stack.sql("quadra", "select count(*) from model_alias_events")) >= int(moves)
    for job, run_id in runs.items():
        assert stack.run(run_id)["status"] == "SUCCESS", job  # Dagster's run history
    assert stack.run(rollback)["status"] == "SUCCESS"
    after_ids = [line.split()[0] for line in stack.backup_tool("list").stdout.splitlines() if line.strip()]
    assert set(backups) <= set(after_ids), (backups, after_ids)  # every backup, from the off-site copy (the hourly
    # schedule may have added the hour's own since)
    assert stack.backup_tool("verify", check=False).returncode == 0
