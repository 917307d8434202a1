"""The production stack, built and run for real on this machine's Docker (`make deploy-test`).

In order, on one stack: the image is built (`make image`), the stack refuses to start without
its secrets, starts (`make deploy-up`) and every service's health check passes; then, read as a
security reviewer would, from the running containers: no secret in any container's environment
or command line, each service holding exactly its row of the README's table, the webserver with
no private key, MLflow's pipeline user not admin, the dump role read-only. `training_job` runs
in a container of its own holding the training identity only, which is removed when the run
ends while its logs stay readable; the registry answers behind authentication; the hourly backup
runs in a container holding the backup identity only, and its integrity check and restore drill
pass; a sweep fans out to two worker containers and survives one killed mid-trial, with MLflow's
artifacts in the object store; `make deploy-down` and `make deploy-up` keep everything. Then
everything the test made is removed. The phases' times are printed at the end (conftest.py)."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time

import pytest

from .stack import PHASES, SERVICES, Stack, StackError, docker, leftovers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

#: What each service may hold (README, "Deployment": who holds what), by the files mounted.
TABLE = {
    "postgres": {"/run/secrets/postgres_password"},
    "wal": {"/run/secrets/wal.pgpass"},
    "broker": {"/etc/rabbitmq/conf.d/20-quadra.conf"},
    "objects": {"/run/secrets/s3.json"},
    "mlflow": {f"/run/secrets/{n}" for n in ("backend_store_uri", "admin_password", "flask_secret_key",
                                             "pipeline_password", "reader_password", "aws_credentials")},
    "code": {f"/run/secrets/{n}" for n in ("dagster.pgpass", "database_url", "mlflow_password", "aws_credentials")},
    "webserver": {"/run/secrets/dagster.pgpass", "/run/secrets/aws_credentials"},
    "daemon": {"/run/secrets/dagster.pgpass"},
    "worker": {f"/run/secrets/{n}" for n in ("dagster.pgpass", "database_url", "mlflow_password", "model_signing_key",
                                             "celery_broker_url", "aws_credentials", "model-keyring.pem")},
    "exporter": {f"/run/secrets/{n}" for n in ("dagster.pgpass", "database_url", "mlflow_password")},
    "serving": {f"/run/secrets/{n}" for n in ("serving_token", "mlflow_password", "model-keyring.pem")},
    "prometheus": set(),
    "alertmanager": {"/run/secrets/alerts"},  # the receivers' secrets the operator puts there (read-only)
}
RUNS = {
    "training": {"dagster.pgpass", "database_url", "mlflow_password", "model_signing_key", "celery_broker_url",
                 "aws_credentials", "model-keyring.pem"},
    "backup": {"dagster.pgpass", "database_url", "backup_database_url", "mlflow_backend_uri", "backup_signing_key",
               "secret_key", "aws_credentials", "model-keyring.pem", "backup-keyring.pem", "wal_url"},
}
#: WAL bytes each kind of run made the server write (and the `wal` service ship), by job.
WAL_SHIPPED: dict[str, int] = {}
#: Seconds the stack is left alone to measure what it writes doing nothing but its own upkeep
#: (the daemon's heartbeats and ticks, sensors, MLflow's and the exporter's reads).
IDLE_WINDOW_S = 30
SWEEP = {"ops": {"corpus": {"config": {"training_rows": 1200}},
                 "hyperparameter_sweep": {"config": {"grid": {"seed": [0, 1, 2, 3]},
                                                     "fixed": {"field_size": 64, "batches": 100, "rows_per_batch": 10}}},
                 "sweep_registered_model": {"config": {"tolerance": 1.0}}}}


def secret_mounts(container: dict) -> set[str]:
    """The secret files a container holds: its bind mounts from the secrets folder."""
    return {m["Destination"] for m in container["Mounts"] if m["Type"] == "bind" and "/secrets" in m["Source"]}


def leaked(stack: Stack, text: str) -> list[str]:
    return [where for where, value in stack.secret_values().items() if value in text]


def test_image_builds_from_the_wheelhouse_non_root_with_pg_dump(stack):
    """`make image`: the wheelhouse from the pinned set, then the image, with no package index."""
    stack.timed("image build", "make image: wheels on the host, then docker build", "image")
    config = json.loads(docker("image", "inspect", stack.image).stdout)[0]
    PHASES.append(("image size", config["Size"] / 1e9, "GB (not seconds): docker image inspect"))
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
    assert all(f.startswith("/opt/venv/lib/") or f.startswith("/etc/") or f.startswith("/usr/") for f in found if f.endswith(".pem"))
    keys = docker("run", "--rm", "--entrypoint", "sh", stack.image, "-c",
                  "grep -rls 'PRIVATE KEY-----' /opt/dagster /data /backups /home /tmp 2>/dev/null; true").stdout.split()
    assert keys == []


def test_the_stack_refuses_to_start_without_its_secrets(stack, tmp_path):
    """Without its secret files nothing runs, and Docker names the file that is missing."""
    missing = Stack(secrets_dir=tmp_path / "no-secrets", image=stack.image, dagster_port=stack.dagster_port,
                    mlflow_port=stack.mlflow_port)
    refused = missing.compose("up", "-d", check=False)
    assert refused.returncode != 0
    # A secret file, or the folder of the alert receivers' secrets (whichever container Compose makes first).
    assert re.search(r"bind source path does not exist: \S*/no-secrets/\w[\w-]*(/[\w.-]+)?", refused.stderr), refused.stderr[-1500:]
    running = docker("ps", "-q", "--filter", "label=com.docker.compose.project=quadra").stdout.split()
    assert running == [], "a service started without its secrets"
    missing.compose("down", "--volumes", "--remove-orphans", check=False)
    assert not leftovers()


def test_every_service_starts_and_its_health_check_passes(stack):
    stack.timed("stack up", "make deploy-secrets + deploy-up: start, wait until every service is healthy", "deploy-up")
    assert oct(stack.secrets_dir.stat().st_mode & 0o777) == "0o700"
    assert {oct(p.stat().st_mode & 0o777) for p in stack.secrets_dir.rglob("*") if p.is_file()} == {"0o600"}
    for service in SERVICES:
        state = stack.container(service)
        assert state["Config"].get("Healthcheck", {}).get("Test"), f"{service} has no health check"
        health = state["State"]["Health"]
        assert health["Status"] == "healthy", f"{service}: {health['Status']}: {health['Log'][-1:]}"
        assert state["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped", service
        for binding in (state["HostConfig"]["PortBindings"] or {}).values():
            assert all(b["HostIp"] == "127.0.0.1" for b in binding), f"{service} publishes beyond loopback: {binding}"
    db_init = stack.compose("ps", "-a", "--format", "{{.Service}} {{.State}} {{.ExitCode}}").stdout
    assert "db-init exited 0" in db_init, db_init
    # The online service before any champion: alive (its health check), not ready, says why.
    status, health, _ = stack.serving("/health")
    assert status == 503 and health["status"] == "waiting", health
    assert stack.serving("/ping")[0] == 503


def test_no_service_holds_a_secret_in_its_environment_or_on_a_command_line_and_each_only_its_own(stack):
    """A security review on the running stack: `docker inspect` of every service container shows
    no secret value in Config.Env; no process's command line holds one; each container mounts
    exactly the secret files of its row in the README's table; the daemon alone has the Docker
    socket, with the socket's own group (never root's); the webserver's filesystem holds no key."""
    for service in SERVICES:
        container = stack.container(service)
        env = "\n".join(container["Config"]["Env"] or [])
        assert not leaked(stack, env), (service, leaked(stack, env))
        assert secret_mounts(container) == TABLE[service], service
        processes = docker("top", container["Id"], "-eo", "pid,args").stdout
        assert not leaked(stack, processes), (service, leaked(stack, processes))
        sockets = [m for m in container["Mounts"] if m["Source"] == "/var/run/docker.sock"]
        assert bool(sockets) == (service == "daemon"), service
    groups = stack.container("daemon")["HostConfig"]["GroupAdd"]
    assert groups == [str(__import__("os").stat("/var/run/docker.sock").st_gid)] and groups != ["0"]
    keys = stack.exec("webserver", "sh", "-c", "grep -rlIs -e 'PRIVATE KEY-----' / --exclude-dir=proc --exclude-dir=sys "
                                                "--exclude-dir=dev 2>/dev/null | grep -v '^/opt/venv/lib/python3.11/site-packages/' ; true").stdout.split()
    assert keys == [], keys


