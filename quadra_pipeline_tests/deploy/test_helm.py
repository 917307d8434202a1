"""deploy/helm/ checked offline, as far as it can be without a cluster (none can run here: no
kind/k3s, no helm binary; nothing is applied or rendered).

- The values the way `helm install` checks them: merged onto the official chart's own defaults
  (vendor/dagster-helm/values.yaml, provenance in SOURCE.md; Apache-2.0), maps deeply, everything
  else replaced, then validated against the chart's values schema as vendored, and again with its
  removed remote Kubernetes `$ref`s resolved to the real Kubernetes schemas that kubernetes-validate
  bundles (k8s_schemas.py), so env, volumes, probes, resources and security contexts are checked
  field by field (strictly: an unknown field is refused, as the API server's strict field
  validation does). The user deployments are also checked against the subchart's schema.
- Every manifest against the API server's schema for its kind (kubernetes-validate, strict).
- Each job's `dagster-k8s/config` (quadra_pipeline/defs/run_k8s_config.json) against the Kubernetes types,
  through dagster-k8s itself, and as the run pod's Job that dagster-k8s builds from it and the run
  launcher's config: validated as a batch/v1 Job.
- The identity split: which pod holds which secret, secrets only as files, pods non-root with a
  read-only root filesystem.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, urlsplit

import jsonschema
import pytest
import yaml

from quadra_pipeline.defs.common import RUN_K8S_CONFIG
from quadra_pipeline_tests.defs.conftest import REPO_ROOT, quadra_env  # noqa: F401 (a fixture)

from .k8s_schemas import (
    KUBERNETES_VERSIONS,
    REMOVED_REFS,
    dagster_k8s_config_schema,
    errors,
    k8s_schema,
    manifest_errors,
    resolve_chart_schema,
)

HELM = REPO_ROOT / "deploy" / "helm"
VENDOR = Path(__file__).parent / "vendor" / "dagster-helm"
SUBCHART_SCHEMA = "charts/dagster-user-deployments/values.schema.json"
JOBS = ("training_job", "sweep_job", "promote_model_job", "backup_job", "base_backup_job")
DAGSTER_HOME = "/opt/dagster/dagster_home"  # the chart's global.dagsterHome default

# The identity split (README, "Kubernetes"): each Kubernetes secret and the keys it holds...
SECRET_KEYS = {
    "quadra-dagster-postgresql": {"postgresql-password", "pgpass"},
    "quadra-postgres-ca": {"ca.crt"},
    "quadra-code": {"database-url", "mlflow-password"},
    "quadra-training": {"database-url", "mlflow-password", "model-signing.pem", "aws-credentials"},
    "quadra-backup": {"database-url", "backup-database-url", "mlflow-backend-uri", "secret-key", "backup-signing.pem",
                      "aws-credentials"},
    "quadra-mlflow": {"pgpass", "admin-password", "flask-secret-key", "pipeline-password", "reader-password",
                      "aws-credentials"},
    "quadra-serving": {"serving-token", "mlflow-password"},
}
DAGSTER_STORAGE = {"quadra-dagster-postgresql", "quadra-postgres-ca"}
# ...and the secrets each pod may mount, no more, no fewer.
POD_SECRETS = {
    "webserver": DAGSTER_STORAGE,
    "daemon": DAGSTER_STORAGE,
    "code": DAGSTER_STORAGE | {"quadra-code"},
    "run (no tag)": DAGSTER_STORAGE,
    "training_job": DAGSTER_STORAGE | {"quadra-training"},
    "sweep_job": DAGSTER_STORAGE | {"quadra-training"},
    "promote_model_job": DAGSTER_STORAGE | {"quadra-training"},
    "backup_job": DAGSTER_STORAGE | {"quadra-backup"},
    "base_backup_job": DAGSTER_STORAGE | {"quadra-backup"},
    "mlflow": {"quadra-postgres-ca", "quadra-mlflow"},
    "quadra-serving": {"quadra-serving"},  # MLflow as quadra-reader, its token; no database
}
# Pods that never reach PostgreSQL (no CA to mount).
NO_POSTGRES = {"quadra-serving"}
# Containers allowed a writable root filesystem, with the reason (none today).
WRITABLE_ROOT: dict[str, str] = {}
# Environment variables that name a secret's file (besides <NAME>_FILE).
FILE_VARIABLES = {"AWS_SHARED_CREDENTIALS_FILE", "PGPASSFILE"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|PRIVATE|(^|_)KEY($|_)|CREDENTIAL")


def merge(defaults, overrides):
    """Helm's coalescing of values: maps merge key by key, anything else replaces."""
    if isinstance(defaults, dict) and isinstance(overrides, dict):
        merged = dict(defaults)
        for key, value in overrides.items():
            merged[key] = merge(defaults.get(key), value) if key in defaults else value
        return merged
    return copy.deepcopy(overrides)


