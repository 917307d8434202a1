"""deploy/prometheus/ as Prometheus 2.42 and Alertmanager 0.25 (Debian bookworm's, the stack's
stand-ins) read it: `promtool check config`, `promtool check rules`, the alert rules' own unit
tests (`promtool test rules rules_test.yml`: each alert fires on the series it should and not on
the others), `amtool check-config` of Alertmanager's template and of every configuration its
entrypoint writes. promtool and amtool come from Debian's `prometheus` and
`prometheus-alertmanager` packages: missing, these tests fail in CI and skip elsewhere."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import PROMETHEUS_DIR, REPO_ROOT, tool


def run(*command: str, env: dict[str, str] | None = None, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules():
    result = run(tool("promtool", "prometheus"), "check", "rules", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_checks_the_configuration_and_its_rule_files():
    result = run(tool("promtool", "prometheus"), "check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_the_alert_rules_unit_tests_pass():
    """rules_test.yml: each of the six alerts (and the extra ones) fires on its series, after its
    `for:`, with labels and annotations naming the hour, job or run, and stays quiet otherwise."""
    result = run(tool("promtool", "prometheus"), "test", "rules", "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_tests_catch_a_wrong_threshold(tmp_path):
    """The rules' tests are not vacuous: 80 minutes instead of 70 fails them."""
    for name in ("rules.yml", "rules_test.yml"):
        (tmp_path / name).write_text((PROMETHEUS_DIR / name).read_text())
    rules = tmp_path / "rules.yml"
    rules.write_text(rules.read_text().replace("> 70 * 60", "> 80 * 60"))
    result = run(tool("promtool", "prometheus"), "test", "rules", "rules_test.yml", cwd=tmp_path)
    assert result.returncode != 0 and "QuadraNoGoodBackup" in result.stdout + result.stderr


def test_every_required_alert_exists_with_a_for_duration_and_a_summary():
    groups = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())["groups"]
    alerts = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
    required = {"QuadraNoGoodBackup", "QuadraBackupCheckFailed", "QuadraJobFailingRepeatedly",
                "QuadraTrainingLossNotFinite", "QuadraBackupVolumeFull", "QuadraExporterDown"}
    assert required <= set(alerts)
    for name, rule in alerts.items():
        assert rule.get("for"), f"{name} has no for: duration"
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    tested = (PROMETHEUS_DIR / "rules_test.yml").read_text()
    for name in alerts:
        assert f"alertname: {name}\n" in tested, f"{name} has no unit test"


