"""The deployment files, read statically (fast, in `make test`; the stack itself runs in
`test_stack.py` under `make deploy-test`): the rules the stack must keep, checked where a typo
would otherwise only show on a production host."""

from __future__ import annotations

import os
import re
import stat
import subprocess

import pytest
import yaml

from quadra_pipeline.keys import load_pair
from quadra_pipeline_tests.defs.conftest import REPO_ROOT

COMPOSE_DIR = REPO_ROOT / "deploy" / "compose"
SERVICES = ("postgres", "mlflow", "code", "webserver", "daemon")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def instance() -> dict:
    return yaml.safe_load((COMPOSE_DIR / "dagster.yaml").read_text())


def required_variables() -> set[str]:
    """Every variable compose.yaml refuses to start without (`${NAME:?...}`)."""
    return set(re.findall(r"\$\{([A-Z0-9_]+):\?", (COMPOSE_DIR / "compose.yaml").read_text()))


def test_every_service_has_a_health_check_a_restart_policy_and_waits_on_health(compose):
    services = compose["services"]
    assert set(services) == set(SERVICES)
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
        assert service["restart"] == "unless-stopped", name
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, (name, dependency)
    checks = {name: " ".join(s["healthcheck"]["test"]) for name, s in services.items()}
    assert "pg_isready" in checks["postgres"]
    assert "/health" in checks["mlflow"]
    assert "grpc-health-check" in checks["code"]
    assert "/server_info" in checks["webserver"]
    assert "liveness-check" in checks["daemon"]


def test_published_ports_bind_to_loopback_by_default(compose):
    published = {name: s["ports"] for name, s in compose["services"].items() if "ports" in s}
    assert set(published) == {"mlflow", "webserver"}
    for name, ports in published.items():
        for port in ports:  # "${MLFLOW_BIND:-127.0.0.1}:${MLFLOW_PORT:-5000}:5000"
            assert re.fullmatch(r"\$\{[A-Z]+_BIND:-127\.0\.0\.1\}:\$\{[A-Z]+_PORT:-\d+\}:\d+", port), (name, port)


def test_secrets_are_required_never_defaulted_and_never_on_a_command_line(compose):
    text = (COMPOSE_DIR / "compose.yaml").read_text()
    required = required_variables()
    assert {"POSTGRES_PASSWORD", "DAGSTER_DB_PASSWORD", "QUADRA_DB_PASSWORD", "MLFLOW_DB_PASSWORD", "MLFLOW_ADMIN_PASSWORD",
            "MLFLOW_FLASK_SERVER_SECRET_KEY", "QUADRA_SECRET_KEY", "QUADRA_MODEL_SIGNING_KEY", "QUADRA_BACKUP_SIGNING_KEY"} <= required
    for name in required:
        assert f"${{{name}:-" not in text and f"${{{name}-" not in text, f"{name} has a default"
    # Each refusal says what to do.
    assert len(re.findall(r":\?deploy/\.env must set [A-Z0-9_]+ \(make deploy-secrets\)\}", text)) == text.count(":?")
    for name, service in compose["services"].items():
        command = " ".join(service.get("command", []) if isinstance(service.get("command"), list) else [service.get("command") or ""])
        assert "$" not in command and "PASSWORD" not in command.upper(), (name, command)
    mlflow = compose["services"]["mlflow"]["environment"]
    assert "*" not in mlflow["MLFLOW_SERVER_ALLOWED_HOSTS"] and "*" not in mlflow["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"]
    script = (COMPOSE_DIR / "mlflow-server.sh").read_text()
    assert "--app-name basic-auth" in script and "--backend-store-uri" not in script  # the URL (with its password) stays in the environment


def test_runs_get_every_variable_they_need_from_the_daemon(compose, instance):
    launcher = instance["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_docker", "DockerRunLauncher")
    daemon_env = set(compose["services"]["daemon"]["environment"])
    code_env = set(compose["services"]["code"]["environment"])
    forwarded = set(launcher["config"]["env_vars"])
    assert forwarded <= daemon_env, f"forwarded to runs but not set on the daemon: {sorted(forwarded - daemon_env)}"
    # ...and every setting the stack gives its code reaches the runs, where the work happens.
    settings = set(compose["x-quadra-env"]) | set(compose["x-dagster-env"])
    assert settings <= forwarded, f"set for the stack but never passed to a run: {sorted(settings - forwarded)}"
    assert forwarded <= code_env
    # The network and volumes the launcher names are the stack's (fixed names, not project-prefixed).
    assert compose["networks"]["default"]["name"] == launcher["config"]["network"]
    named = {v["name"] for v in compose["volumes"].values()}
    mounted = {spec.split(":")[0] for spec in launcher["config"]["container_kwargs"]["volumes"]}
    assert mounted <= named
    assert "DAGSTER_CURRENT_IMAGE" in code_env