def inspect_while_running(stack: Stack, run_id: str, timeout: float = 300) -> dict:
    """`docker inspect` of a run's container while it runs (it is removed when the run ends)."""
    def running() -> dict | None:
        ids = docker("ps", "-q", "--filter", f"label=dagster/run_id={run_id}").stdout.split()
        return stack.inspect(ids[0]) if ids else None

    return stack.wait(f"run {run_id}'s container", running, timeout, every=0.5)


def captured_logs(stack: Stack, run_id: str) -> str:
    """The step output the UI shows for a run: each `LogsCapturedEvent`'s file, read through
    GraphQL (the webserver reads it from the object store's log bucket)."""
    keys, cursor = [], None
    while True:
        logs = stack.graphql(
            "query($id: ID!, $after: String) { logsForRun(runId: $id, afterCursor: $after) { ... on EventConnection { "
            "events { __typename ... on LogsCapturedEvent { fileKey } } cursor hasMore } } }", {"id": run_id, "after": cursor})["logsForRun"]
        keys += [e["fileKey"] for e in logs["events"] if e["__typename"] == "LogsCapturedEvent"]
        if not logs["hasMore"]:
            break
        cursor = logs["cursor"]
    assert keys, f"run {run_id} captured no logs"
    text = []
    for key in dict.fromkeys(keys):
        captured = stack.graphql("query($id: ID!, $k: String!) { runOrError(runId: $id) { ... on Run { capturedLogs(fileKey: $k) "
                                 "{ stdout stderr } } } }", {"id": run_id, "k": key})["runOrError"]["capturedLogs"]
        text.append((captured.get("stdout") or "") + (captured.get("stderr") or ""))
    return "\n".join(text)


