"""deploy/helm/ checked the way `helm install` checks values, offline: our values merged onto the
official chart's own defaults (vendor/dagster-helm/values.yaml, a copy of the chart's file with
its provenance in SOURCE.md; Apache-2.0), merged as Helm merges (maps
deeply, everything else replaced), then validated against the chart's values schema
(values.schema.json beside it, remote Kubernetes refs removed: see its SOURCE.md), and the user
deployments against the subchart's schema too. No cluster can run here: the manifests are parsed
and cross-checked, not applied."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import jsonschema
import pytest
import yaml

from quadra_pipeline_tests.defs.conftest import REPO_ROOT

HELM = REPO_ROOT / "deploy" / "helm"
VENDOR = Path(__file__).parent / "vendor" / "dagster-helm"


def merge(defaults, overrides):
    """Helm's coalescing of values: maps merge key by key, anything else replaces."""
    if isinstance(defaults, dict) and isinstance(overrides, dict):
        merged = dict(defaults)
        for key, value in overrides.items():
            merged[key] = merge(defaults.get(key), value) if key in defaults else value
        return merged
    return copy.deepcopy(overrides)


def problems(values: dict) -> list[str]:
    """What the chart's schemas refuse in `values` (our file merged onto the chart's defaults)."""
    merged = merge(yaml.safe_load((VENDOR / "values.yaml").read_text()), values)
    # The subchart's own values.yaml (its dagsterHome, secret names, service account) is not
    # vendored: its schema checks what the parent hands it, the deployments.
    subchart = json.loads((VENDOR / "charts" / "dagster-user-deployments" / "values.schema.json").read_text())
    subchart["required"] = ["deployments"]
    user_code = {key: merged["dagster-user-deployments"][key] for key in ("deployments", "imagePullSecrets")}
    found = []
    for name, schema, document in (("values.schema.json", json.loads((VENDOR / "values.schema.json").read_text()), merged),
                                   ("charts/dagster-user-deployments/values.schema.json", subchart, user_code)):
        validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)(schema)
        found += [f"{name}: {'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(document)]
    return found


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load((HELM / "values.yaml").read_text())


def test_our_values_validate_against_the_official_chart_schema(values):
    assert problems(values) == []


@pytest.mark.parametrize("path, wrong, why", [
    (("dagsterDaemon", "runMonitor"), {"enabled": True}, "a misspelt key"),
    (("runLauncher", "config", "k8sRunLauncher", "runK8sConfig", "containerConfigs"), {}, "a misspelt nested key"),
    (("runLauncher", "type"), "K8sLauncher", "an unknown run launcher"),
    (("runLauncher", "config", "k8sRunLauncher", "envSecrets"), "quadra-secrets", "a string for a list"),
    (("concurrency", "runs", "maxConcurrentRuns"), "four", "a string for a number"),
    (("dagster-user-deployments", "deployments"), [{"name": "quadra-pipeline", "port": 4000}], "a deployment without its image"),
])
def test_a_wrong_key_or_type_in_our_values_fails(values, path, wrong, why):
    broken = copy.deepcopy(values)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = wrong
    assert problems(broken), f"{why} passed the schema"


def test_the_values_keep_the_stacks_queue_and_concurrency_rules(values):
    """The same rules as deploy/compose/dagster.yaml (itself equal to the development instance's)."""
    instance = yaml.safe_load((REPO_ROOT / "deploy" / "compose" / "dagster.yaml").read_text())
    runs, pools = instance["concurrency"]["runs"], instance["concurrency"]["pools"]
    assert values["concurrency"]["enabled"] is True
    assert values["concurrency"]["runs"]["maxConcurrentRuns"] == runs["max_concurrent_runs"]
    assert values["concurrency"]["runs"]["tagConcurrencyLimits"] == runs["tag_concurrency_limits"]
    assert values["concurrency"]["pools"]["defaultLimit"] == pools["default_limit"]
    daemon = values["dagsterDaemon"]
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    monitoring = instance["run_monitoring"]
    assert daemon["runMonitoring"] == {
        "enabled": monitoring["enabled"], "startTimeoutSeconds": monitoring["start_timeout_seconds"],
        "cancelTimeoutSeconds": monitoring["cancel_timeout_seconds"], "pollIntervalSeconds": monitoring["poll_interval_seconds"],
        "freeSlotsAfterRunEndSeconds": monitoring["free_slots_after_run_end_seconds"]}
    retries = instance["run_retries"]
    assert daemon["runRetries"] == {"enabled": retries["enabled"], "maxRetries": retries["max_retries"],
                                    "retryOnAssetOrOpFailure": retries["retry_on_asset_or_op_failure"]}


def test_each_run_is_its_own_pod_with_requests_and_limits_and_the_code_location_is_probed(values):
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    resources = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["containerConfig"]["resources"]
    assert resources["requests"]["memory"] and resources["limits"]["memory"]
    assert values["postgresql"]["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
    assert values["global"]["postgresqlSecretName"]
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "quadra_pipeline.definitions"]
    assert deployment["readinessProbe"]["enabled"] and deployment["livenessProbe"] and deployment["startupProbe"]["enabled"]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"]  # runs get the same env, secrets, volumes


def test_the_code_locations_quadra_settings_are_known_and_valid(values, tmp_path, monkeypatch):
    """Every QUADRA_* variable the values set is a setting the code reads, with a value it accepts
    (a misspelt name would be ignored silently, a wrong value would stop the code location)."""
    from quadra_pipeline.settings import RunExecutor, Settings, load_settings

    for name in [n for n in os.environ if n.startswith("QUADRA_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no developer's .env
    [deployment] = values["dagster-user-deployments"]["deployments"]
    env = {e["name"]: e["value"] for e in deployment["env"] if e["name"].startswith("QUADRA_")}
    assert set(env) <= {field.alias for field in Settings.model_fields.values()}
    assert env.pop("QUADRA_ENV") == "production"  # (whose secrets come from the quadra-secrets secret)
    settings = load_settings(**env)
    assert settings.run_executor is RunExecutor.in_process  # step isolation is one value away: k8s_job


def manifests() -> list[dict]:
    documents = []
    for path in sorted((HELM / "manifests").glob("*.yaml")) + sorted((HELM / "examples").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                documents.append({**document, "_file": path.name})
    return documents


def test_every_manifest_parses_and_what_the_values_name_exists():
    documents = manifests()
    assert documents
    for document in documents:
        assert document["apiVersion"] and document["kind"] and document["metadata"]["name"], document["_file"]
        assert document["metadata"]["namespace"] == "quadra", document["_file"]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in documents}
    assert {("Deployment", "mlflow"), ("Service", "mlflow"), ("Secret", "quadra-mlflow"),
            ("PersistentVolumeClaim", "quadra-mlartifacts"), ("PersistentVolumeClaim", "quadra-backups"),
            ("PersistentVolumeClaim", "quadra-data")} <= kinds
    values = yaml.safe_load((HELM / "values.yaml").read_text())
    [deployment] = values["dagster-user-deployments"]["deployments"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in deployment["volumes"]}
    assert claims <= {name for kind, name in kinds if kind == "PersistentVolumeClaim"}
    mlflow = next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
    container = mlflow["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["/bin/sh", "/opt/quadra/mlflow-server.sh"]  # in the image, as in Compose
    assert all(probe in container for probe in ("readinessProbe", "livenessProbe", "startupProbe"))
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "*" not in env["MLFLOW_SERVER_ALLOWED_HOSTS"] and "*" not in env["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"]
    # The secret is a template outside manifests/ (applying manifests/ never overwrites the real
    # one) and holds no value: a copy applied unfilled makes a server that refuses to start.
    secret = next(d for d in documents if d["kind"] == "Secret")
    assert secret["_file"] == "mlflow-secret.yaml" and not any(d["kind"] == "Secret" for d in documents if d["_file"] != secret["_file"])
    assert not list((HELM / "manifests").glob("*secret*"))
    assert set(secret["stringData"]) == {"MLFLOW_BACKEND_STORE_URI", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"}
    assert all(value == "" for value in secret["stringData"].values())
    # The tracking URI the runs use names the MLflow service, and its Host header is allowed.
    tracking = next(e["value"] for e in deployment["env"] if e["name"] == "MLFLOW_TRACKING_URI")
    assert tracking.split("//")[1] in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
