"""A crashed run never wedges the pipeline, and loses none of its metrics: real `dagster`
processes, killed with SIGKILL; a real Dagster instance, database and MLflow store."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from quadra_pipeline.defs.runs import dead_runs
from quadra_pipeline.defs.runs.dead_runs import WORKER_TAG, Worker, _boot_id, _pid_namespace, _start_time, fail_dead_runs
from quadra_pipeline.defs.runs.sensors import dead_run_sensor
from quadra_pipeline_tests.defs.crash import (
    GATE_OPEN,
    batches_in_sql,
    cpu_seconds,
    kill_group,
    last_batch_logged,
    mlflow_status,
    mlflow_steps,
    run_yaml,
    runs_of,
    sql,
    start,
    the_run,
    training_run,
    wait_for_line,
)
from quadra_pipeline_tests.defs.test_dagster_cli import SMALL_RUN, Background, environment, run

pytestmark = pytest.mark.slow
EXECUTE = ["dagster", "job", "execute", "-m", "quadra_pipeline.definitions", "-j", "training_job"]


def trained_batches(env) -> int:
    if not (Path(env["QUADRA_HOME"]) / "quadra.db").exists():
        return 0
    return sql(env, "select count(*) as n from training_metrics")[0]["n"]


def hold_the_training_slot(instance: dg.DagsterInstance, worker: subprocess.Popen) -> str:
    """A STARTED training run, worked by `worker`, holding the `training` pool's one slot."""
    run_id = str(uuid.uuid4())
    tag = Worker(socket.gethostname(), _boot_id(), _pid_namespace(), worker.pid, _start_time(worker.pid)).tag()
    instance.add_run(dg.DagsterRun(job_name="training_job", run_id=run_id, status=dg.DagsterRunStatus.STARTED,
                                   tags={WORKER_TAG: tag, "quadra/training": "true"}))
    instance.event_log_storage.set_concurrency_slots("training", 1)
    assert instance.event_log_storage.claim_concurrency_slot("training", run_id, "train_model").is_claimed
    return run_id


def test_a_run_waiting_for_the_pool_sleeps_stops_on_sigterm_and_proceeds_when_the_holder_dies(tmp_path):
    """Dagster's own in-process executor busy-waits for a pool slot and ignores Ctrl-C and
    SIGTERM while it waits (see defs/runs/executor.py); ours sleeps, stops, and, once the run
    holding the slot has died, fails that run and takes the slot."""
    env = environment(tmp_path)
    (tmp_path / "small.yaml").write_text(SMALL_RUN)
    holder = subprocess.Popen(["sleep", "600"])  # a live process working the holding run
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        holding_run = hold_the_training_slot(instance, holder)
    try:
        log = tmp_path / "waiting.log"
        waiting = start([*EXECUTE, "-c", str(tmp_path / "small.yaml")], env, log)
        wait_for_line(log, r"blocked by limit for pool training", waiting)
        before, started = cpu_seconds(waiting.pid), time.monotonic()
        time.sleep(10)
        busy = (cpu_seconds(waiting.pid) - before) / (time.monotonic() - started)
        assert busy < 0.2, f"the waiting run used {busy:.0%} of a core"  # Dagster's own: ~100%

        sent = time.monotonic()
        waiting.send_signal(signal.SIGTERM)
        waiting.wait(timeout=20)
        stopped_after = time.monotonic() - sent
        assert waiting.returncode != 0 and stopped_after < 10
        [waited] = [r for r in runs_of(env) if r.run_id != holding_run]
        assert waited.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)

        # The holder dies: a run waiting for the slot fails it and proceeds (within REAP_SECONDS).
        log = tmp_path / "next.log"
        proceeding = start([*EXECUTE, "-c", str(tmp_path / "small.yaml")], env, log)
        wait_for_line(log, r"blocked by limit for pool training", proceeding)
        holder.kill()
        holder.wait()
        killed = time.monotonic()
        assert proceeding.wait(timeout=180) == 0, log.read_text()[-3000:]
        print(f"\nwaiting run stopped {stopped_after:.1f} s after SIGTERM; used {busy:.1%} of a core while waiting; "
              f"the next run finished {time.monotonic() - killed:.1f} s after the slot's holder died")
    finally:
        holder.kill()
    held = the_run(env, holding_run)
    assert held.status == dg.DagsterRunStatus.FAILURE
    assert [r.status for r in runs_of(env) if r.run_id not in (holding_run, waited.run_id)] == [dg.DagsterRunStatus.SUCCESS]


