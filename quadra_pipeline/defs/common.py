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
    """Metadata of the latest materialisation of `key` (in this run, if it made one)."""
    event = context.instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        raise MissingUpstreamError(
            f"{key.to_user_string()} has never been materialised; materialise it first "
            f"(dagster asset materialize --select {key.to_user_string()}+)"
        )
    return {name: getattr(value, "value", value) for name, value in event.asset_materialization.metadata.items()}