def load_json(relative: str) -> dict:
    return json.loads((VENDOR / relative).read_text())


def with_defaults(values: dict) -> dict:
    return merge(yaml.safe_load((VENDOR / "values.yaml").read_text()), values)


def user_code(merged: dict) -> dict:
    # The subchart's own values.yaml (its dagsterHome, secret names, service account) is not
    # vendored: its schema checks what the parent hands it, the deployments.
    return {key: merged["dagster-user-deployments"][key] for key in ("deployments", "imagePullSecrets")}


def subchart_schema(schema: dict) -> dict:
    schema = copy.deepcopy(schema)
    schema["required"] = ["deployments"]
    return schema


def problems(values: dict, version: str = KUBERNETES_VERSIONS[0]) -> list[str]:
    """What the chart's schemas refuse in `values` (our file merged onto the chart's defaults):
    as vendored (draft 7, what helm checks), then with the Kubernetes types resolved."""
    merged = with_defaults(values)
    found = []
    for name, schema, document in (("values.schema.json", load_json("values.schema.json"), merged),
                                   (SUBCHART_SCHEMA, subchart_schema(load_json(SUBCHART_SCHEMA)), user_code(merged))):
        validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)(schema)
        found += [f"{name}: {'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(document)]
        resolved, _ = resolve_chart_schema(schema, version)
        found += [f"{name} + Kubernetes {version}: {error}" for error in errors(resolved, document, version)]
    return found


def all_problems(values: dict) -> list[str]:
    """The schemas' objections, or (values they accept) those of the pod rules below, for every pod
    the values make."""
    found = problems(values)
    if found:
        return found
    merged = with_defaults(values)
    for name, pod in {**chart_pods(merged), **run_pods(merged, run_config())}.items():
        found += [f"{name}: {problem}" for problem in pod_problems(pod)]
    return found


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load((HELM / "values.yaml").read_text())


@pytest.fixture(scope="module")
def merged(values) -> dict:
    return with_defaults(values)


def run_config() -> dict:
    return json.loads(RUN_K8S_CONFIG.read_text())


def job_tags() -> dict[str, dict]:
    """Each job's `dagster-k8s/config` value, as the job definitions should carry it."""
    config = run_config()
    return {job: config["identities"][identity] for job, identity in config["jobs"].items()}


# --- The pods ----------------------------------------------------------------------------------

def chart_pg_password(merged: dict) -> dict:
    """What the chart (webserver, daemon, user deployments) and dagster-k8s (run pods) always add:
    Dagster's storage password from global.postgresqlSecretName, a key we leave empty."""
    return {"name": "DAGSTER_PG_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": merged["global"]["postgresqlSecretName"], "key": "postgresql-password"}}}


def image_of(image: dict) -> str:
    return f"{image['repository']}:{image['tag']}"


def chart_pods(merged: dict) -> dict[str, dict]:
    """The pod specs of the webserver, the daemon and the code server as the chart renders them from
    these values (templates deployment-webserver, deployment-daemon, subchart deployment-user): our
    settings, plus what the chart adds (the storage password variable, its instance file, the
    init containers that wait for the database and the code servers, the probes' defaults)."""
    pods = {}
    pg_password = chart_pg_password(merged)
    instance = {"name": "dagster-instance", "configMap": {"name": "quadra-dagster-instance"}}
    instance_mount = {"name": "dagster-instance", "mountPath": f"{DAGSTER_HOME}/dagster.yaml", "subPath": "dagster.yaml"}
    postgres = merged["postgresql"]
    for name, key in (("webserver", "dagsterWebserver"), ("daemon", "dagsterDaemon")):
        part = merged[key]
        check_db = ([{"name": "check-db-ready", "image": image_of(postgres["image"]), "command": ["sh", "-c", "pg_isready ..."],
                      "securityContext": part["securityContext"], "resources": part.get("initContainerResources") or {}}]
                    if part.get("checkDbReadyInitContainer") else [])
        if merged["dagster-user-deployments"]["enableSubchart"]:  # each waits for the code servers
            check_db += [{"name": f"init-user-deployment-{d['name']}", "image": image_of(merged["busybox"]["image"]),
                          "command": ["sh", "-c", f"until nslookup {d['name']}; do sleep 2; done"],
                          "securityContext": part["securityContext"], "resources": part.get("initContainerResources") or {}}
                         for d in merged["dagster-user-deployments"]["deployments"]]
        container = {"name": "dagster", "image": image_of(part["image"]), "env": [pg_password, *part["env"]],
                     "envFrom": [{"secretRef": s} for s in part["envSecrets"]],
                     "volumeMounts": [instance_mount, *(part.get("volumeMounts") or [])],
                     "securityContext": part["securityContext"], "resources": part["resources"]}
        for probe in ("readinessProbe", "livenessProbe"):
            if part.get(probe):
                container[probe] = part[probe]
        pods[name] = {"securityContext": part["podSecurityContext"],
                      "initContainers": [*(part.get("extraPrependedInitContainers") or []), *check_db],
                      "containers": [container], "volumes": [instance, *(part.get("volumes") or [])]}
    for deployment in merged["dagster-user-deployments"]["deployments"]:
        port = deployment["port"]
        health = {"exec": {"command": ["dagster", "api", "grpc-health-check", "-p", str(port)]}}
        readiness = {**health, **{k: v for k, v in deployment["readinessProbe"].items() if k != "enabled"}}
        container = {"name": "dagster-user-deployments", "image": image_of(deployment["image"]),
                     "args": ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", str(port), *deployment["dagsterApiGrpcArgs"]],
                     "env": [{"name": "DAGSTER_CURRENT_IMAGE", "value": image_of(deployment["image"])}, pg_password,
                             *(deployment.get("env") or [])],
                     "envFrom": [{"secretRef": s} for s in deployment.get("envSecrets") or []],
                     "volumeMounts": deployment.get("volumeMounts") or [],
                     "securityContext": deployment["securityContext"], "resources": deployment["resources"],
                     "readinessProbe": readiness, "livenessProbe": deployment["livenessProbe"],
                     "startupProbe": {**health, **{k: v for k, v in deployment["startupProbe"].items() if k != "enabled"}}}
        pods["code" if deployment["name"] == "quadra-pipeline" else deployment["name"]] = {
            "securityContext": deployment["podSecurityContext"], "initContainers": deployment.get("initContainers") or [],
            "containers": [container], "volumes": deployment.get("volumes") or []}
    return pods


