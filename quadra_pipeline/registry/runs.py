"""Experiments, runs, parameters, metrics and run artifacts (the tracking half of the registry)."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .connection import MlflowConnection, _error_code, _sqlite_path
from .errors import RegistryError
from .names import MAX_METRICS_PER_BATCH, MAX_PARAMS_PER_BATCH, RUN_STATUSES

log = logging.getLogger(__name__)


class RunsMixin(MlflowConnection):
    """The experiment `experiment_name`, with artifacts under `artifact_root` for local stores."""

    artifact_root: str | os.PathLike[str] | None
    experiment_name: str
    _experiment_id: str | None

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
        return len(self.metric_steps(run_id, key))

    def metric_steps(self, run_id: str, key: str) -> list[int]:
        """The steps the run has a value of metric `key` for, in the order MLflow returns them."""
        self._ensure_available()
        with self._call(f"read metric {key!r} of run {run_id}"):
            return [int(m.step) for m in self.client.get_metric_history(run_id, key)]

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), "" if v is None else str(v)) for k, v in params.items()]
        self._ensure_available()
        with self._call(f"log {len(items)} params to run {run_id}"):
            for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
                self.client.log_batch(run_id, params=items[start : start + MAX_PARAMS_PER_BATCH])

    def set_run_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) tags of a run, e.g. a sweep's best trial on its parent run."""
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)) for k, v in tags.items()]
        if not items:
            return
        self._ensure_available()
        with self._call(f"tag run {run_id}"):
            self.client.log_batch(run_id, tags=items)

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