def test_training_job_runs_in_its_own_container_with_the_training_identity_only_and_leaves_nothing(stack, runs):
    started, wal = time.perf_counter(), stack.wal_position()
    run_id = stack.launch("training_job")
    container = inspect_while_running(stack, run_id)
    assert container["Config"]["Image"] == stack.image and "quadra" in container["NetworkSettings"]["Networks"]
    [folder] = [m for m in container["Mounts"] if m["Destination"] == "/run/secrets"]  # its identity's folder, read-only
    assert folder["Source"].endswith("/training") and folder["RW"] is False
    held = docker("exec", container["Id"], "ls", "/run/secrets").stdout.split()
    assert set(held) == RUNS["training"], held
    env = "\n".join(container["Config"]["Env"])
    assert not leaked(stack, env), leaked(stack, env)
    assert "QUADRA_BACKUP_SIGNING_KEY_FILE" not in env and "quadra-backups" not in json.dumps(container["Mounts"])
    assert container["HostConfig"]["AutoRemove"] is True
    run = stack.wait_for_run(run_id)
    PHASES.append(("training_job", time.perf_counter() - started, "dagster job launch -> SUCCESS, its steps on the workers"))
    assert run["status"] == "SUCCESS", stack.run_messages(run_id)[-20:]
    WAL_SHIPPED["training_job"] = stack.wal_position() - wal
    runs["training"] = run_id
    assert int(stack.sql("quadra", "select count(*) from training_metrics")) > 0
    stack.wait("the run's container removed", lambda: not docker("ps", "-aq", "--filter", f"label=dagster/run_id={run_id}").stdout.strip(), 60)
    logs = captured_logs(stack, run_id)
    assert "batch 20 of 20" in logs, logs[-2000:]  # the step output outlives the container
    assert not leaked(stack, logs)