def run_job(merged: dict, tag: dict | None) -> dict:
    """The batch/v1 Job that the K8sRunLauncher creates for a run with this `dagster-k8s/config`
    tag (or none), built by dagster-k8s itself from the run launcher's config as the chart writes
    it into dagster.yaml (templates/helpers/instance/_run-launcher.tpl), as a manifest."""
    import kubernetes
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import (
        USER_DEFINED_K8S_CONFIG_KEY,
        DagsterK8sJobConfig,
        UserDefinedDagsterK8sConfig,
        construct_dagster_k8s_job,
        get_user_defined_k8s_config,
    )

    launcher = merged["runLauncher"]["config"]["k8sRunLauncher"]
    snake = {"containerConfig": "container_config", "podSpecConfig": "pod_spec_config", "jobSpecConfig": "job_spec_config",
             "podTemplateSpecMetadata": "pod_template_spec_metadata", "jobMetadata": "job_metadata"}
    run_k8s_config = {snake[key]: value for key, value in (launcher.get("runK8sConfig") or {}).items() if value}
    context = K8sContainerContext().merge(K8sContainerContext(
        image_pull_policy=launcher["imagePullPolicy"],
        env_config_maps=["quadra-dagster-pipeline-env", *[c["name"] for c in launcher["envConfigMaps"]]],
        env_secrets=[s["name"] for s in launcher["envSecrets"]], env_vars=launcher["envVars"],
        volume_mounts=launcher["volumeMounts"], volumes=launcher["volumes"], resources=launcher.get("resources"),
        security_context=launcher.get("securityContext"), namespace="quadra",
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(run_k8s_config)))
    if tag is not None:
        user = get_user_defined_k8s_config({USER_DEFINED_K8S_CONFIG_KEY: json.dumps(tag)})
        context = context.merge(K8sContainerContext(run_k8s_config=user))
    [deployment] = merged["dagster-user-deployments"]["deployments"]
    job = construct_dagster_k8s_job(
        job_config=DagsterK8sJobConfig(job_image=image_of(deployment["image"]), dagster_home=DAGSTER_HOME,
                                       instance_config_map="quadra-dagster-instance",
                                       postgres_password_secret=merged["global"]["postgresqlSecretName"]),
        args=["dagster", "api", "execute_run", "{}"], job_name="dagster-run-0123456789abcdef",
        user_defined_k8s_config=context.run_k8s_config, component="run_worker",
        labels={"dagster/job": "job", "dagster/run-id": "0123456789abcdef"})
    document = kubernetes.client.ApiClient().sanitize_for_serialization(job)
    document["metadata"]["namespace"] = "quadra"
    return document


def run_pods(merged: dict, config: dict) -> dict[str, dict]:
    """The pod spec of a run without a tag and of each job's run."""
    tags = {job: config["identities"][identity] for job, identity in config["jobs"].items()}
    jobs = {"run (no tag)": run_job(merged, None), **{job: run_job(merged, tag) for job, tag in tags.items()}}
    return {name: job["spec"]["template"]["spec"] for name, job in jobs.items()}


def manifests() -> list[dict]:
    documents = []
    for path in sorted((HELM / "manifests").glob("*.yaml")) + sorted((HELM / "examples").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                documents.append({**document, "_file": f"{path.parent.name}/{path.name}"})
    return documents


def manifest_pods() -> dict[str, dict]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in manifests() if d["kind"] == "Deployment"}