def test_the_sensor_fails_a_dead_run_and_frees_any_pool(tmp_path):
    """The daemon's side, evaluated on a real instance: a backup run whose process died holds
    the backup pool; the sensor fails it and frees the slot (a live one stays untouched)."""
    env = environment(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "600"])
    try:
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            instance.event_log_storage.set_concurrency_slots("backup", 2)
            ids = {}
            for name, process in (("dead", dead), ("alive", alive)):
                ids[name] = str(uuid.uuid4())
                started = _start_time(process.pid) or "gone"
                tag = Worker(socket.gethostname(), _boot_id(), _pid_namespace(), process.pid, started).tag()
                instance.add_run(dg.DagsterRun(job_name="backup_job", run_id=ids[name], status=dg.DagsterRunStatus.STARTED,
                                               tags={WORKER_TAG: tag}))
                assert instance.event_log_storage.claim_concurrency_slot("backup", ids[name], "backup").is_claimed
            # A run that already ended (marked failed by hand, say) but still holds a slot:
            ids["ended"] = str(uuid.uuid4())
            instance.add_run(dg.DagsterRun(job_name="backup_job", run_id=ids["ended"], status=dg.DagsterRunStatus.FAILURE))
            instance.event_log_storage.set_concurrency_slots("backup", 3)
            assert instance.event_log_storage.claim_concurrency_slot("backup", ids["ended"], "backup").is_claimed
            result = dead_run_sensor(dg.build_sensor_context(instance=instance))
            assert "failed 1 dead run(s)" in result.skip_message
            assert instance.get_run_by_id(ids["dead"]).status == dg.DagsterRunStatus.FAILURE
            assert instance.get_run_by_id(ids["alive"]).status == dg.DagsterRunStatus.STARTED

            def holders() -> set[str]:
                return {slot.run_id for slot in instance.event_log_storage.get_concurrency_info("backup").claimed_slots}

            # The dead run's slot is free (its steps died with its process); the ended run's waits
            # out the instance's grace period (a step of it may still be stopping), then goes.
            assert holders() == {ids["alive"], ids["ended"]}
            later = time.time() + dead_runs.grace_seconds(instance) + 1
            original, dead_runs._now = dead_runs._now, lambda: later
            try:
                assert fail_dead_runs(instance) == []  # nothing left to fail
            finally:
                dead_runs._now = original
            assert holders() == {ids["alive"]}
    finally:
        alive.kill()


def test_a_run_killed_under_the_daemon_is_failed_retried_from_its_checkpoint_and_the_queue_moves(tmp_path):
    """`dagster job launch` + a running daemon: the run's worker (a child of the code server) is
    killed; it is marked failed (by the code server, which sees its child die, or else by
    dead_run_sensor), its slot freed, the daemon's run retry resumes it from its last checkpoint
    (on the killed run's own corpus, not the one the queued run made meanwhile), and the run
    queued behind it (tag limit quadra/training: 1) runs too. Nobody touches the UI."""
    env = environment(tmp_path)
    launch = ["dagster", "job", "launch", "-j", "training_job", "-w", "workspace.yaml"]
    long_run = run_yaml(tmp_path / "long.yaml", 400)
    long_run.write_text(long_run.read_text() + GATE_OPEN)
    run([*launch, "--config", str(long_run)], env)
    daemon = Background(["dagster-daemon", "run", "-w", "workspace.yaml"], env, tmp_path / "daemon.log")
    try:
        deadline = time.monotonic() + 240
        while True:  # until the run has trained past its first checkpoint (batch 10)
            [first] = runs_of(env)
            worker = Worker.parse(first.tags.get(WORKER_TAG, ""))
            if worker is not None and first.status == dg.DagsterRunStatus.STARTED and trained_batches(env) >= 15:
                break
            assert time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()[-3000:]
            time.sleep(0.5)
        (tmp_path / "small.yaml").write_text(SMALL_RUN + GATE_OPEN)
        run([*launch, "--config", str(tmp_path / "small.yaml")], env)  # queued behind the training run
        subprocess.run(["kill", "-9", str(worker.pid)], check=True)  # the OOM kill
        killed = time.monotonic()
        deadline = killed + 420
        finished = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
        while True:
            states = runs_of(env)
            if len(states) == 3 and all(r.status in finished for r in states):
                break
            assert time.monotonic() < deadline, (states, (tmp_path / "daemon.log").read_text()[-3000:])
            time.sleep(1)
        recovered = time.monotonic() - killed
    finally:
        daemon.stop()
    by_id = {r.run_id: r for r in states}
    assert by_id[first.run_id].status == dg.DagsterRunStatus.FAILURE
    [retry] = [r for r in states if r.parent_run_id == first.run_id]
    [queued] = [r for r in states if r.run_id not in (first.run_id, retry.run_id)]
    assert retry.status == queued.status == dg.DagsterRunStatus.SUCCESS
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        event = next(
            e for e in instance.get_records_for_run(retry.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
            if e.event_log_entry.asset_materialization.asset_key == dg.AssetKey("quadra_model")
        )
        resumed_at = event.event_log_entry.asset_materialization.metadata["resumed_from_batch"].value
    assert resumed_at >= 10  # the retry resumed from the killed run's last checkpoint
    # Both the killed run and its retry hold their batches once each, in SQL and in MLflow.
    dead_run, retried = training_run(env, first.run_id), training_run(env, retry.run_id)
    assert dead_run["status"] == "failed"
    finished_batches = batches_in_sql(env, dead_run["id"])
    assert finished_batches == list(range(1, len(finished_batches) + 1)) and len(finished_batches) >= 15
    assert mlflow_steps(env, dead_run["mlflow_run_id"]) == finished_batches
    assert mlflow_status(env, dead_run["mlflow_run_id"]) == "FAILED"
    assert batches_in_sql(env, retried["id"]) == mlflow_steps(env, retried["mlflow_run_id"]) == list(range(1, 401))
    print(f"\nkilled run failed, retried from batch {resumed_at} and the queue drained {recovered:.0f} s after the kill")
