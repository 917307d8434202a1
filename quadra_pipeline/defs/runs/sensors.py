"""The daemon's side of dead-run detection: a sensor that fails runs whose process died.

Needed even though a starting or waiting run reaps dead runs itself (`executor.py`): a dead
run tagged `quadra/training` or `quadra/backup` holds the run queue's tag limit, so the next
queued run of its kind is never even started until something fails the dead one.
"""

import dagster as dg

from .dead_runs import fail_dead_runs

DEAD_RUN_INTERVAL_SECONDS = 30


@dg.sensor(
    name="dead_run_sensor",
    minimum_interval_seconds=DEAD_RUN_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every 30 s: fail runs whose worker process on this host is gone (SIGKILL, OOM) and free their pool slots.",
)
def dead_run_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    failed = fail_dead_runs(context.instance, context.log.info)
    return dg.SkipReason(f"failed {len(failed)} dead run(s): {', '.join(failed)}" if failed else "no dead runs")