def all_pods(merged: dict) -> dict[str, dict]:
    return {**chart_pods(merged), **run_pods(merged, run_config()), **manifest_pods()}


def containers(pod: dict) -> list[dict]:
    return [*(pod.get("initContainers") or []), *pod["containers"]]


def value_of(container: dict, name: str) -> str | None:
    return next((e.get("value") for e in container.get("env") or [] if e["name"] == name), None)


def secret_volumes(pod: dict) -> dict[str, dict]:
    """Volume name -> {"secret": name, "keys": {...}} for each secret (or projected secret) volume."""
    found = {}
    for volume in pod.get("volumes") or []:
        sources = [volume] + [s for s in (volume.get("projected") or {}).get("sources", [])]
        for source in sources:
            secret = source.get("secret")
            if secret:
                name = secret.get("secretName") or secret.get("name")
                keys = {item["key"] for item in secret.get("items") or []} or set(SECRET_KEYS.get(name, ()))
                found[volume["name"]] = {"secret": name, "keys": keys}
    return found


def file_source(pod: dict, container: dict, path: str) -> tuple[dict, str] | None:
    """The volume a file path of this container is on and the path inside it (the deepest mount)."""
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    best = None
    for mount in container.get("volumeMounts") or []:
        root = PurePosixPath(mount["mountPath"])
        target = PurePosixPath(path)
        inside = target == root or root in target.parents
        if inside and (best is None or len(root.parts) > len(PurePosixPath(best[0]["mountPath"]).parts)):
            best = (mount, str(target.relative_to(root)))
    if best is None:
        return None
    mount, inside = best
    return volumes.get(mount["name"], {"name": mount["name"]}), (mount.get("subPath") or inside)


def pod_problems(pod: dict) -> list[str]:
    """The rules every pod of this deployment keeps, beyond its schema (which pod_spec_problems checks):
    non-root, read-only root filesystem, no privilege, volumes well formed, and secrets as files only."""
    found = []
    security = pod.get("securityContext") or {}
    if security.get("runAsNonRoot") is not True or not security.get("runAsUser"):
        found.append(f"the pod does not run as non-root (runAsNonRoot: true, a runAsUser other than 0): {security}")
    if (security.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        found.append("the pod's seccompProfile is not RuntimeDefault")
    names = [v["name"] for v in pod.get("volumes") or []]
    if len(names) != len(set(names)):
        found.append(f"volumes named twice: {sorted({n for n in names if names.count(n) > 1})}")
    for volume in pod.get("volumes") or []:
        sources = [key for key in volume if key != "name"]
        if len(sources) != 1:
            found.append(f"volume {volume['name']} has {len(sources)} sources ({sources}): one, please")
    for container in containers(pod):
        where = f"container {container['name']}"
        context = container.get("securityContext") or {}
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}: allowPrivilegeEscalation is not false")
        if (context.get("capabilities") or {}).get("drop") != ["ALL"]:
            found.append(f"{where}: capabilities do not drop ALL")
        if context.get("readOnlyRootFilesystem") is not True and container["name"] not in WRITABLE_ROOT:
            found.append(f"{where}: the root filesystem is writable")
        if context.get("runAsUser") == 0 or context.get("privileged"):
            found.append(f"{where}: runs as root or privileged")
        mounts = [m["mountPath"] for m in container.get("volumeMounts") or []]
        if len(mounts) != len(set(mounts)):
            found.append(f"{where}: a path mounted twice")
        for mount in container.get("volumeMounts") or []:
            if mount["name"] not in names:
                found.append(f"{where}: mounts {mount['name']}, which is no volume of the pod")
        env = container.get("env") or []
        env_names = [e["name"] for e in env]
        if len(env_names) != len(set(env_names)):
            found.append(f"{where}: variables set twice: {sorted({n for n in env_names if env_names.count(n) > 1})}")
        for source in container.get("envFrom") or []:
            if "secretRef" in source:
                found.append(f"{where}: takes the variables of secret {source['secretRef'].get('name')} (envFrom)")
        for variable in env:
            found += [f"{where}: {p}" for p in env_problems(variable)]
            names_a_file = variable["name"].endswith("_FILE") or variable["name"] in FILE_VARIABLES
            if names_a_file and "value" in variable and file_source(pod, container, variable["value"]) is None:
                found.append(f"{where}: {variable['name']}={variable['value']} is on no volume of the container")
    return found


