"""Dead-run detection tells containers apart, and the slots of ended runs wait out the instance's
grace period (`free_slots_after_run_end_seconds`) before they are freed."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid

import dagster as dg
import pytest

from quadra_pipeline.defs.runs import dead_runs
from quadra_pipeline.defs.runs.dead_runs import INIT_PID_NAMESPACE, WORKER_TAG, Worker, fail_dead_runs, is_gone, this_worker


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_the_worker_tag_names_the_pid_namespace():
    me = this_worker()
    assert me.pidns == str(os.stat("/proc/self/ns/pid").st_ino)
    assert Worker.parse(me.tag()) == me and len(me.tag().split("|")) == 5
    assert is_gone(me) is False


def test_two_containers_with_the_same_host_name_and_pid_are_not_mistaken(monkeypatch):
    """Another container on this host (its own pid namespace), with the same host name, whose
    run's pid is 7: pid 7 here is gone or someone else, but that says nothing about it."""
    me = this_worker()
    other_namespace = str(int(me.pidns) + 1)
    for pid in (me.pid, dead_pid()):
        assert is_gone(Worker(me.host, me.boot_id, other_namespace, pid, me.started)) is None
    assert is_gone(Worker(me.host, me.boot_id, me.pidns, dead_pid(), "123")) is True  # in this namespace: gone
    # A tag written before namespaces were recorded cannot be told apart: left to Dagster's monitoring.
    old = Worker.parse(f"{me.host}|{me.boot_id}|{dead_pid()}|123")
    assert old is not None and old.pidns is None and is_gone(old) is None
    # Another boot: gone for the host's own processes; a container's may be another machine's
    # (namespace numbers repeat from machine to machine).
    monkeypatch.setattr(dead_runs, "_pid_namespace", lambda: INIT_PID_NAMESPACE)
    assert is_gone(Worker(me.host, "another-boot", INIT_PID_NAMESPACE, me.pid, me.started)) is True
    monkeypatch.setattr(dead_runs, "_pid_namespace", lambda: "4026532999")
    assert is_gone(Worker(me.host, "another-boot", "4026532999", me.pid, me.started)) is None


def test_a_run_of_another_container_is_left_alone(tmp_path):
    with dg.instance_for_test() as instance:
        me = this_worker()
        theirs = Worker(socket.gethostname(), me.boot_id, str(int(me.pidns) + 1), dead_pid(), "42")
        ours = Worker(socket.gethostname(), me.boot_id, me.pidns, dead_pid(), "42")
        ids = {}
        for name, worker in (("theirs", theirs), ("ours", ours)):
            ids[name] = str(uuid.uuid4())
            instance.add_run(dg.DagsterRun(job_name="training_job", run_id=ids[name], status=dg.DagsterRunStatus.STARTED,
                                           tags={WORKER_TAG: worker.tag()}))
        assert fail_dead_runs(instance) == [ids["ours"]]
        assert instance.get_run_by_id(ids["theirs"]).status == dg.DagsterRunStatus.STARTED


@pytest.mark.parametrize("grace", [30, None], ids=["instance-grace-30s", "unset-default"])
def test_the_slots_of_an_ended_run_are_freed_after_the_grace_period(monkeypatch, grace):
    overrides = {"run_monitoring": {"enabled": True, "free_slots_after_run_end_seconds": grace}} if grace else {}
    expected = grace or dead_runs.DEFAULT_GRACE_SECONDS
    with dg.instance_for_test(overrides=overrides) as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots("training", 1)
        run = dg.DagsterRun(job_name="training_job", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED)
        instance.add_run(run)
        assert storage.claim_concurrency_slot("training", run.run_id, "train_model").is_claimed
        instance.report_run_failed(run, "failed elsewhere (run monitoring, by hand)")  # a step may still be stopping
        ended = instance.get_run_records(dg.RunsFilter(run_ids=[run.run_id]))[0].end_time
        assert ended is not None

        def holders() -> set[str]:
            return {slot.run_id for slot in storage.get_concurrency_info("training").claimed_slots}

        monkeypatch.setattr(dead_runs, "_now", lambda: ended + expected - 1)
        assert fail_dead_runs(instance) == [] and holders() == {run.run_id}  # within the grace period: kept
        monkeypatch.setattr(dead_runs, "_now", lambda: ended + expected + 1)
        fail_dead_runs(instance)
        assert holders() == set()
