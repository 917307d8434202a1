"""The in-process executor every job uses, with two fixes for steps waiting on a pool.

Dagster 1.13's in-process executor waits for a pool slot (the `training` and `backup` pools
have one slot each) in a loop that never sleeps: `InstanceConcurrencyContext.
interval_to_next_pending_claim_check` returns `min([0, ...])`, which is never positive (see
dagster-io/dagster#20367, closed unmerged), so a blocked `dagster job execute` burns a whole
core. And the loop never looks at the interrupt Dagster captured, so neither Ctrl-C nor
SIGTERM stops it. This executor is Dagster's, with a concurrency context that

- sleeps between polls (at most `POLL_SECONDS`, so a signal is seen promptly; the database
  is still only asked as often as Dagster's own back-off says),
- stops on SIGINT/SIGTERM while waiting (`DagsterExecutionInterruptedError`: the run ends
  failed, its pending claims are released), and
- while it waits, every `REAP_SECONDS`, fails runs whose worker process is gone and frees
  their slots (`dead_runs.py`), so a crashed run never holds the pool for ever.

Before any step it records this process as the run's worker (`dead_runs.record_worker`) and
reaps once, so a run that starts after a crash does not even wait.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import dagster as dg
from dagster._core.definitions.executor_definition import IN_PROC_CONFIG, _core_in_process_executor_creation
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._core.events import DagsterEvent, EngineEventData
from dagster._core.execution.api import ExecuteRunWithPlanIterable
from dagster._core.execution.context.system import PlanExecutionContext, PlanOrchestrationContext
from dagster._core.execution.context_creation_job import PlanExecutionContextManager
from dagster._core.execution.plan.execute_plan import inner_plan_execution_iterator
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.executor.in_process import InProcessExecutor
from dagster._utils.interrupts import check_captured_interrupt

from . import dead_runs

#: Longest sleep between two looks at a pending pool claim (and at a captured signal).
POLL_SECONDS = 1.0
#: How often a waiting run looks for dead runs holding slots.
REAP_SECONDS = 15.0


class WaitingConcurrencyContext(InstanceConcurrencyContext):
    """Dagster's concurrency context, but the wait sleeps, hears signals and reaps dead runs."""

    def __init__(self, instance: dg.DagsterInstance, dagster_run: dg.DagsterRun, log) -> None:
        super().__init__(instance, dagster_run)
        self._log = log
        self._next_reap = time.monotonic() + REAP_SECONDS

    def claim(self, concurrency_key: str, step_key: str, step_priority: int = 0) -> bool:
        if step_key in self.pending_claim_steps():
            if check_captured_interrupt():
                raise DagsterExecutionInterruptedError(
                    f"interrupted while step {step_key} waited for a slot in pool {concurrency_key}"
                )
            if time.monotonic() >= self._next_reap:
                self._next_reap = time.monotonic() + REAP_SECONDS
                dead_runs.fail_dead_runs(self._instance, self._log)
        return super().claim(concurrency_key, step_key, step_priority)

    def interval_to_next_pending_claim_check(self) -> float:
        if not self.has_pending_claims():
            return 0.0
        due = min(self._pending_timeouts.values(), default=time.time()) - time.time()
        return min(POLL_SECONDS, max(0.05, due))


def _iterator(job_context: PlanExecutionContext, execution_plan: ExecutionPlan) -> Iterator[DagsterEvent]:
    log = job_context.log.info
    with WaitingConcurrencyContext(job_context.instance, job_context.dagster_run, log) as concurrency:
        yield from inner_plan_execution_iterator(job_context, execution_plan, concurrency)


class QuadraInProcessExecutor(InProcessExecutor):
    """`InProcessExecutor.execute`, with `WaitingConcurrencyContext` and the worker record."""

    def execute(self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan) -> Iterator[DagsterEvent]:
        instance, run = plan_context.instance, plan_context.dagster_run
        dead_runs.record_worker(instance, run.run_id)
        dead_runs.fail_dead_runs(instance, plan_context.log.info, skip=run.run_id)
        step_keys = execution_plan.step_keys_to_execute
        yield DagsterEvent.engine_event(
            plan_context,
            f"Executing steps in process (pid: {os.getpid()})",
            event_specific_data=EngineEventData.in_process(os.getpid(), step_keys),
        )
        yield from iter(
            ExecuteRunWithPlanIterable(
                execution_plan=plan_context.execution_plan,
                iterator=_iterator,
                execution_context_manager=PlanExecutionContextManager(
                    job=plan_context.job,
                    retry_mode=plan_context.retry_mode,
                    execution_plan=plan_context.execution_plan,
                    run_config=plan_context.run_config,
                    dagster_run=run,
                    instance=instance,
                    raise_on_error=plan_context.raise_on_error,
                    output_capture=plan_context.output_capture,
                    step_dependency_config=self.step_dependency_config,
                ),
            )
        )
        yield DagsterEvent.engine_event(
            plan_context,
            f"Finished steps in process (pid: {os.getpid()})",
            event_specific_data=EngineEventData.in_process(os.getpid(), step_keys),
        )


@dg.executor(name="in_process", config_schema=IN_PROC_CONFIG)
def quadra_in_process_executor(init_context: dg.InitExecutorContext) -> QuadraInProcessExecutor:
    """Dagster's in-process executor (same config) whose pool waits sleep, stop on a signal
    and free the slots of dead runs."""
    base = _core_in_process_executor_creation(init_context.executor_config)
    return QuadraInProcessExecutor(
        retries=base.retries, step_dependency_config=base.step_dependency_config, marker_to_close=base.marker_to_close
    )