def env_problems(variable: dict) -> list[str]:
    """A secret in the environment: a secretKeyRef (but the chart's own storage password, whose
    key we leave empty), a password in a URL, or a value for a variable named like a secret."""
    name, value = variable["name"], variable.get("value")
    ref = (variable.get("valueFrom") or {}).get("secretKeyRef")
    if ref and not (name == "DAGSTER_PG_PASSWORD" and ref == {"name": "quadra-dagster-postgresql", "key": "postgresql-password"}):
        return [f"{name} comes from secret {ref.get('name')} (secretKeyRef): only files"]
    if value is None:
        return []
    if "://" in value and urlsplit(value).password:
        return [f"{name} holds a URL with a password"]
    if SECRET_NAME.search(name) and not (name.endswith("_FILE") or name in FILE_VARIABLES):
        return [f"{name} has a value (a secret belongs in a file: {name}_FILE)"]
    return []


def pod_spec_problems(pod: dict, version: str) -> list[str]:
    return list(errors(k8s_schema("io.k8s.api.core.v1.PodSpec", version), pod, version))


# --- The chart's values ------------------------------------------------------------------------

def test_our_values_validate_against_the_official_chart_schema(values):
    for version in KUBERNETES_VERSIONS:
        assert problems(values, version) == []


def test_every_removed_kubernetes_ref_is_resolved_again():
    """All the refs SOURCE.md says were removed are back, pointing at the bundled definitions."""
    for name, removed in REMOVED_REFS.items():
        _, resolved = resolve_chart_schema(load_json(name), KUBERNETES_VERSIONS[0])
        assert len(resolved) == removed, (name, resolved)


@pytest.mark.parametrize("path, wrong, why", [
    (("dagsterDaemon", "runMonitor"), {"enabled": True}, "a misspelt key"),
    (("runLauncher", "config", "k8sRunLauncher", "runK8sConfig", "containerConfigs"), {}, "a misspelt nested key"),
    (("runLauncher", "type"), "K8sLauncher", "an unknown run launcher"),
    (("runLauncher", "config", "k8sRunLauncher", "envSecrets"), "quadra-secrets", "a string for a list"),
    (("concurrency", "runs", "maxConcurrentRuns"), "four", "a string for a number"),
    (("dagster-user-deployments", "deployments"), [{"name": "quadra-pipeline", "port": 4000}], "a deployment without its image"),
    # Kubernetes-typed fields, checked against the real Kubernetes schemas:
    (("dagsterWebserver", "resources", "limits"), ["memory", "1Gi"], "resources.limits as a list"),
    (("dagsterWebserver", "readinessProbe", "httpGet", "pathh"), "/server_info", "a probe with a misspelt field"),
    (("dagsterWebserver", "readinessProbe", "periodSeconds"), "twenty", "a probe's number as a string"),
    (("dagsterDaemon", "volumes", 1), {"name": "pgpass"}, "a volume without a source"),
    (("dagsterDaemon", "volumes", 1), {"name": "pgpass", "emptyDir": {}, "secret": {"secretName": "x"}}, "a volume with two sources"),
    (("dagsterDaemon", "volumes", 3), {"name": "tmp", "emptyDirr": {}}, "a volume with a misspelt source"),
    (("dagsterDaemon", "podSecurityContext", "runAsUser"), "10001", "a uid as a string"),
    (("dagsterDaemon", "securityContext", "capabilities", "drop"), "ALL", "capabilities.drop as a string"),
    (("dagsterDaemon", "env", 0), {"value": "/run/quadra/pg/pgpass"}, "a variable without a name"),
    (("dagster-user-deployments", "deployments", 0, "volumeMounts", 0), {"name": "code"}, "a mount without its path"),
    (("dagster-user-deployments", "deployments", 0, "livenessProbe", "exec", "commandd"), ["true"], "a probe's misspelt handler field"),
    (("runLauncher", "config", "k8sRunLauncher", "runK8sConfig", "containerConfig", "resources", "limits"), ["2"],
     "a run pod's limits as a list"),
    (("runLauncher", "config", "k8sRunLauncher", "runK8sConfig", "podSpecConfig", "volumes", 0, "secret", "secretNme"), "x",
     "a run pod's secret volume with a misspelt field"),
    (("runLauncher", "config", "k8sRunLauncher", "runK8sConfig", "podSpecConfig", "securityContext", "runAsNonRoot"), False,
     "run pods as root"),
    (("dagsterWebserver", "securityContext", "readOnlyRootFilesystem"), False, "a writable root filesystem"),
    (("dagsterWebserver", "env"), [{"name": "DATABASE_URL", "value": "postgresql://quadra:pw@db/quadra"}], "a password in a variable"),
    (("dagsterDaemon", "envSecrets"), [{"name": "quadra-training"}], "a secret's variables (envFrom)"),
])
def test_a_wrong_key_or_type_in_our_values_fails(values, path, wrong, why):
    broken = copy.deepcopy(values)
    node = broken
    for key in path[:-1]:
        node = node[key]
    if isinstance(node, list) and path[-1] >= len(node):
        node.append(wrong)
    else:
        node[path[-1]] = wrong
    assert all_problems(broken), f"{why} passed"


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
    assert values["global"]["postgresqlSecretName"] == "quadra-dagster-postgresql"
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "quadra_pipeline.definitions"]
    assert deployment["readinessProbe"]["enabled"] and deployment["livenessProbe"] and deployment["startupProbe"]["enabled"]


