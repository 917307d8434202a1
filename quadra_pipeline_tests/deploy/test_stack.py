"""The production stack, built and run for real on this machine's Docker (`make deploy-test`).

In order, on one stack: the image is built (`make image`), the stack started (`make deploy-up`)
and every service's health check seen passing; `training_job` is launched through the stack
and runs in a container of its own; the new version is read through MLflow's REST API (with
credentials; 401 without); the hourly backup is launched for this hour and its integrity check
and restore drill pass (both PostgreSQL databases restored into scratch databases, the champion
loaded by its SHA-256 and signature); `quadra backup verify` passes; no secret is on any
process's command line; `make deploy-down` and `make deploy-up` again keep runs, metrics,
registry and backups. Then everything the test made is removed. The phases' times are printed
at the end (conftest.py)."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest

from .stack import PHASES, SERVICES, Stack, docker, leftovers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def test_image_builds_from_the_wheelhouse_non_root_with_pg_dump(stack):
    """`make image`: the wheelhouse from the pinned set, then the image, with no package index."""
    stack.timed("image build", "make image: wheels on the host, then docker build", "image")
    config = json.loads(docker("image", "inspect", stack.image).stdout)[0]
    size = config["Size"]
    PHASES.append(("image size", size / 1e9, "GB (not seconds): docker image inspect"))
    assert config["Config"]["User"] == "quadra"
    versions = docker("run", "--rm", "--entrypoint", "sh", stack.image, "-c",
                      "id -u; pg_dump --version; python3 --version; quadra --help >/dev/null && echo cli-ok").stdout.split("\n")
    assert versions[0] == "10001"
    assert versions[1].startswith("pg_dump (PostgreSQL) 15.")
    assert versions[2].startswith("Python 3.11.")
    assert "cli-ok" in versions
    listing = docker("run", "--rm", "--entrypoint", "sh", stack.image, "-c",
                     "ls /opt/dagster/app; ls -a /; find / -xdev \\( -name '.env' -o -name '*.pem' -o -name 'quadra_pipeline_tests' \\) 2>/dev/null; true").stdout
    found = listing.split()
    assert not any("quadra_pipeline_tests" in f or f.endswith("/.env") for f in found), found
    # The only PEM files are CA bundles (certifi, grpc, Debian's); no private key anywhere.
    assert all(f.startswith("/opt/venv/lib/") or f.startswith("/etc/") or f.startswith("/usr/") for f in found if f.endswith(".pem"))
    keys = docker("run", "--rm", "--entrypoint", "sh", stack.image, "-c",
                  "grep -rls 'PRIVATE KEY-----' /opt/dagster /data /backups /home /tmp 2>/dev/null; true").stdout.split()
    assert keys == []


def test_the_stack_refuses_to_start_without_its_secrets(stack, tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    unset = Stack(env_file=empty, image=stack.image, dagster_port=stack.dagster_port, mlflow_port=stack.mlflow_port)
    refused = unset.compose("up", "-d", check=False)
    assert refused.returncode != 0
    assert "must set" in refused.stderr and "make deploy-secrets" in refused.stderr
    assert not leftovers()  # nothing was started


def test_every_service_starts_and_its_health_check_passes(stack):
    stack.timed("stack up", "make deploy-secrets + deploy-up: start, wait until every service is healthy", "deploy-up")
    assert oct(stack.env_file.stat().st_mode & 0o777) == "0o600"
    for service in SERVICES:
        state = stack.container(service)
        assert state["Config"].get("Healthcheck", {}).get("Test"), f"{service} has no health check"
        health = state["State"]["Health"]
        assert health["Status"] == "healthy", f"{service}: {health['Status']}: {health['Log'][-1:]}"
        assert any(entry["ExitCode"] == 0 for entry in health["Log"]), service
        assert state["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped", service
        for binding in (state["HostConfig"]["PortBindings"] or {}).values():
            assert all(b["HostIp"] == "127.0.0.1" for b in binding), f"{service} publishes beyond loopback: {binding}"


def test_training_job_launched_through_the_stack_runs_in_its_own_container(stack, runs):
    started = time.perf_counter()
    run_id = stack.launch("training_job")
    run = stack.wait_for_run(run_id)
    PHASES.append(("training_job", time.perf_counter() - started, "dagster job launch -> SUCCESS, in its own container"))
    assert run["status"] == "SUCCESS", stack.run_logs(run_id)
    tags = {t["key"]: t["value"] for t in run["tags"]}
    container = json.loads(docker("inspect", tags["docker/container_id"]).stdout)[0]
    assert container["Config"]["Image"] == stack.image
    assert container["Config"]["Labels"]["dagster/run_id"] == run_id
    assert container["State"]["ExitCode"] == 0
    assert "quadra" in container["NetworkSettings"]["Networks"]
    assert {m["Name"] for m in container["Mounts"] if m["Type"] == "volume"} >= {"quadra-data", "quadra-mlartifacts", "quadra-backups"}
    runs["training"] = run_id
    assert int(stack.sql("quadra", "select count(*) from training_metrics")) > 0


def test_the_new_version_is_in_the_registry_behind_authentication(stack, runs):
    status, answer = stack.mlflow("/api/2.0/mlflow/registered-models/get?name=quadra-matrix")
    assert status == 200, answer
    aliases = {a["alias"]: a["version"] for a in answer["registered_model"].get("aliases", [])}
    assert aliases.get("champion") == "1"
    status, version = stack.mlflow("/api/2.0/mlflow/model-versions/get?name=quadra-matrix&version=1")
    tags = {t["key"]: t["value"] for t in version["model_version"]["tags"]}
    assert len(tags["checkpoint_sha256"]) == 64 and tags.get("dagster_run_id") == runs["training"]
    status, _ = stack.mlflow("/api/2.0/mlflow/registered-models/get?name=quadra-matrix", credentials=False)
    assert status == 401
    status, text = stack.mlflow("/api/2.0/mlflow/registered-models/search", headers={"Host": "attacker.example:5000"})
    assert status == 403, text  # the allowed hosts come from the environment, never `*`


def test_the_hourly_backup_covers_both_databases_and_the_drill_checks_the_champion(stack, runs):
    hour = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d-%H:00")
    started = time.perf_counter()
    run_id = stack.launch("backup_job", tags={"dagster/partition": hour})
    run = stack.wait_for_run(run_id)
    PHASES.append(("backup", time.perf_counter() - started, f"backup_job for {hour}: backup, integrity, restore drill"))
    assert run["status"] == "SUCCESS", stack.run_logs(run_id)
    runs["backup"] = run_id
    checks = stack.checks_of_latest("backup")
    assert checks["integrity"]["success"] is True, checks["integrity"]
    drill = checks["restore_drill"]
    assert drill["success"] is True and drill["problems"] == [], drill
    PHASES.append(("restore drill", drill.get("seconds", float("nan")), "inside the backup run: both databases into scratch databases, champion"))
    checked = drill["checked"]
    assert checked["project-db"]["restored_into"] == "scratch PostgreSQL database" and checked["project-db"]["rows"] > 0
    assert checked["mlflow-db"]["restored_into"] == "scratch PostgreSQL database" and checked["mlflow-db"]["rows"] > 0
    assert checked["champion"]["version"] == 1 and checked["champion"]["signature"] == "verified"
    # The scratch databases are gone again.
    assert stack.sql("postgres", "select count(*) from pg_database where datname like '%drill%' or datname like '%scratch%'") == "0"


def test_quadra_backup_verify_passes_in_the_stack(stack):
    started = time.perf_counter()
    verified = stack.exec("code", "quadra", "backup", "verify", check=False)
    PHASES.append(("backup verify", time.perf_counter() - started, "quadra backup verify (every backup, the history)"))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "history" in verified.stdout and " OK " in verified.stdout


def test_no_secret_is_on_any_command_line(stack):
    secrets = [stack.secret(name) for name in ("POSTGRES_PASSWORD", "DAGSTER_DB_PASSWORD", "QUADRA_DB_PASSWORD",
                                               "MLFLOW_DB_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY",
                                               "QUADRA_SECRET_KEY")]
    lines = []
    for service in SERVICES:
        lines += docker("top", stack.container(service)["Id"], "-eo", "pid,args").stdout.splitlines()[1:]
    assert len(lines) >= len(SERVICES)
    leaked = [line[:60] for line in lines if any(secret in line for secret in secrets)]
    assert not leaked


def test_down_and_up_again_keeps_runs_metrics_registry_and_backups(stack, runs):
    metrics = stack.sql("quadra", "select count(*) from training_metrics")
    backups = stack.exec("code", "quadra", "backup", "list").stdout.split()
    started = time.perf_counter()
    stack.make("deploy-down")
    assert not stack.compose("ps", "-q").stdout.strip()
    stack.make("deploy-up")
    PHASES.append(("down + up", time.perf_counter() - started, "make deploy-down, make deploy-up (image cached): healthy again"))
    for job, run_id in runs.items():
        assert stack.run(run_id)["status"] == "SUCCESS", job
    assert stack.sql("quadra", "select count(*) from training_metrics") == metrics
    status, answer = stack.mlflow("/api/2.0/mlflow/registered-models/get?name=quadra-matrix")
    assert status == 200 and {a["alias"] for a in answer["registered_model"]["aliases"]} >= {"champion"}
    assert stack.exec("code", "quadra", "backup", "list").stdout.split() == backups
    assert stack.exec("code", "quadra", "backup", "verify", check=False).returncode == 0

