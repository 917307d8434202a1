"""Monitoring on the running stack (after test_stack.py, before test_stack_faults.py's disaster):
Prometheus scrapes the pipeline's exporter, MLflow's metrics and Alertmanager; a backup with a
flipped chunk byte and a job failing twice reach a person, a webhook this test runs on the
host, through Alertmanager; after a good backup and a good run the alerts resolve. The time
from each fault to its alert at the receiver goes into the phase table."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from quadra_pipeline_tests.monitoring.receivers import webhook_receiver

from .stack import PHASES, Stack, docker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

SCRAPED = ("prometheus", "quadra-exporter", "mlflow", "alertmanager")
#: Flips (or flips back) one byte in the middle of a stored chunk of each share the hourly
#: rotation reads this hour and the next (backup/rotation.py), so the next backup's integrity
#: check re-reads it whatever the hour is when it runs. Prints the chunks it touched.
FLIP = """
import os, sys, time
from quadra_pipeline.backup.rotation import current_hour, slot_of
runs = int(os.environ.get("QUADRA_BACKUP_VERIFY_RUNS", "24"))
if len(sys.argv) > 1:
    chosen = sys.argv[1:]
else:
    hour = current_hour()
    chunks = sorted(os.path.join(d, f) for d, _, fs in os.walk("/backups/chunks") for f in fs if len(f) == 64)
    chosen = []
    for share in {hour % runs, (hour + 1) % runs}:
        chosen += [c for c in chunks if slot_of(os.path.basename(c), runs) == share][:1]
