"""Failed runs reach a person without the Prometheus stack: Dagster's own run-failure sensor.

Every run of this code location that fails (any job, the UI's "Materialize" included) is sent
as JSON to `QUADRA_ALERT_WEBHOOK_URL[_FILE]` and/or as an e-mail through `QUADRA_ALERT_SMTP_*`,
or as the alert QuadraRunFailed to the Alertmanager at `QUADRA_ALERTMANAGER_URL`, which delivers
it to its receivers (the Compose stack: the receivers' secrets stay with Alertmanager)
(`quadra_pipeline/monitoring/notify.py`): the job, the run id, the failure and each failed step
with its error, and a link when `QUADRA_DAGSTER_UI_URL` is set. It runs as soon as the daemon
runs (`make dev` too). With no receiver configured, each failed run is a skipped tick whose
reason says so (the sensor's page in the UI). A receiver that does not answer costs at most two
bounded attempts, then is left alone for a minute; a delivery that failed is in the tick's log
and fails the tick (the run's failure is never delivered twice, and the sensor goes on).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import dagster as dg

ALERT_INTERVAL_SECONDS = 30


def run_failure_alert(context: dg.RunFailureSensorContext, ui_url: str | None = None) -> Any:
    """The alert for the run `context` holds (monitoring.notify.Alert)."""
    from ...monitoring.notify import Alert

    run = context.dagster_run
    failure = context.failure_event.message or "the run failed"
    steps = []
    for event in context.get_step_failure_events():
        error = getattr(event.event_specific_data, "error", None)
        while error is not None and error.cause is not None:  # the step's own error, not Dagster's wrapper
            error = error.cause
        steps.append({
            "step": event.step_key,
            "error": (error.message.strip() if error is not None and error.message else event.message or "failed"),
            "error_class": getattr(error, "cls_name", None),
        })
    record = context.instance.get_run_record_by_id(run.run_id)
    started = _iso(getattr(record, "start_time", None))
    ended = _iso(getattr(record, "end_time", None))
    partition = run.tags.get("dagster/partition")
    run_url = f"{ui_url.rstrip('/')}/runs/{run.run_id}" if ui_url else None
    where = f" (partition {partition})" if partition else ""
    step_text = "; ".join(f"{s['step']}: {_first_line(s['error'])}" for s in steps) or "no step failed (the run itself did)"
    subject = f"[quadra] {run.job_name} failed: run {run.run_id[:8]}{where}"
    text = "\n".join(line for line in (
        f"Dagster run {run.run_id} of job {run.job_name}{where} failed.",
        f"Started {started or '?'}, ended {ended or '?'}." if started or ended else "",
        "",
        f"Failure: {failure}",
        "",
        "Failed steps:" if steps else "No step failed: the run itself did (see its event log).",
        *(f"- {s['step']}: {s['error']}" for s in steps),
        "",
        f"Run: {run_url}" if run_url else "Run: open it in the Dagster UI (Runs, then its id).",
    ) if line is not None)
    payload = {
        "text": f"{subject}: {step_text}",
        "source": "dagster",
        "kind": "run_failure",
        "job": run.job_name,
        "run_id": run.run_id,
        "status": run.status.value,
        "partition": partition,
        "failure": failure,
        "steps": steps,
        "started_at": started,
        "ended_at": ended,
        "run_url": run_url,
    }
    labels = {"source": "dagster", "dagster_job": run.job_name, "run_id": run.run_id}
    if partition:
        labels["partition"] = partition
    return Alert(subject=subject, text=text, payload=payload, name="QuadraRunFailed", labels=labels, url=run_url)


@dg.run_failure_sensor(
    name="run_failure_alert_sensor",
    minimum_interval_seconds=ALERT_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Each failed run of this code location, to QUADRA_ALERT_WEBHOOK_URL (JSON) and/or by e-mail "
    "(QUADRA_ALERT_SMTP_*) and/or to the Alertmanager at QUADRA_ALERTMANAGER_URL: job, run id, failure, failed "
    "steps. Skips, saying so, when none is configured.",
)
def run_failure_alert_sensor(context: dg.RunFailureSensorContext):
    from ...monitoring.notify import AlertDeliveryError, receivers_configured, send_alert
    from ...settings import load_settings

    settings = load_settings()
    run = context.dagster_run
    alert = run_failure_alert(context, settings.dagster_ui_url)
    if not receivers_configured(settings):
        message = (f"run {run.run_id} of {run.job_name} failed; no alert receiver is configured "
                   "(QUADRA_ALERT_WEBHOOK_URL[_FILE], QUADRA_ALERT_SMTP_HOST, QUADRA_ALERTMANAGER_URL): nothing sent")
        context.log.warning(message)
        return dg.SkipReason(message)
    delivery = send_alert(alert, settings, log=context.log.warning)
    if delivery.sent:
        context.log.info(f"alert for run {run.run_id} of {run.job_name}: {delivery.summary()}")
        return None  # the next failed run, if any, in this same tick
    raise AlertDeliveryError(f"alert for run {run.run_id} of {run.job_name}: {delivery.summary()}")


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat(timespec="seconds")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= 200 else line[:197] + "..."
