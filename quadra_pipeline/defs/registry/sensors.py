"""The registry's whole alias history: a sensor that records alias moves made outside the pipeline.

About once a minute it compares MLflow's aliases with the recorded history (`registry.history`)
and records each difference as a move by `external`, at the time it saw it; so the recorded
time of an external move is at most `ALIAS_CHECK_SECONDS` (plus one sensor tick) after it
happened. It runs as soon as the daemon runs.
"""

import dagster as dg

from ..resources import RegistryResource, StoreResource

ALIAS_CHECK_SECONDS = 60


@dg.sensor(
    name="alias_history_sensor",
    minimum_interval_seconds=ALIAS_CHECK_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every minute: record alias moves made in the MLflow UI, its REST API or by other clients "
    "(actor 'external') in model_alias_events.",
)
def alias_history_sensor(context: dg.SensorEvaluationContext, registry: RegistryResource, store: StoreResource):
    from ...registry import RegistryError, reconcile_aliases

    try:
        moves = reconcile_aliases(registry.registry(), store.engine())
    except RegistryError as exc:  # MLflow down: say so and try again next minute
        return dg.SkipReason(f"cannot compare the aliases: {exc}")
    for move in moves:
        context.log.info(f"external alias move: {move.alias} {move.from_version} -> {move.to_version}")
    return dg.SkipReason(f"recorded {len(moves)} external alias move(s)" if moves else "no external alias moves")
