"""`ModelRegistry`: a small, explicit wrapper around `mlflow.MlflowClient` (no Dagster here).

    registry = ModelRegistry(settings.mlflow_tracking_uri, settings.mlflow_artifact_root)
    registry.check_available()                    # bounded: never minutes of retries
    with registry.run("train", tags={...}) as run_id:   # ends FINISHED, or FAILED on error
        registry.log_metrics(run_id, rows)           # log_batch, <= 1000 metrics a call
        registered = registry.register(run_id, model, checkpoint, tags={...})
    registry.set_alias(CHAMPION, registered.version)

Choices, each for a trap of MLflow 3 (see /work/shared/notes/traps.md):

- Every client call runs with MLflow's HTTP retry settings bounded by this object's
  `max_retries` / `timeout_seconds` (the defaults retry for minutes), and an HTTP(S) tracking
  server is probed on `/health` first, so an unreachable server fails in seconds.
- The experiment gets an explicit artifact location under `artifact_root` for local stores
  (MLflow would default to `./mlruns` in whatever the working directory happens to be).
- The logged model is created in *our* experiment before `mlflow.pytorch.log_model` runs
  (given no active run, log_model would put it under the Default experiment, in `./mlruns`).
  It is saved with `serialization_format="pickle"` (keeps `QuadraPolicyModule`; "pt2" would
  load back as a GraphModule), a signature and an input example, explicit pip requirements
  (no requirement inference, which re-imports the model in a subprocess), and the checkpoint
  as `extra_files/checkpoint.pt`, so one artifact tree holds both.
- Aliases, not stages. Versions are ints here whatever the store returns (REST gives strings).
- Messages never show a password: URIs are masked.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .errors import (
    RegistryError,
    RegistryUnavailableError,
    UnknownModelVersionError,
    mask_secrets,
    one_line,
)

if TYPE_CHECKING:  # the heavy imports (mlflow, torch) happen on first use
    from mlflow import MlflowClient

    from quadra_pipeline.model import QuadraModel

log = logging.getLogger(__name__)

MODEL_NAME = "quadra-matrix"
EXPERIMENT_NAME = "quadra-matrix"
CHAMPION = "champion"
CHALLENGER = "challenger"

#: Where, inside a version's model artifacts, the checkpoint (our bytes, unchanged) lives.
CHECKPOINT_ARTIFACT = "extra_files/checkpoint.pt"
CHECKPOINT_FILENAME = "checkpoint.pt"
#: Name of the logged model inside its run.
MODEL_ARTIFACT_NAME = "model"
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
#: log_batch limits of the MLflow REST API (per call).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100

# Version tags this module writes (callers add dagster_run_id, data_fingerprint, source, ...).
TAG_SHA256 = "checkpoint_sha256"
TAG_FIELD_SIZE = "field_size"
TAG_CODE_VERSION = "code_version"
TAG_CHECKPOINT = "checkpoint_artifact"
METRIC_TAG_PREFIX = "metric."

# Client calls temporarily set process-wide state (environment variables for MLflow's HTTP
# retries, the global tracking URI for log_model): one call at a time per process.
_CALL_LOCK = threading.RLock()


@dataclass
class RegisteredVersion:
    version: int
    model_uri: str  # models:/quadra-matrix/<version>
    run_id: str
    checkpoint_sha256: str
    tags: dict[str, str]
    model_name: str = MODEL_NAME
    model_id: str = ""  # MLflow 3 logged model id (m-...)
    previous_challenger: int | None = None  # who held `challenger` before this version took it


@dataclass
class VersionInfo:
    version: int
    aliases: list[str]
    tags: dict[str, str]
    created_at: dt.datetime
    run_id: str | None
    description: str = ""
    status: str = ""
    source: str = ""
    model_name: str = MODEL_NAME

    @property
    def checkpoint_sha256(self) -> str | None:
        return self.tags.get(TAG_SHA256)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return data


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


def _is_http(uri: str) -> bool:
    return urlsplit(uri).scheme.lower() in ("http", "https")


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI (None for other URIs and in-memory ones)."""
    if not uri.lower().startswith("sqlite:"):
        return None
    rest = uri.split(":", 1)[1]
    if not rest.startswith("///"):
        return None
    path = rest[3:].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path("/" + path.lstrip("/")) if rest.startswith("////") else Path(path)


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")
_UNREACHABLE_HINTS = (
    "Connection refused",
    "Failed to establish a new connection",
    "Max retries exceeded",
    "Connection aborted",
    "Connection reset",
    "Read timed out",
    "timed out",
    "Name or service not known",
    "Temporary failure in name resolution",
    "No route to host",
    "RemoteDisconnected",
    "unable to open database file",
)


