"""Who may do what on an MLflow server with authentication (MLflow's basic-auth app), made idempotently
by the server's admin on every start (no Dagster here).

The pipeline never talks to MLflow as its admin. The admin (whose password lives only in the
MLflow service) creates the experiment and the registered model itself, so no other user owns
them, then makes:

- `quadra-pipeline`, the training and promotion runs' user: EDIT on the experiment (runs,
  metrics, artifacts, logged models) and on the registered model (new versions, tags, aliases);
  not MANAGE, so it cannot delete the model, its versions, or change who may do what;
- `quadra-reader`, the alias-history sensor's user: READ on both.

Passwords come from files (`QUADRA_MLFLOW_<USER>_PASSWORD_FILE`); running again sets them again
(a rotated password) and leaves permissions as they should be.

    python -m quadra_pipeline.registry.access    # in the MLflow service, once it answers
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import RegistryError
from .names import EXPERIMENT_NAME, MODEL_NAME

log = logging.getLogger(__name__)

PIPELINE_USER = "quadra-pipeline"
READER_USER = "quadra-reader"


@dataclass(frozen=True)
class Grant:
    username: str
    password: str
    permission: str  # READ, EDIT or MANAGE, on the experiment and on the registered model


def provision(tracking_uri: str, grants: Sequence[Grant], *, experiment: str = EXPERIMENT_NAME,
              model: str = MODEL_NAME) -> None:
    """As the admin whose credentials are in MLFLOW_TRACKING_USERNAME/PASSWORD: the experiment
    and the registered model, each user with its password, and exactly its permission on both."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    auth = get_app_client("basic-auth", tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found is not None else client.create_experiment(
        experiment, tags={"project": "quadra-pipeline"})
    try:
        client.get_registered_model(model)
    except MlflowException:
        client.create_registered_model(model, description="Quadra Matrix models trained by the pipeline")
    for grant in grants:
        try:
            auth.get_user(grant.username)
            auth.update_user_password(grant.username, grant.password)
        except MlflowException:
            auth.create_user(grant.username, grant.password)
        for resource_type, resource_id in (("experiment", str(experiment_id)), ("registered_model", model)):
            _grant(auth, grant.username, resource_type, resource_id, grant.permission)
        log.info("MLflow user %s: %s on experiment %s and registered model %s", grant.username, grant.permission,
                 experiment, model)


def _grant(auth, username: str, resource_type: str, resource_id: str, permission: str) -> None:
    """Exactly `permission` for the user on the resource (a different one is replaced)."""
    from mlflow.exceptions import MlflowException

    try:
        auth.grant_user_permission(username, resource_type, resource_id, permission)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        if auth.get_user_permission(username, resource_type, resource_id).permission == permission:
            return
        auth.revoke_user_permission(username, resource_type, resource_id)
        auth.grant_user_permission(username, resource_type, resource_id, permission)


def _password(variable: str) -> str:
    path = os.environ.get(variable)
    if not path:
        raise RegistryError(f"{variable} is not set: the file holding that user's password")
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise RegistryError(f"{variable}={path}: cannot read it ({exc.strerror or exc})") from None
    if not value:
        raise RegistryError(f"{variable}={path} is empty")
    return value


def main() -> int:
    """The MLflow service's start script runs this once the server answers."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    grants = [
        Grant(PIPELINE_USER, _password("QUADRA_MLFLOW_PIPELINE_PASSWORD_FILE"), "EDIT"),
        Grant(READER_USER, _password("QUADRA_MLFLOW_READER_PASSWORD_FILE"), "READ"),
    ]
    provision(tracking_uri, grants)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
