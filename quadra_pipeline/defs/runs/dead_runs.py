"""Runs whose worker process died (SIGKILL, OOM kill, a lost machine): fail them, free their slots.

Dagster's run monitoring fails a dead run only when the run launcher can check its worker
(`DockerRunLauncher`, `K8sRunLauncher`: a container or pod that exited). The default launcher
(`dagster dev`, a daemon on one host) cannot, and a run executed by `dagster job execute` or
`dagster asset materialize` has no launcher at all: killed, such a run stays STARTED for ever,
keeps its slot in the `training` or `backup` pool (one slot each), and every later run of that
pool waits for it.

So every run records its worker as a run tag when execution starts (`record_worker`): the host
name, the kernel's boot id, the pid and the process's start time (so a reused pid or a reboot
does not look alive). `fail_dead_runs` fails every in-progress run whose recorded worker is on
this host and gone, and frees its concurrency slots. It runs when a run starts, while a run
waits for a slot (`executor.py`) and from the daemon (`sensors.py`), so the next run proceeds
within the sensor's interval even when no one is waiting. A worker on another host is never
judged from here (that is the run launcher's job); `free_slots_after_run_end_seconds` in
dagster.yaml frees the slots of runs Dagster's own monitoring failed.
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

WORKER_TAG = "quadra/worker"  # host|boot id|pid|process start time

log = logging.getLogger(__name__)

#: The statuses of a run that some process should be executing.
_LIVE_STATUSES = [DagsterRunStatus.STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.CANCELING]


@dataclass(frozen=True)
class Worker:
    host: str
    boot_id: str
    pid: int
    started: str  # /proc/<pid>/stat field 22: start time in clock ticks after boot

    def tag(self) -> str:
        return f"{self.host}|{self.boot_id}|{self.pid}|{self.started}"

    @classmethod
    def parse(cls, text: str) -> Worker | None:
        parts = text.split("|")
        if len(parts) != 4 or not parts[2].isdigit():
            return None
        return cls(parts[0], parts[1], int(parts[2]), parts[3])


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


def this_worker() -> Worker:
    pid = os.getpid()
    return Worker(socket.gethostname(), _boot_id(), pid, _start_time(pid) or "unknown")


def is_gone(worker: Worker) -> bool | None:
    """True if the worker's process no longer exists, False if it does, None if this host
    cannot tell (another host)."""
    if worker.host != socket.gethostname():
        return None
    if worker.boot_id != _boot_id():
        return True  # the machine rebooted since
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


def _free_slots_of_ended_runs(instance: dg.DagsterInstance, say: Callable[[str], None]) -> None:
    """The daemon does this too (`free_slots_after_run_end_seconds`), but not when no daemon runs."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return
    holders = storage.get_concurrency_run_ids()
    if not holders:
        return
    for record in instance.get_run_records(filters=RunsFilter(run_ids=list(holders))):
        if record.dagster_run.is_finished:
            storage.free_concurrency_slots_for_run(record.dagster_run.run_id)
            say(f"freed the pool slots still held by run {record.dagster_run.run_id}, which ended "
                f"({record.dagster_run.status.value})")


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
