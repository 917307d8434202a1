"""Resources: the SQL store, the MLflow registry and the data home, chosen per environment.

Every field defaults to what `quadra_pipeline.settings` resolves (development needs no
configuration). In production the locations that carry credentials come in through
`dg.EnvVar`, so they are read at run time and never stored in the run's config.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr
from sqlalchemy.engine import Engine

from ..settings import Environment, Settings, SettingsError, load_settings


class DataHome(dg.ConfigurableResource):
    """Where checkpoints, corpus snapshots and MLflow's local artifacts live (QUADRA_HOME)."""

    home: str | None = None

    def settings(self) -> Settings:
        return load_settings(**({"home": self.home} if self.home else {}))

    @property
    def path(self) -> Path:
        return self.settings().ensure_home()

    def checkpoint_dir(self, run_id: str) -> Path:
        path = self.path / "checkpoints" / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def corpus_dir(self) -> Path:
        path = self.path / "corpus"
        path.mkdir(parents=True, exist_ok=True)
        return path


class StoreResource(dg.ConfigurableResource):
    """The project's SQL database (DATABASE_URL); the schema is brought to head on first use."""

    database_url: str | None = None
    _engine: Engine | None = PrivateAttr(default=None)

    def url(self) -> str:
        """The configured URL; in production DATABASE_URL or DATABASE_URL_FILE is required (the
        data home's SQLite file would silently be another database)."""
        if self.database_url:
            return self.database_url
        settings = load_settings()
        if settings.env is Environment.production and settings.database_url_override is None:
            raise SettingsError(
                "DATABASE_URL (or DATABASE_URL_FILE) is not set (required when QUADRA_ENV=production: the project's "
                "PostgreSQL database)"
            )
        return settings.database_url

    def engine(self) -> Engine:
        if self._engine is None:
            from ..store import ensure_schema, make_engine

            engine = make_engine(self.url())
            ensure_schema(engine)
            self._engine = engine
        return self._engine

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()


class RegistryResource(dg.ConfigurableResource):
    """MLflow tracking and model registry (MLFLOW_TRACKING_URI), through our own wrapper."""

    tracking_uri: str | None = None
    artifact_root: str | None = None
    ui_url: str | None = None  # default: settings.mlflow_ui_url
    max_retries: int = 2
    timeout_seconds: float = 5.0

    def ui_base(self) -> str:
        return self.ui_url or load_settings().mlflow_ui_url

    def registry(self):  # -> ModelRegistry (imported lazily: MLflow is a heavy import)
        """The registry with the settings' signing key (new versions), keyring (verifying any
        version, rotated keys included) and MLflow credentials (variable or file)."""
        from ..registry import ModelRegistry

        settings = load_settings()
        return ModelRegistry.from_settings(
            settings,
            tracking_uri=self.tracking_uri or settings.mlflow_tracking_uri,
            artifact_root=self.artifact_root or str(settings.mlflow_artifact_root),
            max_retries=self.max_retries,
            timeout_seconds=self.timeout_seconds,
        )


class ObjectStoreResource(dg.ConfigurableResource):
    """Files that steps on different hosts share (QUADRA_OBJECT_STORE: S3 or a folder): the
    corpus snapshots, a sweep's trial checkpoints. Checked (bounded) before a step relies on it."""

    url: str | None = None

    def store(self):  # -> quadra_pipeline.objectstore.ObjectStore
        from ..objectstore import open_object_store

        return open_object_store(self.url or load_settings().object_store)


def resources_for(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """Every resource reads its settings when a run uses it, never from run config: the
    project's database URL from DATABASE_URL or DATABASE_URL_FILE (a secret: required in
    production, by the store), the MLflow server from MLFLOW_TRACKING_URI (required in
    production, through `dg.EnvVar`). Step outputs go through the object store
    (`io_manager`), so a step on one host reads what another wrote."""
    from .io_manager import ObjectStoreIOManager

    shared = {"data_home": DataHome(), "store": StoreResource(), "objects": ObjectStoreResource(),
              "io_manager": ObjectStoreIOManager()}
    if settings.env is Environment.production:
        return {**shared, "registry": RegistryResource(tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI"))}
    return {**shared, "registry": RegistryResource()}
