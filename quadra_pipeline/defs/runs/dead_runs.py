"""Runs whose worker process died (SIGKILL, OOM kill, a lost machine): fail them, free their slots.

Dagster's run monitoring fails a dead run only when the run launcher can check its worker
(`DockerRunLauncher`, `K8sRunLauncher`: a container or pod that exited). The default launcher
(`dagster dev`, a daemon on one host) cannot, and a run executed by `dagster job execute` or
`dagster asset materialize` has no launcher at all: killed, such a run stays STARTED for ever,
keeps its slot in the `training` or `backup` pool (one slot each), and every later run of that
pool waits for it.

So every run records its worker as a run tag when execution starts (`record_worker`): the host
name, the kernel's boot id, the pid namespace (the inode of /proc/self/ns/pid), the pid and the
process's start time (so a reused pid or a reboot does not look alive). `fail_dead_runs` fails
every in-progress run whose recorded worker is in this pid namespace on this host and gone, and
frees its concurrency slots (its steps ran in that process: the in-process executor records
the tag). It runs when a run starts, while a run waits for a slot (`executor.py`) and from the
daemon (`sensors.py`), so the next run proceeds within the sensor's interval even when no one is
waiting. A worker on another host, or in another pid namespace (another container, even one with
the same host name, where pid 7 is another process), is never judged from here: that is the run
launcher's job (Dagster's run monitoring of containers and pods).

The slots of runs that ended otherwise (failed by the code server, by run monitoring, by hand)
are freed once they ended longer ago than the instance's grace period,
`free_slots_after_run_end_seconds` (dagster.yaml: 30 s; `DEFAULT_GRACE_SECONDS` when unset), as
the daemon does: a step of such a run may still be stopping (a Celery worker's step notices its
run failed within 5 s: `StopWhenRunEnds`), and its slot must not go to the next run before.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.events import JobFailureData, RunFailureReason
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

WORKER_TAG = "quadra/worker"  # host|boot id|pid namespace|pid|process start time
#: The host's own pid namespace (the kernel's PROC_PID_INIT_INO): not a container's.
INIT_PID_NAMESPACE = str(0xEFFFFFFC)
#: Grace period before the slots of an ended run are freed, when the instance sets none.
DEFAULT_GRACE_SECONDS = 60
_now = time.time  # (tests move the clock)

log = logging.getLogger(__name__)

#: The statuses of a run that some process should be executing.
_LIVE_STATUSES = [DagsterRunStatus.STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.CANCELING]


@dataclass(frozen=True)
class Worker:
    host: str
    boot_id: str
    pidns: str | None  # the inode of /proc/<pid>/ns/pid; None in a tag written before it was recorded
    pid: int
    started: str  # /proc/<pid>/stat field 22: start time in clock ticks after boot

    def tag(self) -> str:
        return f"{self.host}|{self.boot_id}|{self.pidns or 'unknown'}|{self.pid}|{self.started}"

    @classmethod
    def parse(cls, text: str) -> Worker | None:
        parts = text.split("|")
        if len(parts) == 4 and parts[2].isdigit():  # host|boot|pid|started (no namespace)
            return cls(parts[0], parts[1], None, int(parts[2]), parts[3])
        if len(parts) != 5 or not parts[3].isdigit():
            return None
        return cls(parts[0], parts[1], parts[2], int(parts[3]), parts[4])


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _start_time(pid: int) -> str | None:
    """The process's start time (None if there is no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return "unknown"
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else "unknown"


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "unknown"


def this_worker() -> Worker:
    pid = os.getpid()
    return Worker(socket.gethostname(), _boot_id(), _pid_namespace(), pid, _start_time(pid) or "unknown")