def test_dagster_storage_uses_tls_with_the_servers_certificate_checked(merged):
    """sslmode=verify-full with the CA from the quadra-postgres-ca secret, mounted where the path
    says in every pod that reaches PostgreSQL; the same in MLflow's URL."""
    params = merged["postgresql"]["postgresqlParams"]
    assert params["sslmode"] == "verify-full"
    assert merged["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"
    pods = all_pods(merged)
    for name, pod in pods.items():
        if name in NO_POSTGRES:
            continue
        main = pod["containers"][0]
        root_cert = params["sslrootcert"]
        if name == "mlflow":
            query = parse_qs(urlsplit(value_of(main, "MLFLOW_BACKEND_STORE_URI")).query)
            assert query["sslmode"] == ["verify-full"], query
            [root_cert] = query["sslrootcert"]
        volume, key = file_source(pod, main, root_cert)
        assert (volume.get("secret") or {}).get("secretName") == "quadra-postgres-ca" and key == "ca.crt", (name, volume)


# --- The identity split ------------------------------------------------------------------------

def test_every_pod_is_non_root_read_only_and_unprivileged_and_holds_secrets_only_as_files(merged):
    for name, pod in all_pods(merged).items():
        assert pod_problems(pod) == [], name


def test_every_pod_spec_is_valid_kubernetes(merged):
    for name, pod in {**chart_pods(merged), **run_pods(merged, run_config())}.items():
        for version in KUBERNETES_VERSIONS:
            assert pod_spec_problems(pod, version) == [], (name, version)


def test_each_pod_holds_its_identitys_secrets_and_no_other(merged):
    """The table of README's "Kubernetes": the webserver and the daemon hold Dagster's storage
    only, the code server its own, each job's run its identity's, MLflow its own."""
    pods = all_pods(merged)
    assert set(pods) == set(POD_SECRETS), set(pods) ^ set(POD_SECRETS)
    for name, pod in pods.items():
        mounted = {v["secret"] for v in secret_volumes(pod).values()}
        assert mounted == POD_SECRETS[name], (name, mounted)
        referenced = {e["valueFrom"]["secretKeyRef"]["name"] for c in containers(pod) for e in c.get("env") or []
                      if (e.get("valueFrom") or {}).get("secretKeyRef")}
        assert referenced <= {"quadra-dagster-postgresql"}, (name, referenced)
        keys = {key for v in secret_volumes(pod).values() for key in v["keys"]}
        signing = {key for key in keys if key.endswith("signing.pem")}
        expected = {"training_job": {"model-signing.pem"}, "sweep_job": {"model-signing.pem"},
                    "promote_model_job": {"model-signing.pem"}, "backup_job": {"backup-signing.pem"},
                    "base_backup_job": {"backup-signing.pem"}}.get(name, set())
        assert signing == expected, (name, signing)


def test_the_storage_password_is_read_from_a_private_copy_of_pgpass(merged):
    """Every Dagster pod: the storage secret's `pgpass` key only (never `postgresql-password`,
    which the chart turns into a variable), mounted in an init container alone, which copies it
    mode 600 to the memory-backed volume that the storage's `passfile` names, read-only for the
    main container."""
    pods = {**chart_pods(merged), **run_pods(merged, run_config())}
    pgpass = merged["postgresql"]["postgresqlParams"]["passfile"]
    for name, pod in pods.items():
        storage = {volume: v for volume, v in secret_volumes(pod).items() if v["secret"] == "quadra-dagster-postgresql"}
        [(volume_name, volume)] = storage.items()
        assert volume["keys"] == {"pgpass"}, name
        main = pod["containers"][0]
        assert volume_name not in {m["name"] for m in main.get("volumeMounts") or []}, name
        target, _ = file_source(pod, main, pgpass)
        assert target.get("emptyDir", {}).get("medium") == "Memory", name
        assert all(m.get("readOnly") for m in main["volumeMounts"] if m["name"] == target["name"]), name
        [copier] = [c for c in pod.get("initContainers") or [] if volume_name in {m["name"] for m in c.get("volumeMounts") or []}]
        assert "umask 077" in copier["command"][-1] and pgpass in copier["command"][-1], name
        assert copier["image"] == main["image"], name  # the pod's own image: no other to pull


def test_runs_get_nothing_secret_from_the_launcher_or_the_code_location(values):
    """The code location's configuration is not handed to its runs (the chart's default would), and
    the run launcher's own adds Dagster's storage only: a run's identity is its job's tag."""
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": False}
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert launcher["envSecrets"] == [] and launcher["volumes"] == [] and launcher["volumeMounts"] == []
    assert deployment["envSecrets"] == [] and values["dagsterWebserver"]["envSecrets"] == [] == values["dagsterDaemon"]["envSecrets"]


def test_the_example_secrets_hold_the_identities_keys_and_no_value():
    documents = manifests()
    secrets = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Secret"}
    assert {name: set(d["stringData"]) for name, d in secrets.items()} == SECRET_KEYS
    assert all(d["_file"].startswith("examples/") for d in secrets.values())  # applying manifests/ overwrites none
    assert not list((HELM / "manifests").glob("*secret*"))
    for document in [*secrets.values(), *[d for d in documents if d["kind"] == "ConfigMap" and d["_file"].startswith("examples/")]]:
        assert all(value == "" for value in (document.get("stringData") or document.get("data")).values()), document["_file"]


def test_every_secret_file_a_process_reads_is_a_key_of_its_secret(merged):
    """Each <NAME>_FILE (and the AWS credentials file) names a key the secret template holds, on a
    volume that mounts it; no such file is set that the pod does not have."""
    documents = manifests()
    keys = {(d["kind"], d["metadata"]["name"]): set(d.get("stringData") or d.get("data") or {}) for d in documents
            if d["kind"] in ("Secret", "ConfigMap")}
    for name, pod in all_pods(merged).items():
        for container in pod["containers"]:
            for variable in container.get("env") or []:
                if not (variable["name"].endswith("_FILE") or variable["name"] == "AWS_SHARED_CREDENTIALS_FILE"):
                    continue
                volume, key = file_source(pod, container, variable["value"])
                source = volume.get("secret") and ("Secret", volume["secret"]["secretName"]) or \
                    volume.get("configMap") and ("ConfigMap", volume["configMap"]["name"])
                assert source, (name, variable, volume)
                assert key in keys[source], (name, variable["name"], source, key)
                items = (volume.get("secret") or volume.get("configMap")).get("items")
                assert items is None or key in {i["path"] for i in items}, (name, variable["name"])


# --- Each job's dagster-k8s/config -------------------------------------------------------------

def test_each_job_has_an_identity_and_its_config_is_valid_kubernetes():
    config = run_config()
    assert set(config["jobs"]) == set(JOBS)
    assert set(config["jobs"].values()) == set(config["identities"]) == {"training", "backup"}
    assert {job for job, identity in config["jobs"].items() if identity == "backup"} == {"backup_job", "base_backup_job"}
    defs = "\n".join(p.read_text() for p in (REPO_ROOT / "quadra_pipeline" / "defs").rglob("*.py"))
    assert all(job in defs for job in JOBS)  # the jobs the tags are for exist
    for identity, tag in config["identities"].items():
        for version in KUBERNETES_VERSIONS:
            assert list(errors(dagster_k8s_config_schema(version), tag, version)) == [], (identity, version)


def test_dagster_k8s_accepts_each_jobs_config():
    from dagster_k8s.job import USER_DEFINED_K8S_CONFIG_KEY, get_user_defined_k8s_config

    for job, tag in job_tags().items():
        parsed = get_user_defined_k8s_config({USER_DEFINED_K8S_CONFIG_KEY: json.dumps(tag)})
        assert parsed.container_config["volume_mounts"] and parsed.pod_spec_config["volumes"], job


@pytest.mark.parametrize("part, change, why", [
    ("container_config", {"resources": {"limits": ["2Gi"]}}, "limits as a list"),
    ("container_config", {"volumeMount": []}, "a misspelt container field"),
    ("container_config", {"env": [{"value": "x"}]}, "a variable without a name"),
    ("pod_spec_config", {"volumes": [{"name": "x", "secret": {"secretNam": "quadra-training"}}]}, "a misspelt volume field"),
    ("pod_spec_config", {"securityContext": {"runAsUser": "0"}}, "a uid as a string"),
    ("pod_spec_confg", {}, "a misspelt part"),
])
def test_a_wrong_job_config_fails(part, change, why):
    tag = copy.deepcopy(job_tags()["training_job"])
    tag[part] = {**tag.get(part, {}), **change}
    assert list(errors(dagster_k8s_config_schema(KUBERNETES_VERSIONS[0]), tag, KUBERNETES_VERSIONS[0])), why


def test_each_jobs_run_pod_as_dagster_k8s_builds_it_is_a_valid_job(merged):
    for name, tag in [("run (no tag)", None), *job_tags().items()]:
        job = run_job(merged, tag)
        for version in KUBERNETES_VERSIONS:
            assert manifest_errors(job, version) == [], (name, version)


def test_the_settings_the_pods_set_are_known_and_the_code_server_and_runs_agree(merged, tmp_path, monkeypatch):
    """Every QUADRA_* variable is a setting the code reads, with a value it accepts (a misspelt name
    would be ignored silently, a wrong value would stop the process); the code server and the runs
    load the same definitions (the run pod loads them again), so their shared settings agree."""
    from quadra_pipeline.settings import RunExecutor, Settings, load_settings

    for name in [n for n in os.environ if n.startswith("QUADRA_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no developer's .env
    known = {field.alias for field in Settings.model_fields.values()}
    pods = {**chart_pods(merged), **run_pods(merged, run_config())}
    shared = ("QUADRA_ENV", "QUADRA_HOME", "QUADRA_RUN_EXECUTOR", "QUADRA_OBJECT_STORE", "MLFLOW_TRACKING_URI")
    code = pods["code"]["containers"][0]
    for name in ("code", "run (no tag)", *JOBS):
        container = pods[name]["containers"][0]
        env = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("QUADRA_") and "value" in e}
        assert set(env) <= known, (name, set(env) - known)
        assert env.pop("QUADRA_ENV") == "production", name
        load_settings(**{k: v for k, v in env.items() if not k.endswith("_FILE")})
        assert {v: value_of(container, v) for v in shared} == {v: value_of(code, v) for v in shared}, name
    executor = RunExecutor(value_of(code, "QUADRA_RUN_EXECUTOR"))
    automount = merged["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"]["automountServiceAccountToken"]
    assert automount is (executor is RunExecutor.k8s_job)  # step pods are started through the Kubernetes API


# --- The manifests -----------------------------------------------------------------------------

def test_every_manifest_is_valid_kubernetes():
    documents = manifests()
    assert documents
    for document in documents:
        assert document["metadata"]["namespace"] == "quadra", document["_file"]
        manifest = {k: v for k, v in document.items() if k != "_file"}
        for version in KUBERNETES_VERSIONS:
            assert manifest_errors(manifest, version) == [], (document["_file"], document["metadata"]["name"], version)


def test_a_wrong_manifest_fails():
    mlflow = next(d for d in manifests() if d["kind"] == "Deployment")
    manifest = {k: v for k, v in copy.deepcopy(mlflow).items() if k != "_file"}
    manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] = ["2Gi"]
    assert manifest_errors(manifest, KUBERNETES_VERSIONS[0])


def test_what_the_values_and_job_configs_name_exists(merged):
    documents = manifests()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in documents}
    assert {("Deployment", "mlflow"), ("Service", "mlflow"), ("PersistentVolumeClaim", "quadra-data"),
            ("PersistentVolumeClaim", "quadra-backups"), ("ConfigMap", "quadra-public-keys")} <= kinds
    claims = {v["persistentVolumeClaim"]["claimName"] for pod in all_pods(merged).values()
              for v in pod.get("volumes") or [] if "persistentVolumeClaim" in v}
    assert claims == {name for kind, name in kinds if kind == "PersistentVolumeClaim"}
    secrets = {v["secret"] for pod in all_pods(merged).values() for v in secret_volumes(pod).values()}
    assert secrets == {name for kind, name in kinds if kind == "Secret"}


