"""Driving the Compose stack of deploy/compose/ from a test: the Make targets users run, the
`docker compose` CLI, Dagster's GraphQL API and MLflow's REST API on the published ports.

Everything a test starts is named so it can be found and removed: the stack is the Compose
project `quadra` (its volumes `quadra-*`, its network `quadra`), each run's container carries
the label `io.quadra.role=run`, and the image gets a tag of its own."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from quadra_pipeline_tests.defs.conftest import REPO_ROOT

#: (phase, seconds, what was done): printed at the end of `make deploy-test`.
PHASES: list[tuple[str, float, str]] = []

PROJECT = "quadra"
RUN_LABEL = "io.quadra.role=run"
SERVICES = ("postgres", "wal", "broker", "objects", "mlflow", "code", "webserver", "daemon", "worker", "serving",
            "exporter", "prometheus", "alertmanager")


class StackError(AssertionError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def docker(*args: str, check: bool = True, timeout: float = 600, input: str | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, input=input)
    if check and done.returncode:
        raise StackError(f"docker {' '.join(args[:3])} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return done


def leftovers() -> list[str]:
    """What of a `quadra` stack exists on this Docker host (containers, volumes, network)."""
    found = docker("ps", "-a", "--filter", f"label=com.docker.compose.project={PROJECT}", "--format", "container {{.Names}}").stdout.split("\n")
    found += docker("ps", "-a", "--filter", f"label={RUN_LABEL}", "--format", "run container {{.Names}}").stdout.split("\n")
    found += [f"volume {v}" for v in docker("volume", "ls", "-q", "--filter", f"name={PROJECT}-").stdout.split()]
    found += [f"network {n}" for n in docker("network", "ls", "-q", "--filter", f"name=^{PROJECT}$").stdout.split()]
    return [line for line in found if line.strip()]


def left_by_an_earlier_test() -> bool:
    """Whether the `quadra` stack on this host is one an earlier `make deploy-test` left (killed
    before its cleanup, or a machine copied while it ran): its secret files are mounted from a
    pytest temporary folder, and nobody else's are. A user's stack (deploy/secrets/) never is."""
    containers = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}").stdout.split()
    if not containers:
        return False
    sources = {m["Source"] for c in json.loads(docker("inspect", *containers).stdout)
               for m in c.get("Mounts", []) if m.get("Type") == "bind" and "/secrets" in m.get("Source", "")}
    return bool(sources) and all("/pytest-of-" in source for source in sources)


def remove_leftovers() -> list[str]:
    """Remove what an earlier test's stack left (containers, runs, volumes, network): what is left."""
    containers = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}").stdout.split()
    containers += docker("ps", "-aq", "--filter", f"label={RUN_LABEL}").stdout.split()
    if containers:
        docker("rm", "-f", *containers, check=False)
    volumes = docker("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}").stdout.split()
    if volumes:  # the stack's own (Compose labels them; deploy-restore's new pgdata volume too)
        docker("volume", "rm", "-f", *volumes, check=False)
    docker("network", "rm", PROJECT, check=False)
    return leftovers()


def docker_gid() -> str:
    return str(os.stat("/var/run/docker.sock").st_gid)


