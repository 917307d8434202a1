"""QUADRA_RUN_EXECUTOR=celery: each step a Celery task, on whichever worker host takes it.

This is Dagster's own `dagster-celery` executor and task (lock-step with Dagster: 0.29.27 for
1.13.27), with the settings that make a lost worker safe and the broker ours:

- The broker and result backend come from the settings (`QUADRA_CELERY_BROKER_URL[_FILE]`,
  `QUADRA_CELERY_BACKEND_URL[_FILE]`), read when the run starts: a password in a broker URL is
  never in a run's config, the job's definition or the UI.
- Late acknowledgement and rejection on a lost worker (`task_acks_late`,
  `task_reject_on_worker_lost`, one task prefetched at a time): a worker killed mid-step (a
  SIGKILL, a lost host) never acknowledged its task, so the broker hands it to another worker.
  With RabbitMQ that happens as soon as the dead worker's connection closes; Redis redelivers
  only after its visibility timeout (an hour by default), which is why the stack runs RabbitMQ.
- Bounded broker calls: an unreachable broker fails the run within seconds (a few connection
  attempts), never a run that waits for ever.
- Two queues: `dagster` (every step) and `sweeps` (a sweep's trials, `trials.SWEEP_QUEUE`), so
  trials can go to workers of their own; `quadra worker` consumes both by default.

Concurrency pools are claimed by the run's orchestrating process before a step is sent (Dagster
1.13.27's Celery loop passes its concurrency context), and `training_job` stays one at a time by
its run tag (dagster.yaml), whichever executor runs its steps.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from ...settings import SettingsError, load_settings

#: The queues of this project's steps: every step, and a sweep's trials.
QUEUES = ("dagster", "sweeps")
#: Seconds to connect to the broker, and attempts, before a run (or a worker) gives up.
BROKER_TIMEOUT = 5.0
BROKER_ATTEMPTS = 3


def celery_config() -> dict[str, Any]:
    """Celery settings shared by the executor (the run) and every worker."""
    return {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_connection_timeout": BROKER_TIMEOUT,
        "broker_connection_max_retries": BROKER_ATTEMPTS,
        "broker_transport_options": {"max_retries": BROKER_ATTEMPTS, "interval_start": 0, "interval_step": 1,
                                     "interval_max": 2},
        "result_backend_transport_options": {"max_retries": BROKER_ATTEMPTS},
        "broker_channel_error_retry": False,
        "worker_send_task_events": False,
        "worker_hijack_root_logger": False,
        # A step's output stays on the worker's real stdout and stderr, where Dagster's compute
        # log manager captures it into the step's log files (the UI's stdout/stderr). Celery's
        # default swaps sys.stdout/sys.stderr for a logging proxy without a file descriptor, which
        # Dagster cannot capture: the files stayed empty.
        "worker_redirect_stdouts": False,
    }


def broker_urls() -> tuple[str, str]:
    """(broker, result backend) from the settings; one clear line when the broker is missing."""
    settings = load_settings()
    if not settings.celery_broker_url:
        raise SettingsError(
            "QUADRA_RUN_EXECUTOR=celery needs a broker: set QUADRA_CELERY_BROKER_URL (or QUADRA_CELERY_BROKER_URL_FILE), "
            "e.g. amqp://user@host:5672// or redis://host:6379/0"
        )
    return settings.celery_broker_url, settings.celery_backend_url or "rpc://"


def _executor_config_schema():
    from dagster._core.execution.retries import get_retries_config

    return {"retries": get_retries_config()}


def quadra_celery_executor() -> dg.ExecutorDefinition:
    try:
        from dagster_celery.executor import CeleryExecutor
    except ImportError as exc:
        raise SettingsError(
            "QUADRA_RUN_EXECUTOR=celery needs dagster-celery: pip install 'quadra-pipeline[deploy]'"
        ) from exc
    from dagster._core.execution.retries import RetryMode

    @dg.executor(name="celery", config_schema=_executor_config_schema(),
                 requirements=dg.multiple_process_executor_requirements())
    def celery(init_context: dg.InitExecutorContext):
        """Dagster's Celery executor, its broker from the settings (read when the run starts);
        a job tagged `quadra/steps-in-run-process` (the backup, bound to its host's volumes)
        runs its steps in its run's process instead."""
        from ..common import STEPS_IN_RUN_PROCESS_TAG
        from .executor import QuadraInProcessExecutor

        retries = RetryMode.from_config(init_context.executor_config["retries"])
        if init_context.job.get_definition().tags.get(STEPS_IN_RUN_PROCESS_TAG) == "true":
            return QuadraInProcessExecutor(retries=retries, marker_to_close=None)
        broker, backend = broker_urls()
        return CeleryExecutor(
            broker=broker,
            backend=backend,
            config_source=celery_config(),
            include=[],
            retries=retries,
        )

    return celery


def worker_app():
    """The Celery app a worker runs: dagster-celery's (as its own `dagster-celery worker`
    makes it), with its step task and the settings above: the same app the executor talks to."""
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_task

    broker, backend = broker_urls()
    app = make_app(CeleryExecutor.for_cli(broker=broker, backend=backend, include=[], config_source=celery_config()).app_args())
    create_task(app)
    return app