def test_the_registry_is_behind_authentication_and_the_pipeline_is_not_its_admin(stack, runs):
    status, answer = stack.mlflow("/api/2.0/mlflow/registered-models/get?name=quadra-matrix")
    assert status == 200, answer
    aliases = {a["alias"]: a["version"] for a in answer["registered_model"].get("aliases", [])}
    assert aliases.get("champion") == "1"
    status, version = stack.mlflow("/api/2.0/mlflow/model-versions/get?name=quadra-matrix&version=1")
    tags = {t["key"]: t["value"] for t in version["model_version"]["tags"]}
    assert len(tags["checkpoint_sha256"]) == 64 and tags.get("dagster_run_id") == runs["training"]
    assert stack.mlflow("/api/2.0/mlflow/registered-models/get?name=quadra-matrix", credentials=False)[0] == 401
    status, text = stack.mlflow("/api/2.0/mlflow/registered-models/search", headers={"Host": "attacker.example:5000"})
    assert status == 403, text  # the allowed hosts come from the environment, never `*`
    pipeline = stack.secret("training/mlflow_password")
    status, user = stack.mlflow("/api/2.0/mlflow/users/get?username=quadra-pipeline")
    assert status == 200 and user["user"]["is_admin"] is False
    status, text = stack.mlflow("/api/2.0/mlflow/registered-models/delete", user="quadra-pipeline", password=pipeline,
                                method="DELETE", body={"name": "quadra-matrix"})
    assert status == 403, text
    assert stack.mlflow("/api/2.0/mlflow/registered-models/get?name=quadra-matrix", user="quadra-pipeline", password=pipeline)[0] == 200
    # An alias moved outside the pipeline (the admin, in MLflow's UI or API): the code server's
    # alias-history sensor records it, with its read-mostly identity (checked by a later test).
    status, text = stack.mlflow("/api/2.0/mlflow/registered-models/alias", method="POST",
                                body={"name": "quadra-matrix", "alias": "staging", "version": "1"})
    assert status == 200, text


def test_the_dump_role_reads_everything_and_writes_nothing(stack):
    password = stack.secret("db-init/backup_password")
    for database, table in (("quadra", "training_metrics"), ("mlflow", "runs")):
        url = f"postgresql://quadra_backup@127.0.0.1:5432/{database}"
        script = f"printf '*:*:*:quadra_backup:%s\\n' \"$(cat)\" > /tmp/pgpass; chmod 600 /tmp/pgpass; " \
                 f"PGPASSFILE=/tmp/pgpass psql -d {url} -tAc 'select count(*) from {table}' ; " \
                 f"PGPASSFILE=/tmp/pgpass psql -d {url} -tAc 'delete from {table}' ; rm -f /tmp/pgpass"
        done = stack.compose("exec", "-T", "postgres", "sh", "-c", script, check=False, input=password)
        assert done.stdout.strip().split("\n")[0].isdigit(), done.stdout + done.stderr
        assert "permission denied" in done.stderr, done.stderr
    assert stack.sql("quadra", "select count(*) from training_metrics") != "0"


def test_the_hourly_backup_runs_with_the_backup_identity_only_and_the_drill_checks_the_champion(stack, runs):
    hour = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d-%H:00")
    started, wal = time.perf_counter(), stack.wal_position()
    run_id = stack.launch("backup_job", tags={"dagster/partition": hour})
    container = inspect_while_running(stack, run_id)
    [folder] = [m for m in container["Mounts"] if m["Destination"] == "/run/secrets"]
    assert folder["Source"].endswith("/backup") and folder["RW"] is False
    held = docker("exec", container["Id"], "ls", "/run/secrets").stdout.split()
    assert set(held) == RUNS["backup"], held
    assert not leaked(stack, "\n".join(container["Config"]["Env"]))
    assert "QUADRA_MODEL_SIGNING_KEY_FILE" not in "\n".join(container["Config"]["Env"])
    run = stack.wait_for_run(run_id)
    PHASES.append(("backup", time.perf_counter() - started, f"backup_job for {hour}: backup, integrity, restore drill"))
    assert run["status"] == "SUCCESS", stack.run_messages(run_id)[-20:]
    WAL_SHIPPED["backup_job"] = stack.wal_position() - wal
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
    assert stack.sql("postgres", "select count(*) from pg_database where datname like '%drill%' or datname like '%scratch%'") == "0"
    # The catalogue row: written by the catalogue role, the backup's only write to the project database.
    assert int(stack.sql("quadra", "select count(*) from backups")) >= 1


def test_quadra_backup_verify_passes_in_the_stack(stack):
    started = time.perf_counter()
    verified = stack.backup_tool("verify", check=False)
    PHASES.append(("backup verify", time.perf_counter() - started, "quadra backup verify (every backup, the history)"))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "history" in verified.stdout and " OK " in verified.stdout


