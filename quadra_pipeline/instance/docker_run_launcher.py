"""The Compose stack's run launcher: Dagster's DockerRunLauncher, with each run's container given
only its job's secrets, and removed when it ends.

- **Identities.** A job's tag `quadra/identity` (`training` by default, `backup` for the hourly
  backup) picks a folder of secret files on the Docker host (`<secrets_dir>/<identity>/`,
  written by `make deploy-secrets`), bind-mounted read-only at `/run/secrets`, the variables
  naming those files (`DATABASE_URL_FILE=/run/secrets/database_url`, ...) and the volumes that
  identity needs (only a backup run mounts the backup repository). No
  secret value is in the container's environment, its command line or the run's config; a
  training run never holds the backup key, a backup run never the model key.
- **Nothing left behind.** Containers are created with Docker's auto-remove: when the run's
  process exits, its container goes (after a year of hourly backups, no 8,760 stopped
  containers each showing its mounts). Their output stays readable in the UI through the
  instance's compute log manager. Run monitoring still sees a container that crashed: it is
  gone while its run is not finished, which fails the run with the reason below.
- **Only the daemon holds the Docker socket.** The webserver (no socket: it holds Dagster's
  storage credentials and nothing else) cannot stop a container itself: "Terminate" in the UI
  marks the run canceling, and the daemon's run monitoring, which calls this launcher for
  canceling runs once they pass `cancel_timeout_seconds`, stops its container then.
"""

from __future__ import annotations

from typing import Any

from dagster import Field, Permissive, StringSource
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster_docker import DockerRunLauncher
from dagster_docker.container_context import DockerContainerContext
from dagster_docker.utils import DOCKER_CONFIG_SCHEMA

from ..defs.common import IDENTITY_TAG

#: The identity of a run whose job names none (training, sweeps, promotion).
DEFAULT_IDENTITY = "training"
#: Where a run container finds its secret files.
SECRETS_MOUNT = "/run/secrets"


class QuadraDockerRunLauncher(DockerRunLauncher):
    """DockerRunLauncher + per-job secret files + containers removed when their run ends."""

    def __init__(self, inst_data=None, *, secrets_dir: str, identities: dict[str, Any], **config: Any) -> None:
        self.secrets_dir = secrets_dir.rstrip("/")
        self.identities = {name: dict(spec or {}) for name, spec in identities.items()}
        if DEFAULT_IDENTITY not in self.identities:
            raise ValueError(f"the run launcher's identities must include {DEFAULT_IDENTITY!r}")
        super().__init__(inst_data=inst_data, **config)

    @classmethod
    def config_type(cls):
        return {
            **DOCKER_CONFIG_SCHEMA,
            "secrets_dir": Field(StringSource, description="The folder of identity folders on the Docker host."),
            "identities": Field(
                Permissive(),
                description="identity -> {env: {NAME_FILE: path under /run/secrets}, volumes: [...]}; 'training' is the "
                "default.",
            ),
        }

    def identity_of(self, run: DagsterRun) -> str:
        identity = run.tags.get(IDENTITY_TAG, DEFAULT_IDENTITY)
        if identity not in self.identities:
            raise ValueError(f"run {run.run_id}: unknown identity {identity!r} (tag {IDENTITY_TAG}); "
                             f"the run launcher knows {', '.join(sorted(self.identities))}")
        return identity

    def get_container_context(self, dagster_run: DagsterRun) -> DockerContainerContext:
        base = super().get_container_context(dagster_run)
        identity = self.identity_of(dagster_run)
        spec = self.identities[identity]
        env = spec.get("env") or {}
        volumes = [*base.container_kwargs.get("volumes", []), *(spec.get("volumes") or []),
                   f"{self.secrets_dir}/{identity}:{SECRETS_MOUNT}:ro"]
        labels = {**_labels(base.container_kwargs.get("labels")), IDENTITY_TAG: identity}
        return base.merge(DockerContainerContext(
            env_vars=[f"{name}={value}" for name, value in env.items()],
            container_kwargs={"volumes": volumes, "labels": labels, "auto_remove": True},
        ))

    def terminate(self, run_id: str) -> bool:
        """Stop the run's container; where this process has no Docker socket (the webserver),
        mark the run canceling and leave the stop to the daemon (`get_run_worker_debug_info`)."""
        if docker_reachable():
            return super().terminate(run_id)
        run = self._instance.get_run_by_id(run_id)
        if not run or run.is_finished:
            return False
        self._instance.report_run_canceling(
            run, message="Canceling: this process holds no Docker socket; the daemon stops the run's container")
        return True

    def get_run_worker_debug_info(self, run: DagsterRun, include_container_logs: bool | None = True) -> str | None:
        """Called by the daemon's run monitoring for a run that has been canceling too long (one
        canceled from the UI): its container is stopped here, where the socket is."""
        stopped = ""
        if run.status == DagsterRunStatus.CANCELING and docker_reachable():
            container = self._get_container(run)
            if container is not None and container.status == "running":
                container.stop(timeout=self.get_container_context(run).container_kwargs.get("stop_timeout"))
                stopped = f"stopped its container {container.id[:12]} (canceled from a process without the Docker socket)\n"
        return stopped + (super().get_run_worker_debug_info(run, include_container_logs) or "")

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        result = super().check_run_worker_health(run)
        if result.status == WorkerStatus.NOT_FOUND and run.tags.get("docker/container_id"):
            return CheckRunHealthResult(
                WorkerStatus.NOT_FOUND,
                msg=f"the run's container {run.tags['docker/container_id'][:12]} is gone while the run has not finished: "
                "its process exited (crashed, killed or out of memory), and run containers are removed when they exit",
            )
        return result


def docker_reachable() -> bool:
    """Whether this process can talk to a Docker daemon (the daemon's container can; the
    webserver's cannot, by design)."""
    import docker

    try:
        docker.from_env(timeout=5).ping()
    except Exception:  # noqa: BLE001 - any failure means: not here
        return False
    return True


def _labels(value: Any) -> dict[str, str]:
    if isinstance(value, list):
        return {key: "" for key in value}
    return dict(value or {})