def test_prometheus_scrapes_the_exporter_mlflow_and_alertmanager():
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets["quadra-exporter"] == ["exporter:9464"]
    assert targets["mlflow"] == ["mlflow:9465"]
    assert targets["alertmanager"] == ["alertmanager:9093"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    exporter = next(j for j in config["scrape_configs"] if j["job_name"] == "quadra-exporter")
    # The exporter's per-source deadline (8 s) fits in the scrape's timeout.
    assert float(exporter["scrape_timeout"].rstrip("s")) > 8


def test_the_exporters_instance_is_the_stacks_storage_and_nothing_else():
    exporter = yaml.safe_load((PROMETHEUS_DIR / "exporter-dagster.yaml").read_text())
    stack = yaml.safe_load((REPO_ROOT / "deploy" / "compose" / "dagster.yaml").read_text())
    assert exporter["storage"] == stack["storage"]
    assert "run_launcher" not in exporter and exporter["compute_logs"]["class"] == "NoOpComputeLogManager"


# Alertmanager ---------------------------------------------------------------------------------

ENTRYPOINT = PROMETHEUS_DIR / "alertmanager-entrypoint.sh"


def render(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    config = tmp_path / "run" / "alertmanager.yml"
    environment = {"PATH": os.environ["PATH"], "QUADRA_ALERTMANAGER_TEMPLATE": str(PROMETHEUS_DIR / "alertmanager.yml"),
                   "QUADRA_ALERTMANAGER_CONFIG": str(config), "QUADRA_ALERTMANAGER_RENDER_ONLY": "1", **env}
    return run("sh", str(ENTRYPOINT), env=environment, cwd=tmp_path)


def amtool_check(path: Path) -> None:
    result = run(tool("amtool", "prometheus-alertmanager"), "check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_template_itself_is_a_valid_configuration_with_no_receiver():
    amtool_check(PROMETHEUS_DIR / "alertmanager.yml")


def test_no_receiver_configured_leaves_one_receiver_without_any_notifier(tmp_path):
    result = render(tmp_path)
    assert result.returncode == 0, result.stderr
    config_file = tmp_path / "run" / "alertmanager.yml"
    amtool_check(config_file)
    config = yaml.safe_load(config_file.read_text())
    assert config["receivers"] == [{"name": "quadra"}]  # alerts are grouped and shown in the UI only
    assert "alerts only in the UI" in result.stderr


def test_webhook_and_email_with_a_login(tmp_path):
    token_url = "https://hooks.example.com/services/T00/B00/s3cr3t-token&x=1"
    (tmp_path / "webhook_url").write_text(token_url + "\n")
    (tmp_path / "smtp_password").write_text("mail-s3cret\n")
    result = render(tmp_path, QUADRA_ALERT_WEBHOOK_URL_FILE=str(tmp_path / "webhook_url"),
                    QUADRA_ALERT_SMTP_HOST="smtp.example.com", QUADRA_ALERT_SMTP_FROM="quadra@example.com",
                    QUADRA_ALERT_SMTP_TO="oncall@example.com, ops@example.com", QUADRA_ALERT_SMTP_USER="quadra-alerts",
                    QUADRA_ALERT_SMTP_PASSWORD_FILE=str(tmp_path / "smtp_password"))
    assert result.returncode == 0, result.stderr
    assert "s3cr3t" not in result.stdout + result.stderr
    config_file = tmp_path / "run" / "alertmanager.yml"
    assert config_file.stat().st_mode & 0o077 == 0  # the token's file: this user's alone
    amtool_check(config_file)
    [receiver] = yaml.safe_load(config_file.read_text())["receivers"]
    assert receiver["webhook_configs"] == [{"url": token_url, "send_resolved": True, "max_alerts": 20}]
    [email] = receiver["email_configs"]
    assert email == {"to": "oncall@example.com, ops@example.com", "from": "quadra@example.com",
                     "smarthost": "smtp.example.com:587", "require_tls": True, "send_resolved": True,
                     "auth_username": "quadra-alerts", "auth_password_file": str(tmp_path / "run" / "smtp_password")}
    assert "mail-s3cret" not in config_file.read_text()  # Alertmanager reads the password's file itself...
    copy = tmp_path / "run" / "smtp_password"  # ...a private copy without the trailing newline (0.25 keeps it)
    assert copy.read_bytes() == b"mail-s3cret" and copy.stat().st_mode & 0o077 == 0


def test_the_stacks_folder_of_receiver_secrets_configures_what_it_holds(tmp_path):
    """The Compose stack mounts deploy/secrets/alertmanager/ (QUADRA_ALERT_SECRETS_DIR): an empty
    folder is no receiver; a webhook_url put there by the operator is the webhook; a
    smtp_password there is the login's password."""
    secrets = tmp_path / "alertmanager"
    secrets.mkdir()
    assert "alerts only in the UI" in render(tmp_path, QUADRA_ALERT_SECRETS_DIR=str(secrets)).stderr
    (secrets / "webhook_url").write_text("http://172.18.0.1:8099/hook?token=s3cr3t\n")
    (secrets / "smtp_password").write_text("mail-s3cret\n")
    result = render(tmp_path, QUADRA_ALERT_SECRETS_DIR=str(secrets), QUADRA_ALERT_SMTP_HOST="smtp.example.com",
                    QUADRA_ALERT_SMTP_FROM="q@example.com", QUADRA_ALERT_SMTP_TO="o@example.com",
                    QUADRA_ALERT_SMTP_USER="quadra-alerts")
    assert result.returncode == 0, result.stderr
    config_file = tmp_path / "run" / "alertmanager.yml"
    amtool_check(config_file)
    [receiver] = yaml.safe_load(config_file.read_text())["receivers"]
    assert receiver["webhook_configs"][0]["url"] == "http://172.18.0.1:8099/hook?token=s3cr3t"
    assert receiver["email_configs"][0]["auth_password_file"] == str(tmp_path / "run" / "smtp_password")
    assert (tmp_path / "run" / "smtp_password").read_bytes() == b"mail-s3cret"


def test_email_over_implicit_tls_and_a_relay_without_login(tmp_path):
    result = render(tmp_path, QUADRA_ALERT_SMTP_HOST="smtp.example.com", QUADRA_ALERT_SMTP_PORT="465",
                    QUADRA_ALERT_SMTP_TLS="ssl", QUADRA_ALERT_SMTP_FROM="q@example.com", QUADRA_ALERT_SMTP_TO="o@example.com")
    assert result.returncode == 0, result.stderr
    amtool_check(tmp_path / "run" / "alertmanager.yml")
    [email] = yaml.safe_load((tmp_path / "run" / "alertmanager.yml").read_text())["receivers"][0]["email_configs"]
    assert email["smarthost"] == "smtp.example.com:465" and email["require_tls"] is False and "auth_username" not in email


@pytest.mark.parametrize(("env", "message"), [
    ({"QUADRA_ALERT_SMTP_HOST": "smtp.example.com"}, "set QUADRA_ALERT_SMTP_FROM too"),
    ({"QUADRA_ALERT_SMTP_HOST": "h", "QUADRA_ALERT_SMTP_FROM": "a'b@example.com", "QUADRA_ALERT_SMTP_TO": "o@example.com"},
     "QUADRA_ALERT_SMTP_FROM holds a quote"),
    ({"QUADRA_ALERT_SMTP_HOST": "h", "QUADRA_ALERT_SMTP_FROM": "q@x", "QUADRA_ALERT_SMTP_TO": "o@x",
      "QUADRA_ALERT_SMTP_TLS": "ssl"}, "QUADRA_ALERT_SMTP_TLS=ssl needs QUADRA_ALERT_SMTP_PORT=465"),
    ({"QUADRA_ALERT_SMTP_HOST": "h", "QUADRA_ALERT_SMTP_FROM": "q@x", "QUADRA_ALERT_SMTP_TO": "o@x",
      "QUADRA_ALERT_SMTP_USER": "u", "QUADRA_ALERT_SMTP_PASSWORD_FILE": "/nonexistent"},
     "QUADRA_ALERT_SMTP_PASSWORD_FILE must name"),
    ({"QUADRA_ALERT_WEBHOOK_URL_FILE": "/nonexistent"}, "QUADRA_ALERT_WEBHOOK_URL_FILE=/nonexistent is missing"),
])
def test_a_bad_setting_stops_alertmanager_with_one_line(tmp_path, env, message):
    result = render(tmp_path, **env)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert not (tmp_path / "run" / "alertmanager.yml").exists()


def test_a_webhook_url_that_is_not_a_url_is_refused_without_showing_it(tmp_path):
    (tmp_path / "webhook_url").write_text("hooks.example.com/s3cr3t-token\n")
    result = render(tmp_path, QUADRA_ALERT_WEBHOOK_URL_FILE=str(tmp_path / "webhook_url"))
    assert result.returncode != 0 and "not an http(s) URL" in result.stderr
    assert "s3cr3t" not in result.stderr
    assert not (tmp_path / "run" / "alertmanager.yml").exists() and not (tmp_path / "run" / "alertmanager.yml.tmp").exists()


def test_a_missing_tool_fails_in_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must have it"):
        tool("promtool-that-is-not-installed", "prometheus")
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="apt-get install prometheus"):
        tool("promtool-that-is-not-installed", "prometheus")