def test_a_sweep_fans_out_to_two_workers_survives_one_killed_mid_trial_and_keeps_artifacts_in_s3(stack, runs):
    """Two worker containers (each a host); a sweep launched with `dagster job launch`; one worker
    killed in the middle of a trial: the trial runs again on the other, the sweep succeeds with
    one finished child run per trial; MLflow's artifacts are in the object store's bucket."""
    stack.compose("up", "-d", "--wait", "--scale", "worker=2", "worker")
    workers = stack.containers("worker")
    assert len(workers) == 2
    names = {f"quadra@{w['Config']['Hostname']}": w for w in workers}
    started = time.perf_counter()
    run_id = stack.launch("sweep_job", config=SWEEP)

    def trial_on_a_worker() -> str | None:
        rows = stack.sql("mlflow", "select t.value from tags t join runs r on r.run_uuid = t.run_uuid "
                                   f"join tags d on d.run_uuid = r.run_uuid and d.key = 'dagster_run_id' and d.value = '{run_id}' "
                                   "where t.key = 'worker' and r.status = 'RUNNING' limit 1")
        return rows or None

    victim_name = stack.wait("a trial running on a worker", trial_on_a_worker, 600, every=1)
    time.sleep(2)  # in the middle of it
    docker("kill", names[victim_name]["Id"])
    killed = time.perf_counter()
    run = stack.wait_for_run(run_id, timeout=900)
    assert run["status"] == "SUCCESS", stack.run_messages(run_id)[-30:]
    PHASES.append(("sweep (4 trials, 2 workers)", time.perf_counter() - started,
                   f"dagster job launch -> SUCCESS; one worker killed mid-trial, the rest took {time.perf_counter() - killed:.0f} s"))
    statuses = stack.sql("mlflow", "select string_agg(t.value || ':' || r.status || ':' || w.value, ',' order by t.value, r.status) "
                                   "from runs r join tags t on t.run_uuid = r.run_uuid and t.key = 'trial' "
                                   "join tags w on w.run_uuid = r.run_uuid and w.key = 'worker' "
                                   f"join tags d on d.run_uuid = r.run_uuid and d.key = 'dagster_run_id' and d.value = '{run_id}'").split(",")
    finished = [s for s in statuses if ":FINISHED:" in s]
    assert sorted(s.split(":")[0] for s in finished) == ["trial_000", "trial_001", "trial_002", "trial_003"], statuses
    assert [s for s in statuses if ":FAILED:" in s and s.endswith(victim_name)], statuses  # the killed attempt, closed
    assert len({s.rsplit(":", 1)[1] for s in statuses}) == 2, statuses  # trials on both workers
    assert stack.sql("quadra", "select count(*) from model_versions where description like "
                               f"'%{run_id}%'") == "1"  # the best trial, registered once
    runs["sweep"] = run_id
    stack.compose("up", "-d", "--scale", "worker=2", "worker")  # the killed one back (its restart policy may have)
    # MLflow's artifacts: in the bucket, read through the S3 API with MLflow's own identity.
    listing = stack.exec("mlflow", "python3", "-c",
                         "import boto3; from botocore.config import Config; "
                         "c = boto3.client('s3', config=Config(s3={'addressing_style': 'path'})); "
                         "print(sum(1 for p in c.get_paginator('list_objects_v2').paginate(Bucket='quadra-mlflow', Prefix='artifacts/') "
                         "for o in p.get('Contents', []) if o['Key'].endswith('checkpoint.pt')))").stdout.strip()
    assert int(listing) >= 2, listing  # the training run's version and the sweep's
    assert not [v for v in docker("volume", "ls", "-q").stdout.split() if "mlartifacts" in v]  # no local artifact volume


