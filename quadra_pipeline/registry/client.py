"""`ModelRegistry`: a small, explicit wrapper around `mlflow.MlflowClient` (no Dagster here).

    registry = ModelRegistry(settings.mlflow_tracking_uri, settings.mlflow_artifact_root, keys=pair)
    registry.check_available()                    # bounded: never minutes of retries
    with registry.run("train", tags={...}) as run_id:   # ends FINISHED, or FAILED on error
        registry.log_metrics(run_id, rows)           # log_batch, <= 1000 metrics a call
        registered = registry.register(run_id, model, checkpoint, tags={...})   # signed
    registry.verify_version(registered.version)      # files against the signature
    registry.set_alias(CHAMPION, registered.version)

One class, three concerns, one module each: `connection` (the client, availability, bounded
HTTP, one-line errors), `runs` (experiment, runs, params, metrics, run artifacts), `versions`
(registering signed versions, aliases, downloads, signatures). Choices, each for a trap of
MLflow 3 (see /work/shared/notes/traps.md):

- An HTTP(S) tracking server is probed on `/health` first and MLflow's own HTTP retries are
  bounded by `max_retries` / `timeout_seconds`, so an unreachable server fails in seconds.
- The experiment gets an explicit artifact location under `artifact_root` for local stores
  (MLflow would default to `./mlruns` in whatever the working directory happens to be).
- Aliases, not stages. Versions are ints here whatever the store returns (REST gives strings).
- Nothing uses MLflow's process-wide tracking URI: every call goes through this object's
  client or an artifact repository given its tracking URI.
- Messages never show a password: URIs are masked.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from ..keys import Keyring, KeyPair
from .names import (
    CHALLENGER,
    CHAMPION,
    CHECKPOINT_ARTIFACT,
    EXPERIMENT_NAME,
    MODEL_NAME,
)
from .runs import RunsMixin
from .versions import RegisteredVersion, VersionInfo, VersionsMixin


@functools.cache
def code_version() -> str:
    """`quadra_pipeline.__version__`, plus `+g<git sha>` (and `.dirty` if tracked files differ
    from that commit) when the code runs from a git checkout."""
    from quadra_pipeline import __version__

    package_dir = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=package_dir, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()

    try:
        sha = git("rev-parse", "--short=12", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return __version__
    if not re.fullmatch(r"[0-9a-f]{4,40}", sha):
        return __version__
    return f"{__version__}+g{sha}" + (".dirty" if dirty else "")


class ModelRegistry(VersionsMixin, RunsMixin):
    """The MLflow tracking store and model registry, as this project uses them. `keys` sign new
    versions (the private key) and verify them (the public key); None: no signing configured."""

    def __init__(
        self,
        tracking_uri: str,
        artifact_root: str | os.PathLike[str] | None = None,
        *,
        model_name: str = MODEL_NAME,
        experiment_name: str = EXPERIMENT_NAME,
        max_retries: int = 2,
        timeout_seconds: float = 5.0,
        keys: KeyPair | None = None,
        keyring: Keyring | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(tracking_uri, max_retries=max_retries, timeout_seconds=timeout_seconds, credentials=credentials)
        self.artifact_root = artifact_root
        self.model_name = model_name
        self.experiment_name = experiment_name
        self.keys = keys
        # What verifies: the signing pair's public key (always) and the retired keys of `keyring`.
        self.keyring = Keyring("ec-p256", [*([keys] if keys else []), *(keyring or [])])
        self._experiment_id: str | None = None

    @classmethod
    def from_settings(
        cls, settings: Any = None, *, tracking_uri: str | None = None, artifact_root: Any = None, **kwargs: Any
    ) -> "ModelRegistry":
        """The registry the settings name (MLFLOW_TRACKING_URI, or SQLite under QUADRA_HOME, unless
        `tracking_uri` / `artifact_root` say otherwise), signing with the settings' model-signing
        key (none in production without one: registering then refuses), verifying with their
        keyring, authenticating with MLFLOW_TRACKING_USERNAME and the password (or its file)."""
        from quadra_pipeline.keys import model_keyring, model_signing_keys

        if settings is None:
            from quadra_pipeline.settings import load_settings

            settings = load_settings()
        kwargs.setdefault("keys", model_signing_keys(settings))
        kwargs.setdefault("keyring", model_keyring(settings))
        kwargs.setdefault("credentials", settings.mlflow_credentials)
        return cls(tracking_uri or settings.mlflow_tracking_uri, artifact_root or settings.mlflow_artifact_root, **kwargs)

    def __repr__(self) -> str:
        return f"ModelRegistry({self.display_uri!r}, model_name={self.model_name!r})"


__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "CHECKPOINT_ARTIFACT",
    "EXPERIMENT_NAME",
    "MODEL_NAME",
    "ModelRegistry",
    "RegisteredVersion",
    "VersionInfo",
    "code_version",
]
