"""The MLflow model registry, as this project uses it (no Dagster here).

    from quadra_pipeline.registry import ModelRegistry, promote, register_and_mirror

`client` wraps `mlflow.MlflowClient` (runs, metrics, registering, aliases, downloads);
`service` keeps the registry and the SQL store's mirror (`model_versions`, alias history) in
step. Importing this package does not import MLflow or torch; the first call does.
"""

from .client import (
    CHALLENGER,
    CHAMPION,
    CHECKPOINT_ARTIFACT,
    EXPERIMENT_NAME,
    MODEL_NAME,
    ModelRegistry,
    RegisteredVersion,
    VersionInfo,
    code_version,
)
from .errors import RegistryError, RegistryUnavailableError, UnknownModelVersionError, mask_secrets
from .service import (
    AliasMove,
    RegistryListing,
    default_actor,
    import_checkpoint,
    list_with_history,
    promote,
    register_and_mirror,
    version_label,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "CHECKPOINT_ARTIFACT",
    "EXPERIMENT_NAME",
    "MODEL_NAME",
    "AliasMove",
    "ModelRegistry",
    "RegisteredVersion",
    "RegistryError",
    "RegistryListing",
    "RegistryUnavailableError",
    "UnknownModelVersionError",
    "VersionInfo",
    "code_version",
    "default_actor",
    "import_checkpoint",
    "list_with_history",
    "mask_secrets",
    "promote",
    "register_and_mirror",
    "version_label",
]