def test_keys_rotate_on_the_running_stack_and_everything_signed_before_still_verifies(stack, runs):
    """`make deploy-rotate-keys`: new signing keys, the old public keys kept in the keyrings.
    Backups from before verify and restore; a new backup is signed with the new key; a model
    version from before verifies and can be promoted (a rollback); with the old key taken out of
    the keyring, what it signed fails, naming its key id."""
    before = json.loads(stack.backup_tool("keys", "--json").stdout)
    [old_backup_key] = [k for k in before["keys"] if k["signing"]]
    old_backups = stack.backup_tool("list").stdout.split()
    started = time.perf_counter()
    stack.make("deploy-rotate-keys")
    PHASES.append(("key rotation", time.perf_counter() - started, "make deploy-rotate-keys: new keys, workers recreated, every backup verified"))
    assert stack.backup_tool("verify", check=False).returncode == 0  # the old backups, with the old key in the keyring
    restored = stack.backup_tool("restore", old_backups[0].split()[0], "--target", "/tmp/restored", check=False)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    hour = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d-%H:00")  # a past or future hour is refused (a backfill)
    new_backup = stack.launch("backup_job", tags={"dagster/partition": hour})
    assert stack.wait_for_run(new_backup)["status"] == "SUCCESS", stack.run_messages(new_backup)[-20:]
    after = json.loads(stack.backup_tool("keys", "--json").stdout)
    [new_backup_key] = [k for k in after["keys"] if k["signing"]]
    assert new_backup_key["key_id"] != old_backup_key["key_id"]
    assert len(new_backup_key["signed"]) >= 1 and old_backup_key["key_id"] in {k["key_id"] for k in after["keys"]}
    # A rollback to a version signed before the rotation: verified with the keyring, promoted.
    rollback = stack.launch("promote_model_job", config={"ops": {"promote_version": {"config": {"version": 1, "reason": "rollback after rotation"}}}})
    assert stack.wait_for_run(rollback)["status"] == "SUCCESS", stack.run_messages(rollback)[-20:]
    status, answer = stack.mlflow("/api/2.0/mlflow/registered-models/get?name=quadra-matrix")
    assert {a["alias"]: a["version"] for a in answer["registered_model"]["aliases"]}["champion"] == "1"
    # The old key taken out of the backup keyring: what it signed fails, by key id.
    ring = stack.secrets_dir / "backup" / "backup-keyring.pem"
    kept = ring.read_bytes()
    new_public = (stack.secrets_dir / "public" / "backup-signing.pub").read_text()
    try:
        ring.write_text(new_public)
        failed = stack.backup_tool("verify", check=False)
        assert failed.returncode != 0 and old_backup_key["key_id"] in failed.stdout + failed.stderr, failed.stdout[-1500:]
    finally:
        ring.write_bytes(kept)
    assert stack.backup_tool("verify", check=False).returncode == 0


def test_bytes_shipped_off_the_host_in_an_hour_against_the_hourly_backups_own(stack):
    """What leaves the host in an hour of normal work (a training run and the hourly backup_job),
    against what the hourly backup itself adds: the WAL the `wal` service streams (the stack's own
    upkeep over a quiet window, scaled to an hour, plus the WAL of one training run and one backup
    run, measured above), and the off-site push of the newest (incremental) backup. The push is
    incremental: it sends about what the backup added, never the repository again."""
    if {"training_job", "backup_job"} - set(WAL_SHIPPED):
        pytest.skip("needs the WAL the training and backup tests above measured (run the whole module)")
    quiet, started = stack.wal_position(), time.monotonic()
    time.sleep(IDLE_WINDOW_S)  # a measurement window, not a wait: nothing is launched in it
    upkeep = (stack.wal_position() - quiet) / (time.monotonic() - started) * 3600
    backup, pushed = stack.latest_materialization("backup"), stack.latest_materialization("offsite_backup")
    assert backup and pushed and pushed["partition"] == backup["partition"], (backup, pushed)
    added, sent = backup["stored_bytes"], pushed["bytes_written"]
    wal = upkeep + WAL_SHIPPED["training_job"] + WAL_SHIPPED["backup_job"]
    assert upkeep > 0 and WAL_SHIPPED["training_job"] > 0 and sent > 0
    assert sent <= 2 * added + (1 << 20), (sent, added)  # only what the copy lacks
    mb = 1e6
    PHASES.append(("shipped/h: WAL, upkeep", upkeep / mb, f"MB per hour (not seconds): the idle stack's WAL over {IDLE_WINDOW_S} s, x{3600 / IDLE_WINDOW_S:.0f}"))
    PHASES.append(("shipped/h: WAL, training_job", WAL_SHIPPED["training_job"] / mb, "MB: one default training run's WAL"))
    PHASES.append(("shipped/h: WAL, backup_job", WAL_SHIPPED["backup_job"] / mb, "MB: one hourly backup run's WAL (the drill's scratch restores)"))
    PHASES.append(("shipped/h: off-site push", sent / mb, f"MB: the newest hourly backup pushed (it added {added / mb:.2f} MB to the repository)"))
    PHASES.append(("shipped/h: total vs the backup", (wal + sent) / max(added, 1), f"x the hourly backup's own {added / mb:.2f} MB "
                   f"({(wal + sent) / mb:.1f} MB shipped in the hour)"))


