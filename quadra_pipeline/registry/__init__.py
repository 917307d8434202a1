"""The MLflow model registry, as this project uses it (no Dagster here).

    from quadra_pipeline.registry import ModelRegistry, promote, register_and_mirror

`client` wraps `mlflow.MlflowClient` (runs, metrics, registering signed versions, aliases,
downloads); `service` keeps the registry and the SQL store's mirror (`model_versions`, alias
history) in step; `history` records the alias moves made outside the pipeline; `signing`
signs and verifies model directories. Importing this package does not import MLflow or torch;
the first call does.
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
from .errors import (
    RegistryError,
    RegistryUnavailableError,
    UnknownModelVersionError,
    mask_secrets,
)
from .history import EXTERNAL, AliasMove, alias_moves, champion_at, reconcile_aliases
from .service import (
    RegistryListing,
    default_actor,
    import_checkpoint,
    list_with_history,
    promote,
    register_and_mirror,
    signed_versions,
    version_label,
)
from .signing import SignatureError

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "CHECKPOINT_ARTIFACT",
    "EXPERIMENT_NAME",
    "EXTERNAL",
    "MODEL_NAME",
    "AliasMove",
    "ModelRegistry",
    "RegisteredVersion",
    "RegistryError",
    "RegistryListing",
    "RegistryUnavailableError",
    "UnknownModelVersionError",
    "SignatureError",
    "VersionInfo",
    "alias_moves",
    "champion_at",
    "code_version",
    "default_actor",
    "import_checkpoint",
    "list_with_history",
    "mask_secrets",
    "promote",
    "reconcile_aliases",
    "register_and_mirror",
    "signed_versions",
    "version_label",
]
