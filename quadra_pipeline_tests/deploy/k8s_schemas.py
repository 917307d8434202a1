"""The real Kubernetes schemas, offline: those that `kubernetes-validate` (pinned, PyPI) bundles,
in their strict form (unknown fields refused, as the API server's strict field validation does).

The official Dagster chart's values schema `$ref`s Kubernetes definitions remotely (yannh's
kubernetes-json-schema for v1.19.0; the subchart's, kubernetesjsonschema.dev for v1.18.0). The
vendored copy has those refs removed (vendor/dagster-helm/SOURCE.md), which leaves env, volumes,
probes, resources and security contexts checked only as "an object". `resolve_chart_schema` puts
them back, pointing at the bundled definitions of a Kubernetes version of our choosing, so a
values file is checked the way the API server will check what the chart renders from it.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator
from importlib import resources

import jsonschema
import kubernetes_validate
from referencing import Registry, Resource

#: The Kubernetes versions everything here is validated against: the oldest minor still supported
#: upstream when this was written (December 2026: 1.35, 1.36, 1.37) and the newest bundled.
KUBERNETES_VERSIONS = ("1.35.0", "1.37.0")
#: The `$id` of the bundled `_definitions.json` (checked when it is loaded).
DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"

#: Each chart definition whose remote `$ref` was removed, and the Kubernetes definition it named
#: (upstream: helm/dagster/schema/schema/charts/utils/kubernetes.py and the generated schema at
#: the vendored commit, e.g. `"Container": {"$ref": ".../_definitions.json#/definitions/
#: io.k8s.api.core.v1.Container", ...}`). A path after the name points inside a definition.
CHART_K8S_REFS = {
    "Affinity": "io.k8s.api.core.v1.Affinity",
    "Annotations": "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta/properties/annotations",
    "ConfigMapEnvSource": "io.k8s.api.core.v1.ConfigMapEnvSource",
    "Container": "io.k8s.api.core.v1.Container",
    "DeploymentStrategy": "io.k8s.api.apps.v1.DeploymentStrategy",
    "EnvVar": "io.k8s.api.core.v1.EnvVar",
    "InitContainer": "io.k8s.api.core.v1.Container",
    "Labels": "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta/properties/labels",
    "LivenessProbe": "io.k8s.api.core.v1.Probe",
    "NodeSelector": "io.k8s.api.core.v1.PodSpec/properties/nodeSelector",
    "PodSecurityContext": "io.k8s.api.core.v1.PodSecurityContext",
    "ReadinessProbe": "io.k8s.api.core.v1.Probe",
    "ReadinessProbeWithEnabled": "io.k8s.api.core.v1.Probe",
    "ResourceRequirements": "io.k8s.api.core.v1.ResourceRequirements",
    "Resources": "io.k8s.api.core.v1.ResourceRequirements",
    "SecretEnvSource": "io.k8s.api.core.v1.SecretEnvSource",
    "SecretRef": "io.k8s.api.core.v1.LocalObjectReference",
    "SecurityContext": "io.k8s.api.core.v1.SecurityContext",
    "StartupProbe": "io.k8s.api.core.v1.Probe",
    "Tolerations": "io.k8s.api.core.v1.PodSpec/properties/tolerations",
    "Volume": "io.k8s.api.core.v1.Volume",
    "VolumeMount": "io.k8s.api.core.v1.VolumeMount",
}
#: Keys the chart's templates read and strip from a Kubernetes type (`enabled`: whether to render
#: the probe at all). The main schema declares them; the older subchart schema does not (with the
#: remote, non-strict refs it never had to).
CHART_ADDED_KEYS = {
    "ReadinessProbeWithEnabled": {"enabled": {"type": "boolean"}},
    "StartupProbe": {"enabled": {"type": "boolean"}},
}
#: How many remote refs SOURCE.md says were removed from each vendored schema.
REMOVED_REFS = {"values.schema.json": 22, "charts/dagster-user-deployments/values.schema.json": 17}

#: The chart types runLauncher.config.k8sRunLauncher.runK8sConfig's parts as open objects; they
#: are raw Kubernetes config (dagster-k8s merges them into the run pod's Job), checked as such.
RUN_K8S_CONFIG = {
    "containerConfig": ("io.k8s.api.core.v1.Container", True),
    "podSpecConfig": ("io.k8s.api.core.v1.PodSpec", True),
    "podTemplateSpecMetadata": ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", True),
    "jobSpecConfig": ("io.k8s.api.batch.v1.JobSpec", True),
    "jobMetadata": ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", True),
}
#: A `dagster-k8s/config` tag's keys (dagster_k8s.job.USER_DEFINED_K8S_JOB_CONFIG_SCHEMA), each a
#: part of a Kubernetes object: partial (required fields such as a container's name come from
#: dagster-k8s).
DAGSTER_K8S_CONFIG = {
    "container_config": "io.k8s.api.core.v1.Container",
    "pod_spec_config": "io.k8s.api.core.v1.PodSpec",
    "pod_template_spec_metadata": "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
    "job_config": "io.k8s.api.batch.v1.Job",
    "job_metadata": "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
    "job_spec_config": "io.k8s.api.batch.v1.JobSpec",
}


@functools.cache
def definitions(version: str) -> dict:
    """The bundled strict `_definitions.json` of a Kubernetes version (offline)."""
    path = resources.files(kubernetes_validate) / "kubernetes-json-schema" / f"v{version}-local-strict" / "_definitions.json"
    document = json.loads(path.read_text())
    assert document["$id"] == DEFINITIONS_ID, document["$id"]
    return document


@functools.cache
def registry(version: str) -> Registry:
    return Registry().with_resource(DEFINITIONS_ID, Resource.from_contents(definitions(version)))


def _absolute(node):
    """A copy of a piece of `_definitions.json` whose local refs name that document."""
    if isinstance(node, dict):
        return {key: (DEFINITIONS_ID + value if key == "$ref" and value.startswith("#") else _absolute(value))
                for key, value in node.items()}
    if isinstance(node, list):
        return [_absolute(item) for item in node]
    return node


def k8s_schema(target: str, version: str, *, partial: bool = False, extra_properties: dict | None = None) -> dict:
    """The schema of a Kubernetes definition (`name` or `name/properties/field`), usable inside
    another document. `partial`: its required fields may be left out (they come from elsewhere).
    `extra_properties`: keys a chart adds to it (a probe's `enabled`, which it strips)."""
    name, *path = target.split("/")
    node = definitions(version)["$defs"][name]
    for key in path:
        node = node[key]
    schema = _absolute(copy.deepcopy(node))
    if partial:
        schema.pop("required", None)
    if extra_properties:
        schema["properties"] = {**schema.get("properties", {}), **extra_properties}
    return schema


def resolve_chart_schema(schema: dict, version: str) -> tuple[dict, list[str]]:
    """The chart schema with its Kubernetes-typed definitions resolved to `version`'s, and the
    names of those it resolved. Keys the chart itself adds to a Kubernetes type (a probe's
    `enabled`) stay allowed, with the chart's own type and requirement."""
    resolved = copy.deepcopy(schema)
    defs_key = "$defs" if "$defs" in resolved else "definitions"
    defs = resolved[defs_key]
    done = []
    for name, target in CHART_K8S_REFS.items():
        if name not in defs:
            continue
        chart = defs[name]
        assert "$ref" not in chart, f"{name} still has its ref: nothing to resolve"
        added = {**CHART_ADDED_KEYS.get(name, {}), **(chart.get("properties") or {})}
        new = k8s_schema(target, version, extra_properties=added or None)
        if chart.get("required"):
            new["required"] = sorted(set(new.get("required", [])) | set(chart["required"]))
        new["title"] = chart.get("title", name)
        defs[name] = new
        done.append(name)
    if "RunK8sConfig" in defs:
        properties = defs["RunK8sConfig"]["properties"]
        for key, (target, partial) in RUN_K8S_CONFIG.items():
            properties[key] = {"anyOf": [k8s_schema(target, version, partial=partial), {"type": "null"}]}
    return resolved, done


def dagster_k8s_config_schema(version: str) -> dict:
    """The schema of a `dagster-k8s/config` tag's value, its parts the Kubernetes types."""
    properties = {key: k8s_schema(target, version, partial=True) for key, target in DAGSTER_K8S_CONFIG.items()}
    properties["merge_behavior"] = {"enum": ["DEEP", "SHALLOW"]}
    return {"type": "object", "additionalProperties": False, "properties": properties}


def errors(schema: dict, document, version: str) -> Iterator[str]:
    """What `schema` (draft 2020-12, with the Kubernetes definitions of `version` at hand) refuses."""
    validator = jsonschema.Draft202012Validator(schema, registry=registry(version))
    for error in validator.iter_errors(document):
        yield f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message[:200]}"


def manifest_errors(document: dict, version: str) -> list[str]:
    """What the API server's schema for its kind (strict) refuses in a manifest."""
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'/'.join(map(str, exc.absolute_path)) or '(top)'}: {exc.message[:200]}"]
    return []
