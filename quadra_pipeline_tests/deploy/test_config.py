"""The deployment files, read statically (fast, in `make test`; the stack itself runs in
`test_stack.py` under `make deploy-test`): the rules the stack must keep, checked where a typo
would otherwise only show on a production host."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from quadra_pipeline.keys import load_pair
from quadra_pipeline_tests.defs.conftest import REPO_ROOT

COMPOSE_DIR = REPO_ROOT / "deploy" / "compose"
LONG_RUNNING = ("postgres", "wal", "broker", "objects", "mlflow", "code", "webserver", "daemon", "worker", "serving",
                "exporter", "prometheus", "alertmanager")
ONE_SHOT = ("db-init",)
TOOLS = ("backup",)  # `docker compose --profile tools run --rm backup ...`
#: Who holds which secret files (README, "Deployment": the table), by the name it reads them as.
IDENTITIES = {
    "postgres": {"postgres_password"},
    "db-init": {"postgres_password", "dagster_password", "quadra_password", "mlflow_password", "backup_password",
                "catalogue_password", "aliases_password", "wal_password", "monitor_password", "database_url"},
    "wal": {"wal.pgpass"},
    "exporter": {"dagster.pgpass", "database_url", "mlflow_password"},
    "serving": {"serving_token", "mlflow_password", "model-keyring.pem"},
    "broker": {"/etc/rabbitmq/conf.d/20-quadra.conf"},
    "objects": {"s3.json"},
    "mlflow": {"backend_store_uri", "admin_password", "flask_secret_key", "pipeline_password", "reader_password",
               "aws_credentials"},
    "code": {"dagster.pgpass", "database_url", "mlflow_password", "aws_credentials"},
    "webserver": {"dagster.pgpass", "aws_credentials"},
    "daemon": {"dagster.pgpass"},
    "worker": {"dagster.pgpass", "database_url", "mlflow_password", "model_signing_key", "celery_broker_url",
               "aws_credentials", "model-keyring.pem"},
    "backup": {"dagster.pgpass", "database_url", "backup_database_url", "mlflow_backend_uri", "backup_signing_key",
               "secret_key", "aws_credentials", "model-keyring.pem", "backup-keyring.pem", "wal_url"},
}
RUN_IDENTITIES = {
    "training": {"dagster.pgpass", "database_url", "mlflow_password", "model_signing_key", "celery_broker_url",
                 "aws_credentials", "model-keyring.pem"},
    "backup": {"dagster.pgpass", "database_url", "backup_database_url", "mlflow_backend_uri", "backup_signing_key",
               "secret_key", "aws_credentials", "model-keyring.pem", "backup-keyring.pem", "wal_url"},
}
SECRET_WORDS = re.compile(r"PASSWORD|SECRET|PRIVATE|TOKEN|_KEY$|DATABASE_URL$|BACKEND_URI$|BROKER_URL$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def instance() -> dict:
    return yaml.safe_load((COMPOSE_DIR / "dagster.yaml").read_text())


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory) -> Path:
    """What `make deploy-secrets` writes (its ownership step needs Docker and is left out)."""
    folder = tmp_path_factory.mktemp("secrets") / "secrets"
    made = subprocess.run([sys.executable, str(COMPOSE_DIR / "make_secrets.py"), "--dir", str(folder),
                           "--from-env", str(folder.parent / "no-old-env")], capture_output=True, text=True, check=True)
    assert "file(s) made" in made.stdout
    return folder


def held(service: dict) -> set[str]:
    return {s["target"] if isinstance(s, dict) else s for s in service.get("secrets", [])}


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    return {k: str(v) for k, v in env.items()} if isinstance(env, dict) else dict(e.split("=", 1) for e in env)


def test_every_service_has_a_health_check_a_restart_policy_and_waits_on_health(compose):
    services = compose["services"]
    assert set(services) == set(LONG_RUNNING) | set(ONE_SHOT) | set(TOOLS)
    assert all(services[name]["profiles"] == ["tools"] for name in TOOLS)  # never started by `up`
    for name in LONG_RUNNING:
        service = services[name]
        assert service["healthcheck"]["test"], name
        assert service["restart"] == "unless-stopped", name
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            wanted = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert condition == {"condition": wanted}, (name, dependency)
    assert services["db-init"]["restart"] == "no" and services["backup"]["restart"] == "no"
    checks = {name: " ".join(services[name]["healthcheck"]["test"]) for name in LONG_RUNNING}
    assert "pg_isready" in checks["postgres"] and "rabbitmq-diagnostics" in checks["broker"] and ".partial" in checks["wal"]
    assert "/health" in checks["mlflow"] and "/run/quadra/ready" in checks["mlflow"]  # healthy once its users exist
    assert "grpc-health-check" in checks["code"] and "/server_info" in checks["webserver"]
    assert "liveness-check" in checks["daemon"] and "worker --ping" in checks["worker"]
    assert "9464/health" in checks["exporter"] and "serve --probe --or-waiting" in checks["serving"]
    assert "9090/-/ready" in checks["prometheus"] and "9093/-/ready" in checks["alertmanager"]


def test_published_ports_bind_to_loopback_by_default(compose):
    published = {name: s["ports"] for name, s in compose["services"].items() if "ports" in s}
    assert set(published) == {"mlflow", "webserver", "serving", "prometheus", "alertmanager"}
    for name, ports in published.items():
        for port in ports:  # "${MLFLOW_BIND:-127.0.0.1}:${MLFLOW_PORT:-5000}:5000"
            assert re.fullmatch(r"\$\{[A-Z]+_BIND:-127\.0\.0\.1\}:\$\{[A-Z]+_PORT:-\d+\}:\d+", port), (name, port)


def test_no_secret_is_in_an_environment_or_on_a_command_line(compose, instance):
    """Every secret reaches its process as a file: the only secret-looking variables are the
    `*_FILE` ones, naming files under /run/secrets; no command holds a value."""
    for name, service in compose["services"].items():
        for variable, value in environment(service).items():
            if variable.endswith("_FILE"):
                assert value.startswith("/run/secrets/") and value.rsplit("/", 1)[1] in held(service), (name, variable)
                continue
            else:
                # Paths of folders, not secrets:
                assert not SECRET_WORDS.search(variable) or variable in {"QUADRA_SECRETS_HOST_DIR", "QUADRA_ALERT_SECRETS_DIR"}, (name, variable)
                assert "@" not in value or value.startswith("quadra@"), (name, variable)
        command = service.get("command") or []
        assert "$" not in " ".join(command) and "PASSWORD" not in " ".join(command).upper(), name
    for identity, spec in instance["run_launcher"]["config"]["identities"].items():
        for variable, value in spec["env"].items():
            assert variable.endswith("_FILE") and value.startswith("/run/secrets/") or not SECRET_WORDS.search(variable), variable
    assert "password" not in yaml.safe_dump(instance["storage"]).lower().replace("passfile", "")
    mlflow = environment(compose["services"]["mlflow"])
    assert "*" not in mlflow["MLFLOW_SERVER_ALLOWED_HOSTS"] and "*" not in mlflow["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"]
    script = (COMPOSE_DIR / "mlflow-server.sh").read_text()
    assert "--app-name basic-auth" in script and "--backend-store-uri" not in script
    assert "quadra_pipeline.registry.access" in script  # the pipeline's own, non-admin MLflow users


def test_each_service_holds_exactly_its_identitys_secrets(compose):
    assert {name: held(service) for name, service in compose["services"].items() if held(service)} == IDENTITIES
    # No Dagster process but the daemon holds the Docker socket; no container holds a signing
    # key but the worker (training identity); the MLflow admin password lives in MLflow alone.
    sockets = {name for name, s in compose["services"].items() if any("docker.sock" in v for v in s.get("volumes", []))}
    assert sockets == {"daemon"}
    assert [n for n, s in IDENTITIES.items() if "admin_password" in s] == ["mlflow"]
    assert [n for n, s in IDENTITIES.items() if "model_signing_key" in s] == ["worker"]  # runs: the launcher
    assert [n for n, s in IDENTITIES.items() if "backup_signing_key" in s] == ["backup"]
    # The socket's own group, never the root group by default: make deploy-up sets it, or refuses.
    assert compose["services"]["daemon"]["group_add"] == ["${DOCKER_GID:?make deploy-up sets DOCKER_GID to the group of /var/run/docker.sock}"]


def test_only_alertmanager_mounts_a_secrets_folder_and_read_only(compose, secrets_dir):
    """The alert receivers' secrets are optional files the operator adds (a Compose secret must
    exist): Alertmanager alone mounts their folder, read-only; make deploy-secrets makes it."""
    mounts = {name: [v for v in s.get("volumes", []) if "QUADRA_SECRETS_DIR" in str(v)] for name, s in compose["services"].items()}
    assert {name: m for name, m in mounts.items() if m} == {"alertmanager": [{
        "type": "bind", "source": "${QUADRA_SECRETS_DIR:-../secrets}/alertmanager", "target": "/run/secrets/alerts",
        "read_only": True, "bind": {"create_host_path": False}}]}
    assert environment(compose["services"]["alertmanager"])["QUADRA_ALERT_SECRETS_DIR"] == "/run/secrets/alerts"
    assert (secrets_dir / "alertmanager").is_dir() and not any((secrets_dir / "alertmanager").iterdir())
    # The pipeline's run-failure sensor holds no receiver's secret: it posts to Alertmanager.
    assert environment(compose["services"]["code"])["QUADRA_ALERTMANAGER_URL"] == "http://alertmanager:9093"


def test_every_secret_file_compose_names_is_one_make_deploy_secrets_writes(compose, secrets_dir):
    for name, spec in compose["secrets"].items():
        relative = spec["file"].split("}/", 1)[1]
        assert spec["file"].startswith("${QUADRA_SECRETS_DIR:-../secrets}/"), name
        assert (secrets_dir / relative).is_file(), f"compose's secret {name} names {relative}, which make deploy-secrets does not write"


def test_runs_get_only_their_jobs_secrets_and_every_variable_they_need(compose, instance, secrets_dir):
    launcher = instance["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("quadra_pipeline.instance.docker_run_launcher", "QuadraDockerRunLauncher")
    config = launcher["config"]
    daemon_env = set(environment(compose["services"]["daemon"]))
    forwarded = set(config["env_vars"])
    assert forwarded <= daemon_env, f"forwarded to runs but not set on the daemon: {sorted(forwarded - daemon_env)}"
    settings = set(compose["x-quadra-env"]) | set(compose["x-dagster-env"])
    assert settings <= forwarded, f"set for the stack but never passed to a run: {sorted(settings - forwarded)}"
    for identity, files in RUN_IDENTITIES.items():
        present = {p.name for p in (secrets_dir / identity).iterdir()}
        assert present == files, identity
        named = {value.rsplit("/", 1)[1] for variable, value in config["identities"][identity]["env"].items() if variable.endswith("_FILE")}
        assert named <= present, identity
    assert [v for v in config["identities"]["training"]["volumes"] if "backups" in v] == []  # only backups see backups
    assert "quadra-backups:/backups" in config["identities"]["backup"]["volumes"]
    assert compose["networks"]["default"]["name"] == config["network"]
    named_volumes = {v["name"] for v in compose["volumes"].values()}
    for identity in config["identities"].values():
        assert {spec.split(":")[0] for spec in identity.get("volumes", [])} <= named_volumes
    assert "DAGSTER_CURRENT_IMAGE" in environment(compose["services"]["code"])


def test_the_stack_keeps_the_development_instance_rules(instance):
    development = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    for key in ("run_coordinator", "concurrency", "run_monitoring", "run_retries"):
        assert instance[key] == development[key], key
    assert "postgres" in instance["storage"]
    assert instance["compute_logs"]["class"] == "S3ComputeLogManager"  # step output outlives the removed containers


def test_the_image_context_holds_only_wheels_and_the_deployment_files_it_runs():
    rules = [line for line in (REPO_ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*"
    assert sorted(rules[1:]) == sorted(["!build/wheels/deps/*.whl", "!build/wheels/project/*.whl",
                                        "!deploy/compose/dagster.yaml", "!deploy/compose/workspace.yaml",
                                        "!deploy/compose/mlflow-server.sh", "!deploy/compose/db-init/*",
                                        "!deploy/compose/wal/*"])
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "# syntax" not in dockerfile  # BuildKit would pull that frontend image
    assert "USER quadra" in dockerfile and "PIP_NO_INDEX=1" in dockerfile and "postgresql-client-15" in dockerfile


def test_make_deploy_secrets_writes_every_secret_once_mode_600(secrets_dir):
    files = sorted(p for p in secrets_dir.rglob("*") if p.is_file())
    assert len(files) >= 35
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in secrets_dir.iterdir() if p.is_dir())
    passwords = [p.read_text() for p in files if p.name.endswith("_password") and p.parent.name == "db-init"]
    assert len(set(passwords)) == len(passwords) and all(len(p) >= 48 for p in passwords)
    # The copies agree: the pipeline's MLflow password is the one MLflow makes its user with...
    assert (secrets_dir / "training" / "mlflow_password").read_text() == (secrets_dir / "mlflow" / "pipeline_password").read_text()
    assert (secrets_dir / "code" / "mlflow_password").read_text() == (secrets_dir / "mlflow" / "reader_password").read_text()
    # ...each role's URL carries the password its role is made with, and the broker URL the broker's user.
    quadra = (secrets_dir / "db-init" / "quadra_password").read_text()
    assert f"quadra:{quadra}@postgres:5432/quadra" in (secrets_dir / "training" / "database_url").read_text()
    backup = (secrets_dir / "db-init" / "backup_password").read_text()
    assert f"quadra_backup:{backup}@" in (secrets_dir / "backup" / "backup_database_url").read_text()
    broker = dict(line.split(" = ") for line in (secrets_dir / "broker" / "20-quadra.conf").read_text().splitlines())
    assert f"{broker['default_user']}:{broker['default_pass']}@broker:5672" in (secrets_dir / "training" / "celery_broker_url").read_text()
    # S3 identities: each scoped to its buckets; the training identity's key is the one in its credentials file.
    identities = {i["name"]: i for i in json.loads((secrets_dir / "objects" / "s3.json").read_text())["identities"]}
    assert "Write:quadra-mlflow" not in identities["quadra-training"]["actions"]
    assert all(not a.startswith("Write") for a in identities["quadra-webserver"]["actions"])
    assert identities["quadra-training"]["credentials"][0]["secretKey"] in (secrets_dir / "training" / "aws_credentials").read_text()
    # The keys load as the settings load them: P-256 for models, Ed25519 for backups.
    model = load_pair("ec-p256", private_text=None, private_file=secrets_dir / "training" / "model_signing_key", public_text=None,
                      public_file=None, names=("QUADRA_MODEL_SIGNING_KEY", "QUADRA_MODEL_VERIFY_KEY"))
    backup_key = load_pair("ed25519", private_text=None, private_file=secrets_dir / "backup" / "backup_signing_key",
                           public_text=None, public_file=None, names=("QUADRA_BACKUP_SIGNING_KEY", "QUADRA_BACKUP_VERIFY_KEY"))
    assert model.can_sign and backup_key.can_sign


def test_make_deploy_secrets_keeps_what_exists_and_completes_an_upgrade(tmp_path, secrets_dir):
    import shutil

    folder = tmp_path / "secrets"
    shutil.copytree(secrets_dir, folder)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    (folder / "training" / "celery_broker_url").unlink()  # a file a newer version added
    again = subprocess.run([sys.executable, str(COMPOSE_DIR / "make_secrets.py"), "--dir", str(folder),
                            "--from-env", str(tmp_path / "none")], capture_output=True, text=True, check=True)
    assert "1 file(s) made" in again.stdout
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before  # the same broker password again


def test_make_deploy_secrets_takes_over_an_older_stacks_env_file(tmp_path):
    """The stack before secrets-as-files kept them in deploy/.env: its passwords (which the
    database already holds) and keys move into the files."""
    from quadra_pipeline.keys import generate

    model_pem = generate("ec-p256").private_pem.decode().replace("\n", "\\n")
    old = tmp_path / "old.env"
    old.write_text("# old\nPOSTGRES_PASSWORD=pg-old-password\nQUADRA_DB_PASSWORD=quadra-old-password\n"
                   f"QUADRA_MODEL_SIGNING_KEY='{model_pem}'\nMLFLOW_ADMIN_PASSWORD=admin-old\n")
    done = subprocess.run([sys.executable, str(COMPOSE_DIR / "make_secrets.py"), "--dir", str(tmp_path / "s"), "--from-env", str(old)],
                          capture_output=True, text=True, check=True)
    assert "took the secrets of" in done.stdout and "delete" in done.stdout
    assert "lacks" in done.stderr and "DAGSTER_DB_PASSWORD" in done.stderr  # what had to be made fresh, said
    assert (tmp_path / "s" / "postgres" / "postgres_password").read_text() == "pg-old-password"
    assert "quadra:quadra-old-password@" in (tmp_path / "s" / "training" / "database_url").read_text()
    assert (tmp_path / "s" / "mlflow" / "admin_password").read_text() == "admin-old"
    assert (tmp_path / "s" / "training" / "model_signing_key").read_text() == model_pem.replace("\\n", "\n")


def test_the_secrets_are_never_committed():
    for path in ("deploy/secrets/training/database_url", "deploy/.env"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO_ROOT).returncode == 0, path


def test_make_deploy_test_without_docker_says_so_and_fails(tmp_path):
    """A machine where Docker does not answer: the deployment targets stop at once, saying why."""
    environment_ = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    done = subprocess.run(["make", "--no-print-directory", "docker-check"], cwd=REPO_ROOT, env=environment_,
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "Docker is not available here" in done.stderr


def test_the_daemon_never_gets_the_root_group_by_default(tmp_path):
    """`make deploy-up` gives the daemon the Docker socket's own group; a socket of the root group
    stops it with what to do (an explicit DOCKER_GID=0 is the user's own choice); no socket, too."""
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_GID", "MAKEFLAGS")}

    def docker_group(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["make", "--no-print-directory", "docker-group", *args], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True)

    root_group_file = Path("/etc/passwd")  # stands for a socket whose group is root's
    assert root_group_file.stat().st_gid == 0
    refused = docker_group(f"DOCKER_SOCKET={root_group_file}")
    assert refused.returncode != 0 and "belongs to the root group (gid 0)" in refused.stderr
    assert docker_group(f"DOCKER_SOCKET={root_group_file}", "DOCKER_GID=0").returncode == 0  # said explicitly
    missing = docker_group(f"DOCKER_SOCKET={tmp_path / 'no.sock'}")
    assert missing.returncode != 0 and "cannot find the group of" in missing.stderr
    own = tmp_path / "own.sock"
    own.touch()
    if own.stat().st_gid != 0:
        assert docker_group(f"DOCKER_SOCKET={own}").returncode == 0


def test_a_rotation_keeps_the_old_public_keys_in_the_keyrings(tmp_path, secrets_dir):
    """`make deploy-rotate-keys`: new signing keys; every keyring keeps the retired public key
    (older backups and versions verify), and gains the new one; the old private key is gone."""
    import shutil

    from quadra_pipeline.keys import read_keyring

    folder = tmp_path / "secrets"
    shutil.copytree(secrets_dir, folder)
    old_model, old_backup = (folder / "training" / "model_signing_key").read_text(), (folder / "backup" / "backup_signing_key").read_text()
    done = subprocess.run([sys.executable, str(COMPOSE_DIR / "make_secrets.py"), "--dir", str(folder), "--rotate"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.count("new key") == 2
    new_model = (folder / "training" / "model_signing_key").read_text()
    assert new_model != old_model and (folder / "backup" / "backup_signing_key").read_text() != old_backup
    assert old_model not in "".join(p.read_text() for p in folder.rglob("*") if p.is_file())  # the old private key is gone
    for ring, algorithm in (("training/model-keyring.pem", "ec-p256"), ("backup/model-keyring.pem", "ec-p256"),
                            ("backup/backup-keyring.pem", "ed25519")):
        keys = read_keyring(folder / ring, algorithm, "keyring")
        assert len(keys) == 2, ring
        assert stat.S_IMODE((folder / ring).stat().st_mode) == 0o600
    assert (folder / "public" / "model-signing.pub").read_text() in (folder / "training" / "model-keyring.pem").read_text()