def test_an_alias_moved_outside_the_pipeline_was_recorded_by_the_sensor_with_its_limited_role(stack):
    """The admin's move of `staging` (above, minutes ago): recorded as a move by `external` by the
    code server's sensor, which holds MLflow's reader and a role limited to the alias tables."""
    recorded = stack.wait("the external move recorded", lambda: stack.sql(
        "quadra", "select count(*) from model_alias_events where alias = 'staging' and moved_by = 'external'") == "1", 180, every=5)
    assert recorded


def test_the_champion_is_served_behind_its_token_and_a_promotion_within_10_s(stack):
    """`serving` answers MLflow's scoring protocol with the bearer token only (401 without or
    with a wrong one); it serves the champion (version 1 again, after the rollback above); a
    training run that passes the gate is served within 10 s of its promotion, with no failed
    request while a client on the host keeps asking."""
    token = stack.secret("serving/serving_token")
    texts = {"inputs": ["the quick brown fox jumps over the lazy dog", "a second sentence, longer than ten"]}
    assert stack.serving("/invocations", body=texts)[0] == 401
    assert stack.serving("/invocations", body=texts, token="not-" + token)[0] == 401
    assert stack.serving("/version")[0] == 401
    status, health, _ = stack.serving("/health")
    assert token not in json.dumps(health)
    champion = lambda: {a["alias"]: a["version"] for a in stack.mlflow(  # noqa: E731
        "/api/2.0/mlflow/registered-models/get?name=quadra-matrix")[1]["registered_model"]["aliases"]}["champion"]
    before = champion()
    stack.wait(f"version {before} served", lambda: str(stack.serving("/version", token=token)[1].get("version")) == before, 120)
    status, answer, headers = stack.serving("/invocations", body=texts, token=token)
    assert status == 200 and len(answer["predictions"]) == 2 and headers["x-quadra-model-version"] == before, answer

    answers: list[tuple[float, int, str | None]] = []
    moved: list[float] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            status, _, got = stack.serving("/invocations", body=texts, token=token)
            answers.append((time.time(), status, got.get("x-quadra-model-version")))
            time.sleep(0.05)

    def alias_poller() -> None:
        while not stop.is_set() and not moved:
            if champion() != before:
                moved.append(time.time())
            time.sleep(0.2)

    threads = [threading.Thread(target=client, daemon=True), threading.Thread(target=alias_poller, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        trained = stack.launch("training_job", config={"ops": {"registered_model": {"config": {"tolerance": 1.0}}}})
        assert stack.wait_for_run(trained)["status"] == "SUCCESS", stack.run_messages(trained)[-20:]
        new = stack.wait("the champion moved", lambda: champion() != before and champion(), 60)
        stack.wait(f"version {new} answering", lambda: any(v == new for _, _, v in answers), 30, every=0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=20)
    first_new = min(t for t, _, v in answers if v == new)
    PHASES.append(("serving: promotion -> served", first_new - moved[0],
                   f"champion {before} -> {new} seen in MLflow, then the first answer of {new}"))
    assert first_new - moved[0] <= 10
    failed = [(t, s) for t, s, _ in answers if s != 200]
    assert failed == [], f"{len(failed)} of {len(answers)} requests failed during the swap: {failed[:5]}"
    version = stack.serving("/version", token=token)[1]
    assert str(version["version"]) == new and str(version["alias_move"]["to_version"]) == new
    assert str(version["alias_move"]["from_version"]) == before
    status, metrics, _ = stack.serving("/metrics", token=token)
    assert status == 200 and "quadra" in str(metrics)


def test_down_and_up_again_keeps_runs_metrics_registry_and_backups(stack, runs):
    metrics = stack.sql("quadra", "select count(*) from training_metrics")
    backups = stack.backup_tool("list").stdout.split()
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
    assert stack.backup_tool("list").stdout.split() == backups
    assert stack.backup_tool("verify", check=False).returncode == 0
    if docker("ps", "-aq", "--filter", "label=io.quadra.role=run").stdout.strip():
        raise StackError("run containers were left behind")
