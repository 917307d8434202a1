"""The registry against a real `mlflow server --app-name basic-auth` on loopback (as the Compose
stack runs it): a process configured with MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD_FILE
registers, verifies and promotes; the password is in its environment only while a call runs;
missing or wrong credentials are one line naming the variables."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from quadra_pipeline.registry import CHAMPION, ModelRegistry, RegistryError, promote
from quadra_pipeline.settings import load_settings

from .conftest import Tracking, running_mlflow_server
from .test_registry import register

ADMIN_PASSWORD = "s3cret-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracking]:
    folder = tmp_path_factory.mktemp("mlflow-auth")
    (folder / "basic_auth.ini").write_text(
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(folder / "basic_auth.ini"), "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    with running_mlflow_server(folder, "--app-name", "basic-auth", env=env) as tracking:
        yield tracking


def registry_from(tmp_path: Path, tracking: Tracking, model_name: str, password: str | None) -> ModelRegistry:
    overrides: dict[str, str] = {"QUADRA_HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_URI": tracking.uri}
    tmp_path.mkdir(parents=True, exist_ok=True)
    if password is not None:
        (tmp_path / "mlflow-password").write_text(password + "\n")
        overrides.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD_FILE=str(tmp_path / "mlflow-password"))
    return ModelRegistry.from_settings(load_settings(**overrides), model_name=model_name)


def test_the_password_from_its_file_opens_an_authenticated_server(auth_server, tmp_path, engine, trained, model_name,
                                                                   monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    registry = registry_from(tmp_path, auth_server, model_name, ADMIN_PASSWORD)
    registry.check_available()
    registered = register(registry, engine, *trained)  # runs, metrics, artifacts over HTTP, a version
    assert registry.verify_version(registered.version).version == registered.version  # downloads
    promote(registry, engine, registered.version, moved_by="cli:test", reason="authenticated")
    assert registry.alias_version(CHAMPION) == registered.version
    # Scoped to each call: the process environment never keeps the password.
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ and "MLFLOW_TRACKING_USERNAME" not in os.environ
    assert ADMIN_PASSWORD not in repr(registry)


def test_no_credentials_or_a_wrong_password_is_one_line_naming_the_variables(auth_server, tmp_path, model_name,
                                                                              monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    anonymous = registry_from(tmp_path / "a", auth_server, model_name, None)
    with pytest.raises(RegistryError) as caught:
        anonymous.list_versions()
    message = str(caught.value)
    assert "answered HTTP 401" in message and "no credentials were given" in message
    assert "MLFLOW_TRACKING_PASSWORD_FILE" in message and "\n" not in message

    wrong = registry_from(tmp_path / "b", auth_server, model_name, "not-the-password")
    with pytest.raises(RegistryError) as caught:
        wrong.list_versions()
    message = str(caught.value)
    assert "answered HTTP 401" in message and "the password of user 'admin' was refused" in message
    assert "not-the-password" not in message and ADMIN_PASSWORD not in message


def test_the_pipeline_user_may_train_register_and_promote_but_not_delete_and_the_reader_only_reads(
        auth_server, tmp_path, engine, trained, monkeypatch):
    """registry/access.py, as the stack's MLflow service runs it: the admin makes the experiment,
    the registered model and two users; the pipeline's user (EDIT) does all the pipeline does and
    gets 403 deleting the model; the reader (READ) lists versions and aliases and cannot move one.
    Running it again is harmless and sets a rotated password."""
    import requests

    from quadra_pipeline.registry.access import PIPELINE_USER, READER_USER, Grant, provision

    model = f"access-{secrets.token_hex(4)}"
    experiment = f"exp-{model}"
    pipeline_password, reader_password = secrets.token_hex(12), secrets.token_hex(12)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    grants = [Grant(PIPELINE_USER, "first-" + pipeline_password, "EDIT"), Grant(READER_USER, reader_password, "READ")]
    provision(auth_server.uri, grants, experiment=experiment, model=model)
    grants[0] = Grant(PIPELINE_USER, pipeline_password, "EDIT")  # a rotated password
    provision(auth_server.uri, grants, experiment=experiment, model=model)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")

    def as_user(user: str, password: str, where: Path) -> ModelRegistry:
        where.mkdir(parents=True, exist_ok=True)
        (where / "password").write_text(password)
        settings = load_settings(QUADRA_HOME=str(where / "home"), MLFLOW_TRACKING_URI=auth_server.uri,
                                 MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD_FILE=str(where / "password"))
        return ModelRegistry.from_settings(settings, model_name=model, experiment_name=experiment)

    pipeline = as_user(PIPELINE_USER, pipeline_password, tmp_path / "pipeline")
    registered = register(pipeline, engine, *trained)
    promote(pipeline, engine, registered.version, moved_by="cli:test", reason="EDIT is enough")
    assert pipeline.alias_version(CHAMPION) == registered.version
    admin = requests.auth.HTTPBasicAuth("admin", ADMIN_PASSWORD)
    user = requests.get(f"{auth_server.uri}/api/2.0/mlflow/users/get", params={"username": PIPELINE_USER}, auth=admin, timeout=10).json()
    assert user["user"]["is_admin"] is False
    denied = requests.delete(f"{auth_server.uri}/api/2.0/mlflow/registered-models/delete", json={"name": model},
                             auth=(PIPELINE_USER, pipeline_password), timeout=10)
    assert denied.status_code == 403, denied.text
    old = requests.get(f"{auth_server.uri}/api/2.0/mlflow/registered-models/get", params={"name": model},
                       auth=(PIPELINE_USER, "first-" + pipeline_password), timeout=10)
    assert old.status_code == 401  # the password before the rotation no longer opens it

    reader = as_user(READER_USER, reader_password, tmp_path / "reader")
    assert reader.aliases() == {"champion": registered.version, "challenger": registered.version}
    with pytest.raises(RegistryError, match="403|PERMISSION_DENIED|Permission denied"):
        reader.set_alias(CHAMPION, registered.version)
