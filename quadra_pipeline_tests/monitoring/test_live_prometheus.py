"""The configuration run for real, on loopback, by Debian bookworm's binaries (the stack's
stand-ins): Prometheus 2.42 scrapes a running exporter and evaluates rules.yml on its series
(every rule healthy, the recording rules' values, alerts pending for the sources that are down);
Alertmanager 0.25, configured by its entrypoint, delivers an alert to a loopback webhook and by
e-mail through a loopback SMTP server with a login, and a failed run the run-failure sensor posted
to it (QUADRA_ALERTMANAGER_URL, as in the Compose stack) to the same webhook. Missing binaries: a failure in CI, a skip
elsewhere (Debian's `prometheus` and `prometheus-alertmanager`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from quadra_pipeline.monitoring import server
from quadra_pipeline.monitoring.exporter import QuadraCollector, registry_for
from quadra_pipeline.monitoring.sources import BackupsSource, DagsterSource, MlflowSource, StoreSource, existing_ancestor
from quadra_pipeline.settings import load_settings

from .conftest import PROMETHEUS_DIR, tool
from .receivers import smtp_receiver, webhook_receiver
from .test_alerts import evaluate, fail_a_run

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def wait_for(what: str, condition, timeout: float = 60.0, process: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what}: the process exited ({process.returncode}): {log.read_text()[-2000:] if log else ''}")
        try:
            last = condition()
            if last:
                return last
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(0.5)
    pytest.fail(f"{what} within {timeout:.0f} s (last: {str(last)[:500]}); {log.read_text()[-2000:] if log else ''}")


@contextlib.contextmanager
def running(command: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)


@pytest.mark.slow
def test_prometheus_scrapes_the_exporter_and_evaluates_every_rule(clean_env, tmp_path):
    prometheus = tool("prometheus", "prometheus")
    with dg.instance_for_test() as instance:
        settings = load_settings()  # nothing has run: the store and MLflow are down, the rest answers
        collector = QuadraCollector([DagsterSource(instance), StoreSource(settings), BackupsSource(settings),
                                     MlflowSource(settings)], deadline_seconds=5)
        exporter = server.make("127.0.0.1", 0, registry_for(collector), "test")
        threading.Thread(target=exporter.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: ['{PROMETHEUS_DIR / 'rules.yml'}']\n"
            "scrape_configs:\n"
            "  - job_name: quadra-exporter\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{exporter.server_port}']}}]\n")
        base = f"http://127.0.0.1:{port}"
        log = tmp_path / "prometheus.log"
        try:
            with running([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                          f"--web.listen-address=127.0.0.1:{port}"], log) as process:
                wait_for("the exporter's target up", lambda: any(
                    t["health"] == "up" for t in get_json(f"{base}/api/v1/targets")["data"]["activeTargets"]),
                    process=process, log=log)

                def evaluated():
                    rules = [r for g in get_json(f"{base}/api/v1/rules")["data"]["groups"] for r in g["rules"]]
                    return rules if rules and all(r.get("lastEvaluation", "").startswith("20") and r["health"] != "unknown"
                                                  for r in rules) else None

                rules = wait_for("every rule evaluated", evaluated, process=process, log=log)
                assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
                assert {r["name"] for r in rules if r["type"] == "alerting"} >= {
                    "QuadraNoGoodBackup", "QuadraBackupCheckFailed", "QuadraJobFailingRepeatedly",
                    "QuadraTrainingLossNotFinite", "QuadraBackupVolumeFull", "QuadraExporterDown"}

                def query(expression: str) -> list[dict]:
                    return get_json(f"{base}/api/v1/query?query={urllib.parse.quote(expression)}")["data"]["result"]

                used = wait_for("the volume's use recorded", lambda: query("quadra:backup_volume_used:ratio"))
                stats = os.statvfs(existing_ancestor(Path(settings.backup_dir)))
                expected = (stats.f_blocks - stats.f_bfree) / (stats.f_blocks - stats.f_bfree + stats.f_bavail)
                assert float(used[0]["value"][1]) == pytest.approx(expected, abs=0.01)
                pending = wait_for("alerts pending for the sources that are down", lambda: {
                    a["metric"]["source"] for a in query('ALERTS{alertname="QuadraExporterSourceDown"}')} or None)
                assert pending == {"store", "mlflow"}
                assert {a["metric"]["alertstate"] for a in query('ALERTS{alertname="QuadraNoGoodBackupAtAll"}')} == {"pending"}
        finally:
            exporter.shutdown()
            exporter.server_close()
            collector.close()


@pytest.mark.slow
def test_alertmanager_delivers_to_the_webhook_and_by_email(clean_env, tmp_path, monkeypatch):
    alertmanager = tool("prometheus-alertmanager", "prometheus-alertmanager")
    with webhook_receiver() as hook, smtp_receiver(user="alerts", password="mail-s3cret", exclude=("LOGIN",)) as box:
        (tmp_path / "webhook_url").write_text(hook.url + "\n")
        (tmp_path / "smtp_password").write_text("mail-s3cret\n")
        config = tmp_path / "run" / "alertmanager.yml"
        rendered = subprocess.run(
            ["sh", str(PROMETHEUS_DIR / "alertmanager-entrypoint.sh")], capture_output=True, text=True, timeout=30,
            env={"PATH": os.environ["PATH"], "QUADRA_ALERTMANAGER_TEMPLATE": str(PROMETHEUS_DIR / "alertmanager.yml"),
                 "QUADRA_ALERTMANAGER_CONFIG": str(config), "QUADRA_ALERTMANAGER_RENDER_ONLY": "1",
                 "QUADRA_ALERT_WEBHOOK_URL_FILE": str(tmp_path / "webhook_url"),
                 "QUADRA_ALERT_SMTP_HOST": box.host, "QUADRA_ALERT_SMTP_PORT": str(box.port), "QUADRA_ALERT_SMTP_TLS": "none",
                 "QUADRA_ALERT_SMTP_FROM": "alertmanager@example.com", "QUADRA_ALERT_SMTP_TO": "oncall@example.com",
                 "QUADRA_ALERT_SMTP_USER": "alerts", "QUADRA_ALERT_SMTP_PASSWORD_FILE": str(tmp_path / "smtp_password")})
        assert rendered.returncode == 0, rendered.stderr
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = tmp_path / "alertmanager.log"
        with running([alertmanager, f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
                      f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="], log) as process:
            wait_for("Alertmanager ready", lambda: urllib.request.urlopen(f"{base}/-/ready", timeout=2).status == 200,
                     process=process, log=log)
            alert = [{"labels": {"alertname": "QuadraBackupCheckFailed", "severity": "critical", "asset": "backup",
                                 "check": "restore_drill", "partition": "2026-12-07-10:00", "run_id": "9c4d"},
                      "annotations": {"summary": "Backup restore_drill failed for hour 2026-12-07-10:00"}}]
            request = urllib.request.Request(f"{base}/api/v2/alerts", data=json.dumps(alert).encode(), method="POST",
                                             headers={"Content-Type": "application/json"})
            assert urllib.request.urlopen(request, timeout=5).status == 200
            # The pipeline's run-failure sensor, pointed at Alertmanager (no receiver of its own).
            monkeypatch.setenv("QUADRA_ALERTMANAGER_URL", base)
            with dg.instance_for_test() as instance:
                _, cursor, _ = evaluate(instance, None)
                run_id = fail_a_run(instance).run_id
                tick, _, _ = evaluate(instance, cursor)
                assert tick.skip_message is None, tick.skip_message
            # group_wait is 30 s: the first notification of a group comes then.
            wait_for("both notifications", lambda: len(hook.received) >= 2, timeout=60, process=process, log=log)
            wait_for("the e-mails", lambda: len(box.messages) >= 2, timeout=30, process=process, log=log)
    by_name = {p["groupLabels"]["alertname"]: p for p in hook.received}
    failed = by_name["QuadraRunFailed"]
    assert failed["status"] == "firing"
    assert failed["alerts"][0]["labels"] | {"run_id": "?"} == {
        "alertname": "QuadraRunFailed", "severity": "page", "source": "dagster", "dagster_job": "nightly_job",
        "partition": "2026-12-07-03:00", "run_id": "?"}
    assert failed["alerts"][0]["labels"]["run_id"] == run_id
    assert "train_on" in failed["alerts"][0]["annotations"]["description"]
    payload = by_name["QuadraBackupCheckFailed"]
    assert payload["status"] == "firing" and payload["receiver"] == "quadra"
    assert payload["alerts"][0]["labels"]["partition"] == "2026-12-07-10:00"
    assert payload["groupLabels"] == {"alertname": "QuadraBackupCheckFailed", "check": "restore_drill"}
    assert box.logins and all(ok for _, ok in box.logins)
    assert box.envelopes[0] == ("alertmanager@example.com", ["oncall@example.com"])
    assert sorted("QuadraBackupCheckFailed" in m["Subject"] for m in box.messages) == [False, True]
    assert "s3cr3t-token" not in log.read_text() and "mail-s3cret" not in log.read_text()