for path in chosen:
    mode = os.stat(path).st_mode
    os.chmod(path, mode | 0o200)  # chunks are stored read-only
    with open(path, "r+b") as handle:
        size = os.fstat(handle.fileno()).st_size
        handle.seek(size // 2)
        byte = handle.read(1)
        handle.seek(size // 2)
        handle.write(bytes([byte[0] ^ 0x01]))
    os.chmod(path, mode)
print(" ".join(chosen))
"""


def flip_chunks(stack: Stack, chunks: list[str] | None = None) -> list[str]:
    out = stack.compose("--profile", "tools", "run", "--rm", "-T", "--no-deps", "--entrypoint", "python3", "backup",
                        "-c", FLIP, *(chunks or [])).stdout.split()
    assert out, "no chunk in this hour's shares"
    return out


def alerts_named(hook, name: str) -> list[tuple[float, dict]]:
    """(arrival time, alert) of every firing alert `name` the webhook received."""
    return [(at, alert) for at, payload in zip(hook.arrived, hook.received, strict=True)
            for alert in payload.get("alerts", []) if alert["labels"].get("alertname") == name and alert["status"] == "firing"]


#: Set once the test put the flipped bytes back itself.
REPAIRED: list[bool] = []


def test_prometheus_scrapes_the_exporter_mlflow_and_alertmanager(stack):
    def all_up() -> dict[str, float] | None:
        up = {r["metric"]["job"]: float(r["value"][1]) for r in stack.prometheus("up")}
        return up if all(up.get(job) == 1 for job in SCRAPED) else None

    up = stack.wait("every target up == 1", all_up, 180, every=5)
    assert set(SCRAPED) <= set(up)
    # Values, not only names: what the stack did before this test.
    assert float(stack.prometheus("quadra_backup_good_backups")[0]["value"][1]) >= 1
    assert float(stack.prometheus("quadra_source_up{source='dagster'}")[0]["value"][1]) == 1
    assert [r["metric"].get("source") for r in stack.prometheus("quadra_source_up == 0")] == []
    assert float(stack.prometheus("quadra_champion_version")[0]["value"][1]) >= 1
    assert float(stack.prometheus("sum(mlflow_http_request_total)")[0]["value"][1]) > 0
    assert stack.prometheus("quadra_job_last_success_timestamp_seconds{dagster_job='training_job'}")


def test_a_bad_backup_and_a_job_failing_twice_reach_the_webhook_then_resolve(stack):
    with webhook_receiver(host=stack.gateway(), path="/alerts?token=deploy-test") as hook:
        # The operator's step: the webhook's URL as a file of the alertmanager identity, then a restart.
        docker("run", "--rm", "-i", "--network", "none", "-u", "0", "-v", f"{stack.secrets_dir / 'alertmanager'}:/s",
               "--entrypoint", "sh", "debian:bookworm-slim", "-c",
               "umask 077; cat > /s/webhook_url; chown --reference=/s /s/webhook_url", input=hook.url + "\n")
        stack.compose("restart", "alertmanager")
        def configured() -> bool:
            logs = stack.compose("logs", "--no-log-prefix", "alertmanager")
            newest = "\n".join((logs.stdout + logs.stderr).splitlines()[-40:])  # since the restart
            return stack.healthy("alertmanager") and "(receivers: webhook)" in newest

        stack.wait("Alertmanager healthy with its webhook", configured, 120)
        before = float(stack.prometheus("quadra_backup_last_good_timestamp_seconds")[0]["value"][1])
        hour = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d-%H:00")

        # Faults: a flipped byte in stored chunks, then a job that fails twice in a row.
        flipped = flip_chunks(stack)
        try:
            _faults_reach_the_webhook_then_resolve(stack, hook, flipped, before, hour)
        finally:
            if flipped and not REPAIRED:  # whatever failed, the later tests get whole chunks back
                flip_chunks(stack, flipped)


def _faults_reach_the_webhook_then_resolve(stack, hook, flipped: list[str], before: float, hour: str) -> None:
    bad = stack.launch("backup_job", tags={"dagster/partition": hour})
    assert stack.wait_for_run(bad)["status"] == "FAILURE"
    bad_at = time.time()
    integrity = stack.checks_of_latest_evaluation("backup", "integrity")["integrity"]
    assert integrity["run_id"] == bad and integrity["success"] is False, integrity  # the run failed on its check
    failing = [stack.launch("promote_model_job", config={"ops": {"promote_version": {"config": {
        "version": 999, "reason": "deploy test: no such version"}}}}) for _ in range(2)]
    for run_id in failing:
        assert stack.wait_for_run(run_id)["status"] == "FAILURE"
    twice_at = time.time()

    stack.wait("the backup check's alert at the webhook",
               lambda: [a for _, a in alerts_named(hook, "QuadraBackupCheckFailed") if a["labels"]["check"] == "integrity"],
               420, every=3)
    stack.wait("the job's alert at the webhook",
               lambda: [a for _, a in alerts_named(hook, "QuadraJobFailingRepeatedly")
                        if a["labels"]["dagster_job"] == "promote_model_job"], 420, every=3)
    stack.wait("the run-failure sensor's alert at the webhook",
               lambda: [a for _, a in alerts_named(hook, "QuadraRunFailed") if a["labels"]["run_id"] == bad], 120, every=3)
    [(check_arrived, check_alert)] = [(t, a) for t, a in alerts_named(hook, "QuadraBackupCheckFailed")
                                      if a["labels"]["check"] == "integrity"][:1]
    [(job_arrived, job_alert)] = [(t, a) for t, a in alerts_named(hook, "QuadraJobFailingRepeatedly")
                                  if a["labels"]["dagster_job"] == "promote_model_job"][:1]
    [(run_arrived, _)] = [(t, a) for t, a in alerts_named(hook, "QuadraRunFailed") if a["labels"]["run_id"] == bad][:1]
    PHASES.append(("alert: bad backup", check_arrived - bad_at, "integrity failed -> QuadraBackupCheckFailed at the webhook"))
    PHASES.append(("alert: job failing twice", job_arrived - twice_at, "2nd failure -> QuadraJobFailingRepeatedly at the webhook"))
    PHASES.append(("alert: failed run", run_arrived - bad_at, "run-failure sensor -> Alertmanager -> the webhook"))
    # The payload names the alert and the hour; the bad backup was not materialised, so
    # freshness still counts from the last good one (the exporter's good-backup time too).
    assert check_alert["labels"]["partition"] == hour and hour in check_alert["annotations"]["summary"]
    assert job_alert["labels"]["run_id"] == failing[-1]
    assert hook.paths[0].startswith("/alerts?token=deploy-test")
    assert float(stack.prometheus("quadra_backup_last_good_timestamp_seconds")[0]["value"][1]) == before

    # Repaired: the chunks whole again, a good backup, a good run of the job; the alerts resolve.
    flip_chunks(stack, flipped)
    REPAIRED.append(True)
    good = stack.launch("backup_job", tags={"dagster/partition": hour})
    assert stack.wait_for_run(good)["status"] == "SUCCESS", stack.run_messages(good)[-20:]
    champion = int(float(stack.prometheus("quadra_champion_version")[0]["value"][1]))
    fixed = stack.launch("promote_model_job", config={"ops": {"promote_version": {"config": {
        "version": champion, "reason": "deploy test: the champion stays"}}}})
    assert stack.wait_for_run(fixed)["status"] == "SUCCESS"
    fixed_at = time.time()

    def resolved() -> bool:
        names = {a["labels"]["alertname"] for a in stack.active_alerts()}
        return not names & {"QuadraBackupCheckFailed", "QuadraJobFailingRepeatedly"}

    stack.wait("both alerts resolved in Alertmanager", resolved, 300, every=5)
    PHASES.append(("alert resolved", time.time() - fixed_at, "good backup and run -> no longer active in Alertmanager"))
    assert float(stack.prometheus("quadra_backup_last_good_timestamp_seconds")[0]["value"][1]) > before
