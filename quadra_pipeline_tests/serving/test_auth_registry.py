"""The service against MLflow as the stack runs it: `mlflow server --app-name basic-auth`, its
users made by `registry.access.provision` (as the stack's MLflow does at start), versions
registered by `quadra-pipeline` (EDIT), and the service reading as `quadra-reader` (READ only)
with its password from a file: READ is enough to follow the alias and download a version's
files through MLflow's artifact proxy. A wrong password is `unavailable` with a reason that
names the user, never the password.

The server caches verified credentials (`auth_cache_ttl_seconds`, off by default in MLflow
3.17): without it every request hashes the password (230 ms here), and a version's ~100 files
take 16-19 s to download, for the service and for the pipeline alike. The stack's MLflow should
set it too (see the serving report)."""

from __future__ import annotations

import os
import secrets
from unittest import mock

import pytest

from quadra_pipeline.registry import ModelRegistry
from quadra_pipeline.registry.access import PIPELINE_USER, READER_USER, Grant, provision
from quadra_pipeline.settings import load_settings
from quadra_pipeline_tests.registry.conftest import running_mlflow_server

from .conftest import (
    FIELD_SIZE,
    FOLLOW_LIMIT_S,
    Models,
    keyring_of,
    new_model_name,
    serving,
)

ADMIN = "admin-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-basic-auth")
    (folder / "basic_auth.ini").write_text(
        "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{folder / 'basic_auth.db'}\nadmin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 60\n")
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(folder / "basic_auth.ini"), "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    with running_mlflow_server(folder, "--app-name", "basic-auth", env=env) as tracking:
        yield tracking


def test_the_service_follows_the_alias_as_mlflows_read_only_user(auth_server, serving_engine, signing_keys, tmp_path):
    model = new_model_name()
    experiment = f"{model}-experiment"
    pipeline_password, reader_password = secrets.token_hex(12), secrets.token_hex(12)
    admin = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": ADMIN}
    with mock.patch.dict(os.environ, admin):
        provision(auth_server.uri, [Grant(PIPELINE_USER, pipeline_password, "EDIT"),
                                    Grant(READER_USER, reader_password, "READ")], experiment=experiment, model=model)
    pipeline = ModelRegistry(auth_server.uri, model_name=model, experiment_name=experiment, keys=signing_keys,
                             credentials=(PIPELINE_USER, pipeline_password))
    models = Models(pipeline, serving_engine, tmp_path)
    v1 = models.register()
    models.promote(v1)

    (tmp_path / "reader_password").write_text(reader_password + "\n")
    settings = load_settings(QUADRA_HOME=str(tmp_path / "home"), MLFLOW_TRACKING_URI=auth_server.uri,
                             MLFLOW_TRACKING_USERNAME=READER_USER,
                             MLFLOW_TRACKING_PASSWORD_FILE=str(tmp_path / "reader_password"))
    reader = ModelRegistry(auth_server.uri, model_name=model, keyring=keyring_of(signing_keys),
                           credentials=settings.mlflow_credentials, max_retries=1, timeout_seconds=5.0)
    with serving(models, keyring_of(signing_keys), tmp_path, registry=reader) as client:
        client.wait_ready(v1)
        v2 = models.register()
        models.promote(v2)
        client.wait_ready(v2, timeout=FOLLOW_LIMIT_S)
        assert client.invoke({"inputs": [[0.2] * FIELD_SIZE]}).headers["X-Quadra-Model-Version"] == str(v2)
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ

    wrong = ModelRegistry(auth_server.uri, model_name=model, keyring=keyring_of(signing_keys),
                          credentials=(READER_USER, "not-the-password"), max_retries=0, timeout_seconds=5.0)
    with serving(models, keyring_of(signing_keys), tmp_path / "wrong", registry=wrong) as client:
        client.wait_for(lambda: client.get("/health").json()["status"] == "unavailable", 20, "unavailable")
        reason = client.get("/health").json()["reason"]
        assert f"the password of user '{READER_USER}' was refused" in reason
        assert "not-the-password" not in reason and reader_password not in client.get("/health").text