@dataclass
class Stack:
    """One stack under test: its secrets folder, image tag and published ports."""

    secrets_dir: Path
    image: str
    dagster_port: int
    mlflow_port: int
    prometheus_port: int = field(default_factory=lambda: free_port())
    alertmanager_port: int = field(default_factory=lambda: free_port())
    serving_port: int = field(default_factory=lambda: free_port())

    def ports(self) -> dict[str, str]:
        return {"DAGSTER_PORT": str(self.dagster_port), "MLFLOW_PORT": str(self.mlflow_port),
                "PROMETHEUS_PORT": str(self.prometheus_port), "ALERTMANAGER_PORT": str(self.alertmanager_port),
                "SERVING_PORT": str(self.serving_port)}

    # The Make targets, as a user runs them ----------------------------------------------

    def make(self, target: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        environment = {**os.environ, "QUADRA_SECRETS_DIR": str(self.secrets_dir), "IMAGE": self.image, **self.ports()}
        done = subprocess.run(["make", "--no-print-directory", target], cwd=REPO_ROOT, env=environment,
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise StackError(f"make {target} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def timed(self, phase: str, what: str, target: str) -> subprocess.CompletedProcess:
        started = time.perf_counter()
        done = self.make(target)
        PHASES.append((phase, time.perf_counter() - started, what))
        return done

    # docker compose -------------------------------------------------------------------------

    def compose_env(self) -> dict[str, str]:
        return {**os.environ, "QUADRA_IMAGE": self.image, "DOCKER_GID": docker_gid(),
                "QUADRA_SECRETS_DIR": str(self.secrets_dir), **self.ports()}

    @staticmethod
    def compose_argv(*args: str) -> list[str]:
        return ["docker", "compose", "--project-directory", str(REPO_ROOT / "deploy" / "compose"),
                "-f", str(REPO_ROOT / "deploy" / "compose" / "compose.yaml"), *args]

    def compose(self, *args: str, check: bool = True, timeout: float = 600, input: str | None = None) -> subprocess.CompletedProcess:
        argv = self.compose_argv(*args)
        done = subprocess.run(argv, env=self.compose_env(), capture_output=True, text=True, timeout=timeout, input=input)
        if check and done.returncode:
            raise StackError(f"docker compose {' '.join(args[:4])} failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return done

    def exec(self, service: str, *command: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        return self.compose("exec", "-T", service, *command, check=check, timeout=timeout)

    def backup_tool(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """`quadra backup ...` as an operator runs it: the `backup` tools service (the backup identity)."""
        return self.compose("--profile", "tools", "run", "--rm", "-T", "backup", *args, check=check, timeout=timeout)

    def backup_tool_command(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """Any `quadra ...` command with the backup identity (`quadra wal status`, ...)."""
        return self.compose("--profile", "tools", "run", "--rm", "-T", "--entrypoint", "quadra", "backup", *args,
                            check=check, timeout=timeout)

    def containers(self, service: str) -> list[dict]:
        """`docker inspect` of every container of a service (a scaled one has several)."""
        ids = self.compose("ps", "-q", service).stdout.split()
        return [self.inspect(i) for i in ids]

    @staticmethod
    def inspect(container_id: str) -> dict:
        return json.loads(docker("inspect", container_id).stdout)[0]

    def container(self, service: str) -> dict:
        """`docker inspect` of a service's container."""
        cid = self.compose("ps", "-q", service).stdout.strip()
        if not cid:
            raise StackError(f"service {service} has no container")
        return self.inspect(cid)

    def sql(self, database: str, query: str) -> str:
        """One value from the stack's PostgreSQL, as its superuser over the local socket."""
        return self.exec("postgres", "psql", "-U", "postgres", "-d", database, "-tAc", query).stdout.strip()

    def wal_position(self) -> int:
        """Bytes of WAL the server has written since it was made: what the `wal` service streams
        off the host (pg_receivewal ships every byte of it, nothing else)."""
        return int(self.sql("postgres", "select pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"))

    def secret(self, relative: str) -> str:
        """A secret of the stack: the file `make deploy-secrets` wrote (identity/name)."""
        return (self.secrets_dir / relative).read_text().strip()

    def secret_values(self) -> dict[str, str]:
        """Every secret value of the stack (and each password inside a URL or a config file),
        by where it is, to look for in what must not hold them."""
        from urllib.parse import unquote, urlsplit

        found: dict[str, str] = {}
        for path in sorted(self.secrets_dir.rglob("*")):
            if not path.is_file() or path.parent.name == "public":
                continue
            name = str(path.relative_to(self.secrets_dir))
            text = path.read_text()
            if "PRIVATE KEY" in text:
                body = [line for line in text.splitlines() if line and not line.startswith("-----")]
                found[name] = "".join(body)
                found[f"{name} (first line)"] = body[0]
                continue
            found[name] = text.strip()
            if "://" in text:
                password = urlsplit(text.strip()).password
                if password:
                    found[f"{name} (password)"] = unquote(password)
            for line in text.splitlines():
                if "=" in line and any(k in line for k in ("secret", "pass")):
                    found[f"{name} ({line.split('=')[0].strip()})"] = line.split("=", 1)[1].strip()
                if line.count(":") >= 4 and path.name.endswith(".pgpass"):
                    found[f"{name} (password)"] = line.rsplit(":", 1)[1]
        if (self.secrets_dir / "objects" / "s3.json").is_file():
            for identity in json.loads((self.secrets_dir / "objects" / "s3.json").read_text())["identities"]:
                found[f"s3 {identity['name']}"] = identity["credentials"][0]["secretKey"]
        return {k: v for k, v in found.items() if len(v) >= 16}

    # Dagster --------------------------------------------------------------------------------

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.dagster_port}/graphql", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as exc:  # Dagster answers a resolver's error with 500 and the errors
            raise StackError(f"GraphQL answered {exc.code}: {exc.read().decode(errors='replace')[-3000:]}") from None
        if answer.get("errors"):
            raise StackError(f"GraphQL errors: {answer['errors']}")
        return answer["data"]

    def launch(self, job: str, tags: dict | None = None, config: dict | None = None) -> str:
        """`dagster job launch` through the stack (the webserver's container holds the CLI and
        the stack's instance); the queued run is started by the daemon in a container of its own."""
        run_id = str(uuid.uuid4())
        command = ["dagster", "job", "launch", "-w", "/opt/dagster/app/workspace.yaml", "-j", job, "--run-id", run_id]
        if tags:
            command += ["--tags", json.dumps(tags)]
        if config:
            command += ["--config-json", json.dumps(config)]
        self.exec("webserver", *command)
        return run_id

    def wait(self, what: str, condition, timeout: float, every: float = 2.0):
        """Poll `condition()` until it returns something true (returned); StackError after `timeout`."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = condition()
                if value:
                    return value
            except (StackError, OSError, urllib.error.URLError, ValueError) as exc:
                last = exc
            time.sleep(every)
        raise StackError(f"{what}: not after {timeout:.0f} s" + (f" (last error: {last})" if last else ""))

    def healthy(self, service: str) -> bool:
        return self.container(service)["State"].get("Health", {}).get("Status") == "healthy"

    def batches_in_sql(self, run_id: str) -> int:
        """Metric rows the stack's project database holds for a Dagster run's training run."""
        return int(self.sql("quadra", "select count(*) from training_metrics m join training_runs r on r.id = m.training_run_id "
                                      f"where r.external_run_id = '{run_id}'") or 0)

    def training_row(self, run_id: str) -> tuple[str, str, str]:
        """(status, error, mlflow_run_id) of a Dagster run's training run."""
        row = self.sql("quadra", "select status || '|' || coalesce(error, '') || '|' || coalesce(mlflow_run_id, '') "
                                 f"from training_runs where external_run_id = '{run_id}'")
        status, error, mlflow_run = (row.split("|", 2) + ["", ""])[:3]
        return status, error, mlflow_run

    def run(self, run_id: str) -> dict:
        data = self.graphql(
            "query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status jobName "
            "tags { key value } } } }", {"id": run_id})
        return data["runOrError"]

    def wait_for_run(self, run_id: str, timeout: float = 900) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if run.get("status") in ("SUCCESS", "FAILURE", "CANCELED"):
                return run
            if time.monotonic() > deadline:
                raise StackError(f"run {run_id} still {run.get('status')} after {timeout:.0f} s")
            time.sleep(3)

    def run_messages(self, run_id: str) -> list[str]:
        """The messages of a run's events in the instance's event log (what the UI's run page lists),
        every page of it."""
        messages, cursor = [], None
        while True:
            logs = self.graphql(
                "query($id: ID!, $after: String) { logsForRun(runId: $id, afterCursor: $after) { __typename "
                "... on EventConnection { events { ... on MessageEvent { message } } cursor hasMore } "
                "... on PythonError { message } } }", {"id": run_id, "after": cursor})["logsForRun"]
            if logs["__typename"] != "EventConnection":
                raise StackError(f"no event log for run {run_id}: {logs}")
            messages += [event["message"] for event in logs["events"] if event.get("message")]
            if not logs["hasMore"]:
                return messages
            cursor = logs["cursor"]

    def run_logs(self, run_id: str) -> str:
        ids = docker("ps", "-aq", "--filter", f"label=dagster/run_id={run_id}").stdout.split()
        return "\n".join(docker("logs", i, check=False).stdout[-4000:] + docker("logs", i, check=False).stderr[-4000:] for i in ids)

    def checks_of_latest_evaluation(self, asset: str, check: str = "replication_lag") -> dict[str, dict]:
        """A check of an asset with its latest evaluation, whatever evaluated it (a run or a
        sensor), and whether or not the asset was materialised: {check: {status, success, run_id}}."""
        data = self.graphql(
            "query($key: AssetKeyInput!, $check: String!) { assetCheckExecutions(assetKey: $key, checkName: $check, limit: 1) { "
            "runId status evaluation { success } } }", {"key": {"path": [asset]}, "check": check})
        executions = data.get("assetCheckExecutions") or []
        if not executions:
            return {}
        latest = executions[0]
        return {check: {"status": latest["status"], "success": (latest.get("evaluation") or {}).get("success"),
                        "run_id": latest["runId"]}}

    def checks_of_latest(self, asset: str) -> dict[str, dict]:
        data = self.graphql(
            "query($key: [AssetKeyInput!]) { assetNodes(assetKeys: $key) { assetChecksOrError { ... on AssetChecks { "
            "checks { name executionForLatestMaterialization { status evaluation { success metadataEntries { label "
            "... on JsonMetadataEntry { jsonString } ... on FloatMetadataEntry { floatValue } } } } } } } } }",
            {"key": [{"path": [asset]}]})
        checks = data["assetNodes"][0]["assetChecksOrError"]["checks"]
        result = {}
        for check in checks:
            execution = check["executionForLatestMaterialization"] or {}
            evaluation = execution.get("evaluation") or {}
            metadata = {}
            for entry in evaluation.get("metadataEntries", []):
                if "jsonString" in entry:
                    metadata[entry["label"]] = json.loads(entry["jsonString"])
                elif "floatValue" in entry:
                    metadata[entry["label"]] = entry["floatValue"]
            result[check["name"]] = {"status": execution.get("status"), "success": evaluation.get("success"), **metadata}
        return result

    def latest_materialization(self, asset: str) -> dict:
        """The newest materialisation of an asset: its run, partition and metadata (numbers as
        numbers, the rest as text)."""
        data = self.graphql(
            "query($key: AssetKeyInput!) { assetOrError(assetKey: $key) { ... on Asset { assetMaterializations(limit: 1) { "
            "runId partition metadataEntries { label ... on IntMetadataEntry { intRepr } ... on FloatMetadataEntry { floatValue } "
            "... on TextMetadataEntry { text } } } } } }", {"key": {"path": [asset]}})
        found = (data.get("assetOrError") or {}).get("assetMaterializations") or []
        if not found:
            return {}
        metadata = {}
        for entry in found[0]["metadataEntries"]:
            if "intRepr" in entry:
                metadata[entry["label"]] = int(entry["intRepr"])
            elif "floatValue" in entry:
                metadata[entry["label"]] = entry["floatValue"]
            elif "text" in entry:
                metadata[entry["label"]] = entry["text"]
        return {"run_id": found[0]["runId"], "partition": found[0]["partition"], **metadata}

    # The online service ------------------------------------------------------------------------

    def serving(self, path: str, *, token: str | None = None, body: dict | None = None) -> tuple[int, dict | str, dict]:
        """A call to `serving` on its published port: (status, JSON or text, headers by lower-case name)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(f"http://127.0.0.1:{self.serving_port}{path}", data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                status, text, got = response.status, response.read().decode(), response.headers
        except urllib.error.HTTPError as exc:
            status, text, got = exc.code, exc.read().decode(errors="replace"), exc.headers
        got = {name.lower(): value for name, value in got.items()}
        try:
            return status, json.loads(text), got
        except ValueError:
            return status, text, got

    # Prometheus and Alertmanager -------------------------------------------------------------

    def prometheus(self, query: str) -> list[dict]:
        """An instant query on the stack's Prometheus: its result vector."""
        url = f"http://127.0.0.1:{self.prometheus_port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        with urllib.request.urlopen(url, timeout=15) as response:
            answer = json.load(response)
        if answer.get("status") != "success":
            raise StackError(f"Prometheus: {answer}")
        return answer["data"]["result"]

    def active_alerts(self) -> list[dict]:
        """The alerts Alertmanager holds as active (firing, not resolved, not silenced)."""
        url = f"http://127.0.0.1:{self.alertmanager_port}/api/v2/alerts?active=true&silenced=false&inhibited=false"
        with urllib.request.urlopen(url, timeout=15) as response:
            return json.load(response)

    def gateway(self) -> str:
        """The address of this host on the stack's network (what its containers reach it at)."""
        network = json.loads(docker("network", "inspect", PROJECT).stdout)[0]
        return network["IPAM"]["Config"][0]["Gateway"]

    # MLflow ---------------------------------------------------------------------------------

    def mlflow(self, path: str, *, credentials: bool = True, headers: dict | None = None, user: str = "admin",
               password: str | None = None, method: str = "GET", body: dict | None = None) -> tuple[int, dict | str]:
        """A call to MLflow's REST API on the published port, as `user` (the admin by default):
        (status, JSON or text)."""
        sent = dict(headers or {})
        if credentials:
            secret = password if password is not None else self.secret("mlflow/admin_password")
            token = base64.b64encode(f"{user}:{secret}".encode()).decode()
            sent["Authorization"] = f"Basic {token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        request = urllib.request.Request(f"http://127.0.0.1:{self.mlflow_port}{path}", headers=sent, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    # Cleanup --------------------------------------------------------------------------------

    def remove_everything(self) -> list[str]:
        """Stop and remove the stack, its volumes, network, the runs' containers and the image;
        what could not be removed is returned."""
        runs = docker("ps", "-aq", "--filter", f"label={RUN_LABEL}", check=False).stdout.split()
        if runs:  # first: they hold the volumes
            docker("rm", "-f", *runs, check=False)
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "20", check=False, timeout=300)
        docker("image", "rm", "-f", self.image, check=False)  # its layers with it, unless another image shares them
        return leftovers()


def docker_available() -> str | None:
    """Why Docker cannot be used here (None: it can)."""
    if shutil.which("docker") is None:
        return "the docker command is not installed"
    if subprocess.run(["docker", "info"], capture_output=True).returncode:
        return "'docker info' failed: the Docker daemon is not running or not reachable"
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode:
        return "the Docker Compose v2 plugin ('docker compose') is missing"
    return None