def is_gone(worker: Worker) -> bool | None:
    """True if the worker's process no longer exists, False if it does, None if this process
    cannot tell: another host, another pid namespace (another container, whatever its host name),
    a tag without the namespace."""
    if worker.host != socket.gethostname():
        return None
    ours = _pid_namespace()
    if worker.pidns is None or "unknown" in (worker.pidns, ours) or worker.pidns != ours:
        return None
    if worker.boot_id != _boot_id():
        # The host rebooted since; a container's namespace number may be another machine's.
        return True if worker.pidns == INIT_PID_NAMESPACE else None
    started = _start_time(worker.pid)
    if started is None:
        return True
    if "unknown" in (started, worker.started):
        return False  # cannot tell a reused pid from the same process: assume it lives
    return started != worker.started  # the pid now belongs to another process


def record_worker(instance: dg.DagsterInstance, run_id: str) -> None:
    """Tag the run with this process as its worker."""
    instance.add_run_tags(run_id, {WORKER_TAG: this_worker().tag()})


def fail_dead_runs(
    instance: dg.DagsterInstance, say: Callable[[str], None] = log.info, *, skip: str | None = None
) -> list[str]:
    """Fail every in-progress run whose recorded worker on this host is gone, and free its
    slots; free the slots still held by runs that already ended (failed by the code server,
    by run monitoring or by hand). Returns the ids of the runs it failed."""
    _free_slots_of_ended_runs(instance, say)
    failed = []
    for record in instance.get_run_records(filters=RunsFilter(statuses=_LIVE_STATUSES)):
        run = record.dagster_run
        worker = Worker.parse(run.tags.get(WORKER_TAG, ""))
        if run.run_id == skip or worker is None or not is_gone(worker):
            continue
        message = (
            f"the run's process (pid {worker.pid} on {worker.host}) is gone (killed, or out of memory); "
            "marked failed and its pool slots freed"
        )
        instance.report_run_failed(
            run, message, JobFailureData(error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION)
        )
        if instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        say(f"run {run.run_id} ({run.job_name}): {message}")
        failed.append(run.run_id)
    return failed


def grace_seconds(instance: dg.DagsterInstance) -> float:
    """The instance's `free_slots_after_run_end_seconds` (`DEFAULT_GRACE_SECONDS` when unset)."""
    value = (instance.run_monitoring_settings or {}).get("free_slots_after_run_end_seconds")
    return float(value) if value else float(DEFAULT_GRACE_SECONDS)


def _free_slots_of_ended_runs(instance: dg.DagsterInstance, say: Callable[[str], None]) -> None:
    """Free the slots of runs that ended longer ago than the grace period. The daemon does this
    too (`free_slots_after_run_end_seconds`), but not when no daemon runs."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return
    holders = storage.get_concurrency_run_ids()
    if not holders:
        return
    grace, now = grace_seconds(instance), _now()
    for record in instance.get_run_records(filters=RunsFilter(run_ids=list(holders))):
        if not record.dagster_run.is_finished:
            continue
        ended = record.end_time if record.end_time is not None else record.update_timestamp.timestamp()
        if ended + grace >= now:
            continue  # a step of it may still be stopping
        storage.free_concurrency_slots_for_run(record.dagster_run.run_id)
        say(f"freed the pool slots still held by run {record.dagster_run.run_id}, which ended "
            f"({record.dagster_run.status.value}) {now - ended:.0f} s ago (grace period {grace:g} s)")


class StopWhenRunEnds:
    """A training callback that stops a step whose run was canceled or failed elsewhere.

    A step in the run's own process is stopped by a signal when its run is terminated; a step
    running on a Celery worker is not (Dagster's Celery executor only revokes tasks not yet
    started), and it would train on for the rest of its batches, holding the worker. So the
    step asks the instance, at most every `every` seconds, whether its run is still going."""

    def __init__(self, context: dg.OpExecutionContext, every: float = 5.0) -> None:
        self.context = context
        self.every = every
        self._next = time.monotonic() + every

    def __call__(self, metrics: Any, rows_consumed: int) -> None:
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.every
        run = self.context.instance.get_run_by_id(self.context.run_id)
        if run is not None and run.status in (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED,
                                              dg.DagsterRunStatus.FAILURE):
            raise dg.Failure(f"run {self.context.run_id} is {run.status.value.lower()}: stopping this step after "
                             f"batch {getattr(metrics, 'batch_number', '?')}")
