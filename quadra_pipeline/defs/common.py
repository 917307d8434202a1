"""Names and small helpers shared by the asset modules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg

from ..registry.client import code_version  # noqa: F401  (re-exported for the assets)

OWNER = "team:ml-platform"
TRAINING_TAG = "quadra/training"  # dagster.yaml limits runs with this tag to one at a time

CORPUS = dg.AssetKey("corpus")
MODEL = dg.AssetKey("quadra_model")
METRICS = dg.AssetKey("training_metrics")
SYSTEM_STATE = dg.AssetKey("system_state")
EVALUATION = dg.AssetKey("model_evaluation")
REGISTERED = dg.AssetKey("registered_model")
CHAMPION = dg.AssetKey("champion_model")
SWEEP = dg.AssetKey("hyperparameter_sweep")
SWEEP_REGISTERED = dg.AssetKey("sweep_registered_model")
SWEEP_TAG = "quadra/sweep"  # dagster.yaml: one sweep at a time
# A job so tagged keeps its steps in its run's process whatever QUADRA_RUN_EXECUTOR says (it
# needs the volumes of the host its run was launched on).
STEPS_IN_RUN_PROCESS_TAG = "quadra/steps-in-run-process"
# Which secrets a job's runs hold (the Compose stack's run launcher; Kubernetes: per-job config):
# "training" (the default: training, sweeps, promotion) or "backup".
IDENTITY_TAG = "quadra/identity"
#: Each identity's run-pod config on Kubernetes (dagster-k8s/config), checked against the
#: Kubernetes schemas by quadra_pipeline_tests/deploy/test_helm.py.
RUN_K8S_CONFIG = Path(__file__).with_name("run_k8s_config.json")


def identity_tags(identity: str) -> dict[str, str]:
    """The tags that give a job's runs `identity`'s secrets and nothing else: the Compose stack's
    run launcher reads `quadra/identity`, Dagster's K8sRunLauncher `dagster-k8s/config`."""
    import json

    config = json.loads(RUN_K8S_CONFIG.read_text())
    if identity not in config["identities"]:
        raise ValueError(f"unknown identity {identity!r} (run_k8s_config.json has {', '.join(sorted(config['identities']))})")
    return {IDENTITY_TAG: identity, "dagster-k8s/config": json.dumps(config["identities"][identity], sort_keys=True)}


class MissingUpstreamError(Exception):
    """An asset needs an upstream materialisation that does not exist yet."""


def upstream_metadata(context: dg.AssetExecutionContext, key: dg.AssetKey) -> dict[str, Any]:
    """Metadata of `key`'s materialisation in this run; for a re-execution or retry that did not
    redo it, the one its parent run (or that run's parent, ...) made; otherwise (the asset was
    materialised on its own) the latest one on the instance. A retried training run must train
    on its own corpus, not on whatever corpus another run made in the meantime."""
    event = None
    run_id: str | None = context.run.run_id
    while event is None and run_id is not None:
        for record in context.instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
            materialization = record.asset_materialization
            if materialization is not None and materialization.asset_key == key:
                event = record
        run = context.instance.get_run_by_id(run_id) if event is None else None
        run_id = run.parent_run_id if run is not None else None
    if event is None:
        event = context.instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        raise MissingUpstreamError(
            f"{key.to_user_string()} has never been materialised; materialise it first "
            f"(dagster asset materialize --select {key.to_user_string()}+)"
        )
    return {name: getattr(value, "value", value) for name, value in event.asset_materialization.metadata.items()}


def newest_upstream_metadata(context: dg.AssetExecutionContext, keys: list[dg.AssetKey]) -> dict[str, Any]:
    """`upstream_metadata` of whichever of `keys` this run (or its parent chain) materialised;
    when none was, the newest materialisation of any of them on the instance (the champion
    follows the newest registered version, from training_job or from a sweep)."""
    run_id: str | None = context.run.run_id
    while run_id is not None:
        made = {
            record.asset_materialization.asset_key
            for record in context.instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
            if record.asset_materialization is not None
        }
        for key in keys:
            if key in made:
                return upstream_metadata(context, key)
        run = context.instance.get_run_by_id(run_id)
        run_id = run.parent_run_id if run is not None else None
    events = [(e.timestamp, key) for key in keys if (e := context.instance.get_latest_materialization_event(key)) is not None]
    if not events:
        return upstream_metadata(context, keys[0])  # raises MissingUpstreamError with the way out
    return upstream_metadata(context, max(events)[1])


def snapshot_here(meta: dict[str, Any], data_home: Any, objects: Any):
    """The corpus snapshot a materialisation recorded (`path`, `fingerprint`, `store_key`), on
    this host: its folder when this host wrote it, else fetched from the object store and
    checked against its fingerprint (a step on another Celery worker host)."""
    from ..data.snapshot import MANIFEST_FILE, SnapshotRef, fetch_snapshot, read_snapshot

    path = Path(meta["path"])
    if (path / MANIFEST_FILE).exists() or not meta.get("store_key"):
        return read_snapshot(path)
    ref = SnapshotRef(meta["fingerprint"], meta["store_key"], 0, 0, {})
    return fetch_snapshot(ref, objects.store(), data_home.corpus_dir())


def checkpoint_here(trained: dict[str, Any], data_home: Any, objects: Any, *, as_written: bool = False) -> Path:
    """The checkpoint of a `quadra_model` materialisation on this host: the file it names when
    this host has it with the recorded SHA-256, else fetched from the object store and checked.
    `as_written`: the file this host has, whatever its bytes now (a check that judges the file
    itself, such as `weights_finite`)."""
    from ..objectstore import fetch_verified, sha256_file

    path = Path(trained["checkpoint_path"])
    sha = trained["checkpoint_sha256"]
    if path.is_file() and (as_written or sha256_file(path) == sha):
        return path
    if not trained.get("checkpoint_key"):
        return path  # recorded before checkpoints were shared: the file or its absence speaks for itself
    return fetch_verified(objects.store(), trained["checkpoint_key"], data_home.path / "shared" / trained["checkpoint_key"], sha)


def corpus_of(trained: dict[str, Any]) -> dict[str, Any]:
    """The corpus fields of a `quadra_model` materialisation, as `snapshot_here` takes them."""
    return {"path": trained["corpus_path"], "fingerprint": trained["data_fingerprint"], "store_key": trained.get("corpus_key")}
