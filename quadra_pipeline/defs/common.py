"""Names and small helpers shared by the asset modules."""

from __future__ import annotations

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
