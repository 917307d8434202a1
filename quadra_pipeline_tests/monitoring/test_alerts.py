"""Dagster's run-failure sensor (quadra_pipeline/defs/runs/alerts.py) against loopback receivers:
a real Dagster instance runs a job that fails; the sensor, evaluated as the daemon evaluates it,
posts the job, the run id, the failure and the failed step to the webhook and sends the same by
e-mail; nothing configured is a skip that says so; a receiver that never answers costs a bounded
time and never shows the webhook's token."""

from __future__ import annotations

import time

import dagster as dg
import pytest

from quadra_pipeline.defs.runs.alerts import run_failure_alert_sensor
from quadra_pipeline.monitoring.notify import AlertDeliveryError

from .receivers import silent_receiver, smtp_receiver, webhook_receiver

TOKEN = "s3cr3t-token"
# The loopback SMTP server takes a login without TLS (the tests' plain connection), and says so.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


@dg.op
def load_rows():
    return 3


@dg.op
def train_on(rows: int):
    raise ValueError(f"the corpus has {rows} rows: too few for 20 batches")


@dg.job
def nightly_job():
    train_on(load_rows())


def fail_a_run(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    result = nightly_job.execute_in_process(instance=instance, raise_on_error=False, tags={"dagster/partition": "2026-12-07-03:00"})
    assert not result.success
    return result


def evaluate(instance: dg.DagsterInstance, cursor: str | None) -> tuple[list, str | None, object]:
    """One tick of the sensor as the daemon runs it: (skip reasons / reactions, new cursor, data)."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    data = run_failure_alert_sensor.evaluate_tick(context)
    return data, data.cursor, context


def test_a_failed_run_is_posted_to_the_webhook_naming_job_run_failure_and_step(clean_env, monkeypatch):
    with webhook_receiver() as hook, dg.instance_for_test() as instance:
        monkeypatch.setenv("QUADRA_ALERT_WEBHOOK_URL", hook.url)
        monkeypatch.setenv("QUADRA_DAGSTER_UI_URL", "http://127.0.0.1:3000/")
        first, cursor, _ = evaluate(instance, None)  # the daemon's first tick only sets the cursor
        assert "Initiating" in (first.skip_message or "")
        result = fail_a_run(instance)
        run_id = result.run_id
        tick, cursor, _ = evaluate(instance, cursor)
        assert tick.dagster_run_reactions and tick.dagster_run_reactions[0].error is None
        assert len(hook.received) == 1 and hook.attempts == 1
        payload = hook.received[0]
        assert payload["job"] == "nightly_job" and payload["run_id"] == run_id
        assert payload["status"] == "FAILURE" and payload["partition"] == "2026-12-07-03:00"
        assert "train_on" in payload["failure"]
        [step] = payload["steps"]
        assert step["step"] == "train_on" and "too few for 20 batches" in step["error"]
        assert step["error_class"] == "ValueError"
        assert payload["run_url"] == f"http://127.0.0.1:3000/runs/{run_id}"
        assert "nightly_job" in payload["text"] and run_id[:8] in payload["text"] and "train_on" in payload["text"]
        assert payload["started_at"] and payload["ended_at"]
        # Delivered once: the next tick has nothing new.
        again, _, _ = evaluate(instance, cursor)
        assert len(hook.received) == 1 and not again.dagster_run_reactions


def test_the_same_alert_by_email_through_an_smtp_server_with_a_login(clean_env, monkeypatch, tmp_path):
    with smtp_receiver(user="alerts", password="mail-s3cret") as box, dg.instance_for_test() as instance:
        (tmp_path / "smtp_password").write_text("mail-s3cret\n")
        for name, value in {"QUADRA_ALERT_SMTP_HOST": box.host, "QUADRA_ALERT_SMTP_PORT": str(box.port),
                            "QUADRA_ALERT_SMTP_TLS": "none", "QUADRA_ALERT_SMTP_USER": "alerts",
                            "QUADRA_ALERT_SMTP_PASSWORD_FILE": str(tmp_path / "smtp_password"),
                            "QUADRA_ALERT_SMTP_FROM": "quadra@example.com",
                            "QUADRA_ALERT_SMTP_TO": "oncall@example.com, ops@example.com"}.items():
            monkeypatch.setenv(name, value)
        _, cursor, _ = evaluate(instance, None)
        run_id = fail_a_run(instance).run_id
        tick, _, _ = evaluate(instance, cursor)
        assert tick.dagster_run_reactions[0].error is None
        assert box.logins == [("alerts", True)]
        [message] = box.messages
        assert box.envelopes == [("quadra@example.com", ["oncall@example.com", "ops@example.com"])]
        assert message["Subject"] == f"[quadra] nightly_job failed: run {run_id[:8]} (partition 2026-12-07-03:00)"
        body = message.get_content()
        assert f"Dagster run {run_id} of job nightly_job" in body
        assert "- train_on: ValueError: the corpus has 3 rows: too few for 20 batches" in body


def test_with_no_receiver_configured_the_tick_skips_and_says_so(clean_env):
    with dg.instance_for_test() as instance:
        _, cursor, _ = evaluate(instance, None)
        run_id = fail_a_run(instance).run_id
        tick, _, _ = evaluate(instance, cursor)
        assert run_id in tick.skip_message and "no alert receiver is configured" in tick.skip_message
        assert "QUADRA_ALERT_WEBHOOK_URL" in tick.skip_message


def test_a_webhook_that_never_answers_costs_two_bounded_attempts_and_never_shows_its_token(clean_env, monkeypatch):
    """Timeout 0.5 s, one retry after 1 s: the tick fails (visible) within ~2 s, the cursor moves
    on, and the next failed run within a minute does not wait for the dead webhook again."""
    with silent_receiver() as (url, arrivals), dg.instance_for_test() as instance:
        monkeypatch.setenv("QUADRA_ALERT_WEBHOOK_URL", url)
        monkeypatch.setenv("QUADRA_ALERT_TIMEOUT", "0.5")
        _, cursor, _ = evaluate(instance, None)
        fail_a_run(instance)
        started = time.monotonic()
        tick, cursor, _ = evaluate(instance, cursor)
        took = time.monotonic() - started
        assert took < 4.0, took
        assert len(arrivals) == 2  # the attempt and its one retry
        [reaction] = tick.dagster_run_reactions
        error = reaction.error.to_string()
        assert "NOT sent to webhook http://127.0.0.1:" in error and "timed out" in error
        assert TOKEN not in error and "/hook" not in error
        # The next failure: the webhook failed less than a minute ago, so it is not waited for.
        fail_a_run(instance)
        started = time.monotonic()
        tick, _, _ = evaluate(instance, cursor)
        assert time.monotonic() - started < 1.0 and len(arrivals) == 2
        assert "failed less than 60 s ago" in tick.dagster_run_reactions[0].error.to_string()


def test_a_webhook_answering_an_error_is_tried_twice_and_email_still_goes(clean_env, monkeypatch):
    with webhook_receiver(status=500) as hook, smtp_receiver() as box, dg.instance_for_test() as instance:
        monkeypatch.setenv("QUADRA_ALERT_WEBHOOK_URL", hook.url)
        for name, value in {"QUADRA_ALERT_SMTP_HOST": box.host, "QUADRA_ALERT_SMTP_PORT": str(box.port),
                            "QUADRA_ALERT_SMTP_TLS": "none", "QUADRA_ALERT_SMTP_USER": "alerts",
                            "QUADRA_ALERT_SMTP_PASSWORD": "mail-s3cret", "QUADRA_ALERT_SMTP_FROM": "q@example.com",
                            "QUADRA_ALERT_SMTP_TO": "oncall@example.com"}.items():
            monkeypatch.setenv(name, value)
        _, cursor, _ = evaluate(instance, None)
        fail_a_run(instance)
        tick, _, _ = evaluate(instance, cursor)
        assert hook.attempts == 2 and len(box.messages) == 1
        assert tick.dagster_run_reactions[0].error is None  # delivered by e-mail: the tick succeeds


def test_the_sensor_is_in_the_code_location_and_runs_by_default():
    from quadra_pipeline.definitions import defs as load_defs

    sensor = load_defs().resolve_sensor_def("run_failure_alert_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 30


def test_direct_delivery_error_names_receivers_not_secrets(clean_env, monkeypatch):
    from quadra_pipeline.monitoring.notify import Alert, send_alert
    from quadra_pipeline.settings import load_settings

    monkeypatch.setenv("QUADRA_ALERT_WEBHOOK_URL", f"http://127.0.0.1:9/hook?token={TOKEN}")  # discard port: refused
    monkeypatch.setenv("QUADRA_ALERT_TIMEOUT", "0.5")
    lines: list[str] = []
    delivery = send_alert(Alert("s", "t", {"a": 1}), load_settings(), log=lines.append)
    assert not delivery.sent and list(delivery.failed) == ["webhook http://127.0.0.1:9/..."]
    assert len(lines) == 2 and all(TOKEN not in line for line in lines + [delivery.summary()])
    with pytest.raises(AlertDeliveryError):
        raise AlertDeliveryError(delivery.summary())