def test_mlflow_serves_s3_artifacts_with_its_secrets_as_files():
    [mlflow] = [d for d in manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow"]
    container = mlflow["spec"]["template"]["spec"]["containers"][0]
    script = container["args"][0]
    assert "--artifacts-destination \"$MLFLOW_ARTIFACTS_DESTINATION\"" in script and "--serve-artifacts" in script
    assert value_of(container, "MLFLOW_ARTIFACTS_DESTINATION").startswith("s3://")
    assert all(probe in container for probe in ("readinessProbe", "livenessProbe", "startupProbe"))
    assert urlsplit(value_of(container, "MLFLOW_BACKEND_STORE_URI")).password is None
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert not {"MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"} & set(env)  # files, read by the script
    for key in SECRET_KEYS["quadra-mlflow"]:
        assert f"$secrets/{key}" in script or key in script.split("for key in ")[1].split(";")[0], key
    assert "*" not in env["MLFLOW_SERVER_ALLOWED_HOSTS"] and "*" not in env["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"]
    # The tracking URI the runs and the code server use names the MLflow service, and its Host header is allowed.
    values = yaml.safe_load((HELM / "values.yaml").read_text())
    tracking = {e["name"]: e["value"] for e in values["dagster-user-deployments"]["deployments"][0]["env"]}["MLFLOW_TRACKING_URI"]
    assert urlsplit(tracking).netloc in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")


def test_every_job_carries_its_identitys_config_and_the_compose_identity(quadra_env):
    """The job definitions carry the identities checked above: on Kubernetes their
    `dagster-k8s/config` tag, in the Compose stack their `quadra/identity` tag."""
    from quadra_pipeline.definitions import defs

    config = run_config()
    loaded = defs()
    for job, identity in config["jobs"].items():
        tags = loaded.resolve_job_def(job).tags
        assert tags["quadra/identity"] == identity, job
        assert json.loads(tags["dagster-k8s/config"]) == config["identities"][identity], job