def test_the_stack_keeps_the_development_instance_rules(instance):
    development = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    for key in ("run_coordinator", "concurrency", "run_monitoring", "run_retries"):
        assert instance[key] == development[key], key
    assert "postgres" in instance["storage"]


def test_the_image_context_holds_only_wheels_and_three_deployment_files():
    rules = [line for line in (REPO_ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*"
    assert sorted(rules[1:]) == sorted(["!build/wheels/deps/*.whl", "!build/wheels/project/*.whl",
                                        "!deploy/compose/dagster.yaml", "!deploy/compose/workspace.yaml",
                                        "!deploy/compose/mlflow-server.sh"])
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "# syntax" not in dockerfile  # BuildKit would pull that frontend image
    assert "USER quadra" in dockerfile and "PIP_NO_INDEX=1" in dockerfile and "postgresql-client-15" in dockerfile


def test_make_deploy_secrets_writes_every_required_secret_once_mode_600(tmp_path):
    target = tmp_path / "deploy.env"
    made = subprocess.run(["sh", str(COMPOSE_DIR / "make-secrets.sh"), str(target)], capture_output=True, text=True, check=True)
    assert "wrote" in made.stdout
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    values = dict(line.split("=", 1) for line in target.read_text().splitlines() if line and not line.startswith("#"))
    values = {k: v.strip("'") for k, v in values.items()}
    assert required_variables() <= set(values), f"compose needs {sorted(required_variables() - set(values))}"
    assert all(len(v) >= 48 for k, v in values.items() if not k.endswith("SIGNING_KEY"))
    assert len(set(values.values())) == len(values)  # fresh, distinct values
    # The keys load as the settings load them (PEM with \n escapes): P-256 for models, Ed25519 for backups.
    model = load_pair("ec-p256", private_text=values["QUADRA_MODEL_SIGNING_KEY"], private_file=None, public_text=None,
                      public_file=None, names=("QUADRA_MODEL_SIGNING_KEY", "QUADRA_MODEL_VERIFY_KEY"))
    backup = load_pair("ed25519", private_text=values["QUADRA_BACKUP_SIGNING_KEY"], private_file=None, public_text=None,
                       public_file=None, names=("QUADRA_BACKUP_SIGNING_KEY", "QUADRA_BACKUP_VERIFY_KEY"))
    assert model.can_sign and backup.can_sign
    # An existing file is never replaced.
    before = target.read_bytes()
    again = subprocess.run(["sh", str(COMPOSE_DIR / "make-secrets.sh"), str(target)], capture_output=True, text=True, check=True)
    assert "exists" in again.stdout and target.read_bytes() == before


def test_the_secrets_file_is_never_committed():
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/.env"], cwd=REPO_ROOT)
    assert ignored.returncode == 0
    assert not (REPO_ROOT / "deploy" / ".env").exists() or os.environ.get("CI") != "true"


def test_make_deploy_test_without_docker_says_so_and_fails(tmp_path):
    """A machine where Docker does not answer: the deployment targets stop at once, saying why."""
    environment = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    done = subprocess.run(["make", "--no-print-directory", "docker-check"], cwd=REPO_ROOT, env=environment,
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "Docker is not available here" in done.stderr


def test_make_deploy_secrets_without_openssl_writes_nothing(tmp_path):
    target = tmp_path / "deploy.env"
    made = subprocess.run(["/bin/sh", str(COMPOSE_DIR / "make-secrets.sh"), str(target)], capture_output=True, text=True,
                          env={"PATH": str(tmp_path / "no-tools-here")})
    assert made.returncode != 0 and "openssl is needed" in made.stderr
    assert not target.exists() and list(tmp_path.iterdir()) == []