def _reason(text: str) -> str:
    """A short cause from a requests/urllib3/MLflow error text ("Connection refused", ...)."""
    match = _ERRNO.search(text)
    if match:
        return match.group(1).strip()
    for hint in ("Read timed out", "timed out", "RemoteDisconnected", "Connection aborted",
                 "Connection reset", "unable to open database file"):
        if hint in text:
            return hint
    return one_line(text, limit=160)


def _looks_unreachable(text: str) -> bool:
    return any(hint in text for hint in _UNREACHABLE_HINTS)


def _error_code(exc: BaseException) -> str:
    return str(getattr(exc, "error_code", "") or "")


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at `uri` for the block, then restore the previous state exactly
    (MLflow's own `_use_tracking_uri` unsets `MLFLOW_TRACKING_URI` on the way out)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous = tracking_utils._tracking_uri
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # None resets (and unsets the variable) ...
        if env_before is None:  # ... so put the variable back as it was
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env_before


class _DropPickleNotice(logging.Filter):
    """mlflow.pytorch warns on every pickle save; pickle is our deliberate choice (see above)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Saving pytorch model by Pickle")


class ModelRegistry:
    """The MLflow tracking store and model registry, as this project uses them."""

    def __init__(
        self,
        tracking_uri: str,
        artifact_root: str | os.PathLike[str] | None = None,
        *,
        model_name: str = MODEL_NAME,
        experiment_name: str = EXPERIMENT_NAME,
        max_retries: int = 2,
        timeout_seconds: float = 5.0,
    ) -> None:
        if not isinstance(tracking_uri, str) or not tracking_uri.strip():
            raise RegistryError("MLflow tracking URI is empty (set MLFLOW_TRACKING_URI or leave it unset)")
        if max_retries < 0:
            raise RegistryError(f"max_retries must be 0 or more, got {max_retries}")
        if not timeout_seconds > 0:
            raise RegistryError(f"timeout_seconds must be positive, got {timeout_seconds}")
        self.tracking_uri = tracking_uri.strip()
        self.artifact_root = artifact_root
        self.model_name = model_name
        self.experiment_name = experiment_name
        self.max_retries = int(max_retries)
        self.timeout_seconds = float(timeout_seconds)
        self._client: MlflowClient | None = None
        self._available = False
        self._experiment_id: str | None = None

    @classmethod
    def from_settings(cls, settings: Any = None, **kwargs: Any) -> "ModelRegistry":
        """The registry the settings name (MLFLOW_TRACKING_URI, or SQLite under QUADRA_HOME)."""
        if settings is None:
            from quadra_pipeline.settings import load_settings

            settings = load_settings()
        return cls(settings.mlflow_tracking_uri, settings.mlflow_artifact_root, **kwargs)

    def __repr__(self) -> str:
        return f"ModelRegistry({self.display_uri!r}, model_name={self.model_name!r})"

    # Plumbing -----------------------------------------------------------------------------

    @property
    def display_uri(self) -> str:
        """The tracking URI with any password masked (for messages and logs)."""
        return mask_secrets(self.tracking_uri)

    @property
    def is_remote(self) -> bool:
        return _is_http(self.tracking_uri)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def _http_env(self) -> dict[str, str]:
        return {
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(self.max_retries),
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(self.timeout_seconds))),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        }

    @contextlib.contextmanager
    def _call(self, action: str) -> Iterator[None]:
        """Run MLflow calls with bounded HTTP retries; any failure becomes a `RegistryError`.

        MLflow's global tracking URI points at this store for the block: some of MLflow's own
        code paths ignore the client's URI (resolving `models:/m-...` sources in the SQL model
        registry store, downloads through `models:/`) and would otherwise open `./mlflow.db`."""
        with _CALL_LOCK, _environ(self._http_env()), _global_tracking_uri(self.tracking_uri):
            try:
                yield
            except RegistryError:
                raise
            except Exception as exc:  # noqa: BLE001 - MlflowException, requests, OSError, SQLAlchemy
                raise self._translate(exc, action) from None

    def _translate(self, exc: BaseException, action: str) -> RegistryError:
        text = str(getattr(exc, "message", None) or exc) or type(exc).__name__
        if _looks_unreachable(text):
            what = "server" if self.is_remote else "store"
            return RegistryUnavailableError(
                f"MLflow tracking {what} at {self.display_uri} is unreachable while {action} ({_reason(text)})"
            )
        return RegistryError(f"MLflow could not {action}: {one_line(text, limit=300)}")

    def check_available(self) -> None:
        """Fail fast with `RegistryUnavailableError` if the tracking server/store is unusable.

        HTTP(S): `GET /health`, `max_retries + 1` attempts of at most `timeout_seconds` each with
        a short backoff. Database URIs (sqlite, postgresql, ...): open the store (the first touch
        of a new store creates and migrates its tables)."""
        if self.is_remote:
            self._check_http()
        else:
            self._check_store()
        self._available = True

    def _check_http(self) -> None:
        import requests

        url = self.tracking_uri.rstrip("/") + "/health"
        attempts = self.max_retries + 1
        last = "no answer"
        for attempt in range(attempts):
            try:
                response = requests.get(url, timeout=self.timeout_seconds)
            except requests.Timeout:
                last = f"no answer within {self.timeout_seconds:g} s"
            except requests.RequestException as exc:
                last = _reason(str(exc))
            else:
                if response.status_code == 200:
                    return
                last = f"/health answered HTTP {response.status_code}"
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    raise RegistryUnavailableError(
                        f"MLflow tracking server at {self.display_uri} is not usable ({last}; "
                        "is this the address of an MLflow tracking server?)"
                    )
            if attempt + 1 < attempts:
                time.sleep(min(0.25 * 2**attempt, 2.0))
        raise RegistryUnavailableError(
            f"MLflow tracking server at {self.display_uri} is unreachable after {attempts} "
            f"attempt{'s' if attempts != 1 else ''} ({last})"
        )

    def _check_store(self) -> None:
        path = _sqlite_path(self.tracking_uri)
        if path is None and "://" in self.tracking_uri and not self.tracking_uri.startswith("file:"):
            # A database server: MLflow itself retries opening it for ~100 s (hard-coded).
            self._check_database_server()
        if path is not None:
            try:
                path.expanduser().parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RegistryUnavailableError(
                    f"MLflow tracking store {self.display_uri}: cannot create its folder ({exc.strerror or exc})"
                ) from None
        try:
            with _CALL_LOCK, _environ(self._http_env()), _global_tracking_uri(self.tracking_uri):
                self.client.search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001
            text = str(getattr(exc, "message", None) or exc) or type(exc).__name__
            raise RegistryUnavailableError(
                f"MLflow tracking store {self.display_uri} cannot be opened ({one_line(text, limit=200)})"
            ) from None

    def _check_database_server(self) -> None:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url
        from sqlalchemy.pool import NullPool

        try:
            url = make_url(self.tracking_uri)
            connect_args: dict[str, Any] = {}
            if url.get_backend_name() in ("postgresql", "mysql", "mariadb"):
                connect_args["connect_timeout"] = max(1, math.ceil(self.timeout_seconds))
            engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
        except Exception:  # noqa: BLE001 - not a SQLAlchemy URL: let MLflow judge it
            return
        attempts = self.max_retries + 1
        last = "no answer"
        try:
            for attempt in range(attempts):
                try:
                    with engine.connect() as connection:
                        connection.execute(text("SELECT 1"))
                    return
                except Exception as exc:  # noqa: BLE001
                    last = _reason(str(getattr(exc, "orig", None) or exc))
                if attempt + 1 < attempts:
                    time.sleep(min(0.25 * 2**attempt, 2.0))
        finally:
            engine.dispose()
        raise RegistryUnavailableError(
            f"MLflow tracking store {self.display_uri} is unreachable after {attempts} "
            f"attempt{'s' if attempts != 1 else ''} ({last})"
        )

    def _ensure_available(self) -> None:
        if not self._available:
            self.check_available()

    # Experiment and runs ------------------------------------------------------------------

    def _artifact_location(self) -> str | None:
        """Where new experiments keep artifacts: `<artifact_root>/<experiment>`.

        None for HTTP servers: the server decides (`--artifacts-destination`, proxied)."""
        if self.is_remote:
            return None
        root = self.artifact_root
        if root is None:
            db = _sqlite_path(self.tracking_uri)
            if db is None:
                raise RegistryError(
                    f"an artifact root is needed for tracking store {self.display_uri} "
                    "(MLflow would otherwise default to ./mlruns in the working directory)"
                )
            root = db.expanduser().resolve().parent / "mlartifacts"
        text = os.fspath(root)
        if "://" in text and not text.startswith("file:"):
            return f"{text.rstrip('/')}/{self.experiment_name}"
        if text.startswith("file:"):
            text = urlsplit(text).path
        return (Path(text).expanduser().resolve() / self.experiment_name).as_uri()

    def experiment_id(self) -> str:
        """The experiment's id, creating (or restoring) it on first use."""
        if self._experiment_id is not None:
            return self._experiment_id
        self._ensure_available()
        location = self._artifact_location()
        with self._call(f"get or create experiment {self.experiment_name!r}"):
            experiment = self.client.get_experiment_by_name(self.experiment_name)
            if experiment is None:
                try:
                    experiment_id = self.client.create_experiment(
                        self.experiment_name,
                        artifact_location=location,
                        tags={"project": "quadra-pipeline"},
                    )
                except Exception as exc:
                    if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                        raise
                    experiment = self.client.get_experiment_by_name(self.experiment_name)
                    experiment_id = experiment.experiment_id
            else:
                experiment_id = experiment.experiment_id
                if experiment.lifecycle_stage == "deleted":
                    self.client.restore_experiment(experiment_id)
                    log.warning("restored deleted MLflow experiment %r", self.experiment_name)
        self._experiment_id = str(experiment_id)
        return self._experiment_id

    def start_run(self, run_name: str, tags: Mapping[str, Any] | None = None) -> str:
        """A new RUNNING run in the experiment; end it with `end_run` (or use `run`)."""
        experiment_id = self.experiment_id()
        with self._call(f"start run {run_name!r}"):
            run = self.client.create_run(
                experiment_id, run_name=run_name, tags={str(k): str(v) for k, v in (tags or {}).items()}
            )
        return run.info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        if status not in RUN_STATUSES:
            raise RegistryError(f"run status must be one of {', '.join(RUN_STATUSES)}; got {status!r}")
        self._ensure_available()
        with self._call(f"end run {run_id} as {status}"):
            self.client.set_terminated(run_id, status=status)

    @contextlib.contextmanager
    def run(self, run_name: str, tags: Mapping[str, Any] | None = None) -> Iterator[str]:
        """A run that always ends: FINISHED, FAILED on an exception, KILLED on Ctrl-C."""
        run_id = self.start_run(run_name, tags)
        try:
            yield run_id
        except KeyboardInterrupt:
            self._end_quietly(run_id, "KILLED")
            raise
        except BaseException:
            self._end_quietly(run_id, "FAILED")
            raise
        self.end_run(run_id, "FINISHED")

    def _end_quietly(self, run_id: str, status: str) -> None:
        try:
            self.end_run(run_id, status)
        except Exception as exc:  # noqa: BLE001 - the original error matters more
            log.warning("could not mark MLflow run %s %s: %s", run_id, status, exc)

    def run_status(self, run_id: str) -> str:
        self._ensure_available()
        with self._call(f"read run {run_id}"):
            return self.client.get_run(run_id).info.status

    def metric_history_length(self, run_id: str, key: str) -> int:
        """How many values the run has for metric `key` (e.g. one per trained batch)."""
        self._ensure_available()
        with self._call(f"read metric {key!r} of run {run_id}"):
            return len(self.client.get_metric_history(run_id, key))

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), "" if v is None else str(v)) for k, v in params.items()]
        self._ensure_available()
        with self._call(f"log {len(items)} params to run {run_id}"):
            for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
                self.client.log_batch(run_id, params=items[start : start + MAX_PARAMS_PER_BATCH])

    def log_metrics(
        self,
        run_id: str,
        rows: Sequence[Mapping[str, Any]],
        step_key: str = "batch_number",
        timestamp_ms: int | None = None,
    ) -> int:
        """Log stepped metrics: one step per row (`row[step_key]`), every other numeric column a
        metric. Sent with `log_batch` in chunks of at most 1000 metrics. A row's `timestamp`
        (datetime or epoch ms) is used unless `timestamp_ms` is given. Returns the count logged."""
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        metrics: list[Metric] = []
        for index, raw in enumerate(rows):
            row = raw.as_dict() if hasattr(raw, "as_dict") else raw
            if not isinstance(row, Mapping):
                raise RegistryError(f"metrics row {index} is a {type(row).__name__}, not a mapping")
            if row.get(step_key) is None:
                raise RegistryError(f"metrics row {index} has no {step_key!r} (the step)")
            try:
                step = int(row[step_key])
            except (TypeError, ValueError):
                raise RegistryError(f"metrics row {index}: step {row[step_key]!r} is not an integer") from None
            stamp = timestamp_ms if timestamp_ms is not None else _epoch_ms(row.get("timestamp"), now_ms)
            for key, value in row.items():
                if key in (step_key, "timestamp") or value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    try:
                        value = float(value)
                    except (TypeError, ValueError):
                        raise RegistryError(f"metrics row {index} (step {step}): {key} = {value!r} is not a number") from None
                metrics.append(Metric(str(key), float(value), stamp, step))
        if not metrics:
            return 0
        self._ensure_available()
        with self._call(f"log {len(metrics)} metrics to run {run_id}"):
            for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
                self.client.log_batch(run_id, metrics=metrics[start : start + MAX_METRICS_PER_BATCH])
        return len(metrics)

    def log_artifact(self, run_id: str, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        local = Path(path)
        if not local.exists():
            raise RegistryError(f"cannot log artifact {local}: no such file or directory")
        self._ensure_available()
        with self._call(f"log artifact {local.name} to run {run_id}"):
            if local.is_dir():
                self.client.log_artifacts(run_id, str(local), artifact_path)
            else:
                self.client.log_artifact(run_id, str(local), artifact_path)

    # Registering ---------------------------------------------------------------------------

    def register(
        self,
        run_id: str,
        model: QuadraModel,
        checkpoint_path: str | os.PathLike[str],
        *,
        tags: Mapping[str, Any],
        description: str = "",
        metrics: Mapping[str, float] | None = None,
    ) -> RegisteredVersion:
        """Log `model` (as a `QuadraPolicyModule`, with the checkpoint) to the run, register it
        as a new version of `model_name` and move `challenger` to it.

        Version tags: `checkpoint_sha256` (of the checkpoint's bytes), `field_size`,
        `code_version` (unless given), `checkpoint_artifact`, `metric.<name>` for `metrics`, and
        the caller's `tags` (dagster_run_id, data_fingerprint, source, ...).
        Any failure raises `RegistryError`; a version created before the failure is deleted
        again, so the registry never keeps a half-registered version.
        """
        source = Path(checkpoint_path)
        if not source.is_file():
            raise RegistryError(f"cannot register: checkpoint {source} does not exist or is not a file")
        self._ensure_available()
        experiment_id = self.experiment_id()
        model_id: str | None = None
        version: int | None = None
        with tempfile.TemporaryDirectory(prefix="quadra-register-") as tmp:
            checkpoint = Path(tmp) / CHECKPOINT_FILENAME
            try:
                shutil.copyfile(source, checkpoint)  # hash and upload the same bytes
            except OSError as exc:
                raise RegistryError(f"cannot register: cannot read checkpoint {source}: {exc.strerror or exc}") from None
            from quadra_pipeline.model import file_sha256

            sha256 = file_sha256(checkpoint)
            version_tags = self._version_tags(model, sha256, tags, metrics or {})
            try:
                model_id = self._log_model(run_id, experiment_id, model, checkpoint)
                self._ensure_registered_model()
                with self._call(f"create a version of registered model {self.model_name!r}"):
                    created = self.client.create_model_version(
                        self.model_name,
                        source=f"models:/{model_id}",
                        run_id=run_id,
                        tags=version_tags,
                        description=description or None,
                        model_id=model_id,
                    )
                version = int(created.version)
                if str(created.status) not in ("READY", "ModelVersionStatus.READY", "2"):
                    self._await_ready(version)
                previous = self._set_alias(CHALLENGER, version)
            except BaseException as exc:
                self._undo_register(version, model_id)
                if isinstance(exc, RegistryError):
                    raise
                if isinstance(exc, Exception):
                    raise self._translate(exc, "register the model") from None
                raise
        return RegisteredVersion(
            version=version,
            model_uri=f"models:/{self.model_name}/{version}",
            run_id=run_id,
            checkpoint_sha256=sha256,
            tags=version_tags,
            model_name=self.model_name,
            model_id=model_id or "",
            previous_challenger=previous,
        )

    def _version_tags(
        self, model: QuadraModel, sha256: str, tags: Mapping[str, Any], metrics: Mapping[str, float]
    ) -> dict[str, str]:
        result = {TAG_CODE_VERSION: code_version()}
        result.update({METRIC_TAG_PREFIX + str(k): repr(float(v)) for k, v in metrics.items()})
        result.update({str(k): str(v) for k, v in tags.items() if v is not None})
        # Facts about these bytes win over whatever the caller passed.
        result[TAG_SHA256] = sha256
        result[TAG_FIELD_SIZE] = str(model.field_size)
        result[TAG_CHECKPOINT] = CHECKPOINT_ARTIFACT
        return result

    def _log_model(self, run_id: str, experiment_id: str, model: QuadraModel, checkpoint: Path) -> str:
        import cloudpickle
        import mlflow
        import mlflow.pytorch
        import numpy as np
        import torch
        from mlflow.models import infer_signature

        from quadra_pipeline.model.serving import QuadraPolicyModule

        module = QuadraPolicyModule.from_model(model)
        example = model.field0.detach().to(torch.float32).reshape(1, -1).numpy().copy()
        signature = infer_signature(example, module(torch.from_numpy(example)).numpy())
        requirements = [
            f"mlflow=={mlflow.__version__}",
            f"torch=={torch.__version__.split('+')[0]}",
            f"numpy=={np.__version__}",
            f"cloudpickle=={cloudpickle.__version__}",
        ]
        with self._call(f"log the model to run {run_id}"):
            logged = self.client.create_logged_model(
                experiment_id,
                name=MODEL_ARTIFACT_NAME,
                source_run_id=run_id,
                tags={"field_size": str(model.field_size)},
                model_type="quadra-policy",
            )
            notice = _DropPickleNotice()
            pytorch_log = logging.getLogger("mlflow.pytorch")
            pytorch_log.addFilter(notice)
            try:
                mlflow.pytorch.log_model(
                    module,
                    name=MODEL_ARTIFACT_NAME,
                    model_id=logged.model_id,
                    run_id=run_id,
                    serialization_format="pickle",
                    signature=signature,
                    input_example=example,
                    extra_files=[str(checkpoint)],
                    pip_requirements=requirements,
                    # Our package travels with the model, so it loads where quadra-pipeline is
                    # not installed (the pickle refers to its classes).
                    code_paths=[str(Path(__file__).resolve().parents[1])],
                )
                self.client.finalize_logged_model(logged.model_id, "READY")
            except BaseException:
                self._quietly(lambda: self.client.finalize_logged_model(logged.model_id, "FAILED"))
                raise
            finally:
                pytorch_log.removeFilter(notice)
        return logged.model_id

    def _ensure_registered_model(self) -> None:
        with self._call(f"get or create registered model {self.model_name!r}"):
            try:
                self.client.get_registered_model(self.model_name)
                return
            except Exception as exc:
                if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                    raise
            try:
                self.client.create_registered_model(
                    self.model_name,
                    description="The Quadra Matrix policy model (quadra-pipeline).",
                )
            except Exception as exc:
                if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                    raise

    def _await_ready(self, version: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self._call(f"read version {version}"):
                status = str(self.client.get_model_version(self.model_name, str(version)).status)
            if status.endswith("READY"):
                return
            if status.endswith("FAILED_REGISTRATION") or time.monotonic() > deadline:
                raise RegistryError(f"{self.model_name} version {version} did not become READY (status {status})")
            time.sleep(0.2)

    def _undo_register(self, version: int | None, model_id: str | None) -> None:
        if version is not None:
            if self._quietly(lambda: self.client.delete_model_version(self.model_name, str(version))):
                log.warning("deleted %s version %s again: registration failed", self.model_name, version)
            else:
                log.error("%s version %s is half-registered and could not be deleted", self.model_name, version)
        if model_id is not None:
            self._quietly(lambda: self.client.finalize_logged_model(model_id, "FAILED"))

    def _quietly(self, action: Any) -> bool:
        try:
            with _CALL_LOCK, _environ(self._http_env()), _global_tracking_uri(self.tracking_uri):
                action()
            return True
        except Exception as exc:  # noqa: BLE001 - clean-up after another error
            log.warning("MLflow clean-up step failed: %s", one_line(str(exc)))
            return False

    def discard(self, registered: RegisteredVersion) -> None:
        """Undo `register`: delete the version and give `challenger` back to its previous holder
        (used when the step after registering, e.g. the SQL mirror, fails)."""
        self._ensure_available()
        with self._call(f"delete {self.model_name} version {registered.version}"):
            self.client.delete_model_version(self.model_name, str(registered.version))
        previous = registered.previous_challenger
        if previous is not None and previous != registered.version:
            with contextlib.suppress(UnknownModelVersionError):
                self._set_alias(CHALLENGER, previous)

    # Versions and aliases ------------------------------------------------------------------

    def get_version(self, version: int) -> VersionInfo:
        """One version; `UnknownModelVersionError` (naming the known versions) if there is none."""
        number = _version_number(version)
        self._ensure_available()
        with self._call(f"read {self.model_name} version {number}"):
            try:
                found = self.client.get_model_version(self.model_name, str(number))
            except Exception as exc:
                if _error_code(exc) not in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                    raise
                found = None
        if found is None:
            raise UnknownModelVersionError(
                f"{self.model_name} version {number} does not exist in the MLflow registry at "
                f"{self.display_uri} ({self._known_versions_text()})"
            )
        return _version_info(found, self.model_name)

    def _known_versions_text(self) -> str:
        try:
            numbers = [v.version for v in self.list_versions()]
        except RegistryError:
            return "the known versions could not be listed"
        if not numbers:
            return "no versions are registered"
        return "known versions: " + ", ".join(map(str, numbers))

    def list_versions(self) -> list[VersionInfo]:
        """Every version of the registered model, oldest first, with its current aliases."""
        self._ensure_available()
        aliases = self.aliases()
        by_version: dict[int, list[str]] = {}
        for alias, number in sorted(aliases.items()):
            by_version.setdefault(number, []).append(alias)
        escaped = self.model_name.replace("'", "\\'")
        found = []
        with self._call(f"list the versions of {self.model_name!r}"):
            token = None
            while True:
                page = self.client.search_model_versions(f"name = '{escaped}'", page_token=token)
                found.extend(page)
                token = getattr(page, "token", None)
                if not token:
                    break
        infos = [_version_info(v, self.model_name) for v in found]
        for info in infos:
            info.aliases = by_version.get(info.version, [])
        return sorted(infos, key=lambda i: i.version)

    def aliases(self) -> dict[str, int]:
        """`{alias: version}` of the registered model (empty if it is not registered yet)."""
        self._ensure_available()
        with self._call(f"read the aliases of {self.model_name!r}"):
            try:
                registered = self.client.get_registered_model(self.model_name)
            except Exception as exc:
                if _error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
                    return {}
                raise
        raw = registered.aliases or {}
        if isinstance(raw, Mapping):
            return {str(k): int(v) for k, v in raw.items()}
        return {str(a.alias): int(a.version) for a in raw}

    def alias_version(self, alias: str) -> int | None:
        return self.aliases().get(alias)

    def set_alias(self, alias: str, version: int) -> int | None:
        """Point `alias` at `version` (which must exist); return the version that held it."""
        number = _version_number(version)
        self.get_version(number)  # UnknownModelVersionError before any change
        return self._set_alias(alias, number)

    def _set_alias(self, alias: str, version: int) -> int | None:
        previous = self.alias_version(alias)
        with self._call(f"set alias {alias!r} to {self.model_name} version {version}"):
            self.client.set_registered_model_alias(self.model_name, alias, str(version))
        return previous

    def delete_alias(self, alias: str) -> int | None:
        """Remove `alias`; return the version that held it (None: nobody did, nothing changed)."""
        previous = self.alias_version(alias)
        if previous is None:
            return None
        with self._call(f"delete alias {alias!r} of {self.model_name}"):
            self.client.delete_registered_model_alias(self.model_name, alias)
        return previous

    def version_tags(self, version: int) -> dict[str, str]:
        return dict(self.get_version(version).tags)

    def download_checkpoint(self, version: int, dst: str | os.PathLike[str], *, verify: bool = True) -> Path:
        """Download the checkpoint of `version` to `dst` (a file path, or an existing folder to
        put `checkpoint.pt` in). With `verify`, its SHA-256 must equal the version's tag."""
        import mlflow.artifacts

        from quadra_pipeline.model import file_sha256

        info = self.get_version(version)
        target = Path(dst)
        if target.is_dir():
            target = target / CHECKPOINT_FILENAME
        target.parent.mkdir(parents=True, exist_ok=True)
        artifact = info.tags.get(TAG_CHECKPOINT, CHECKPOINT_ARTIFACT)
        with tempfile.TemporaryDirectory(prefix="quadra-download-", dir=target.parent) as tmp:
            with self._call(f"download the checkpoint of {self.model_name} version {info.version}"):
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{self.model_name}/{info.version}/{artifact}",
                    dst_path=tmp,
                    tracking_uri=self.tracking_uri,
                    registry_uri=self.tracking_uri,
                )
            local_path = Path(local)
            if verify and info.checkpoint_sha256:
                actual = file_sha256(local_path)
                if actual != info.checkpoint_sha256:
                    raise RegistryError(
                        f"the checkpoint of {self.model_name} version {info.version} has SHA-256 {actual}, "
                        f"but the version is tagged {info.checkpoint_sha256}"
                    )
            os.replace(local_path, target)
        return target

    def load_model(self, version: int) -> QuadraModel:
        """The model of `version`, rebuilt from its checkpoint (checked against its SHA-256)."""
        from quadra_pipeline.model import load_checkpoint

        with tempfile.TemporaryDirectory(prefix="quadra-load-") as tmp:
            path = self.download_checkpoint(version, Path(tmp) / CHECKPOINT_FILENAME)
            return load_checkpoint(path).model

    # Links -----------------------------------------------------------------------------------

    def run_url(self, run_id: str, ui_base: str) -> str:
        """The run's page in the MLflow UI at `ui_base` (e.g. http://127.0.0.1:5000)."""
        experiment_id = self._experiment_id
        if experiment_id is None:
            try:
                self._ensure_available()
                with self._call(f"read run {run_id}"):
                    experiment_id = self.client.get_run(run_id).info.experiment_id
            except RegistryError:
                experiment_id = self.experiment_id()
        return f"{ui_base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    def version_url(self, version: int, ui_base: str) -> str:
        return f"{ui_base.rstrip('/')}/#/models/{self.model_name}/versions/{_version_number(version)}"


def _version_number(version: Any) -> int:
    if isinstance(version, bool):
        raise RegistryError(f"a model version is a positive integer, not {version!r}")
    text = str(version).strip()
    if text.lower().startswith("v"):
        text = text[1:]
    try:
        number = int(text)
    except ValueError:
        raise RegistryError(f"a model version is a positive integer, not {version!r}") from None
    if number < 1:
        raise RegistryError(f"a model version is a positive integer, not {version!r}")
    return number


def _version_info(found: Any, model_name: str) -> VersionInfo:
    created_ms = getattr(found, "creation_timestamp", None) or 0
    aliases = list(getattr(found, "aliases", None) or [])
    return VersionInfo(
        version=int(found.version),
        aliases=[str(a) for a in aliases],
        tags={str(k): str(v) for k, v in (found.tags or {}).items()},
        created_at=dt.datetime.fromtimestamp(int(created_ms) / 1000, tz=dt.timezone.utc),
        run_id=found.run_id or None,
        description=found.description or "",
        status=str(found.status or "").removeprefix("ModelVersionStatus."),
        source=str(found.source or ""),
        model_name=model_name,
    )


def _epoch_ms(value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return int(value.timestamp() * 1000)
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


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
