"""The MLflow registry: every trained model becomes a version (alias `challenger`); only one
that passes the champion gate moves `champion`.

The gate (`gate.py`, shared with the sweep's `sweep_registered_model`) is a blocking check on
`registered_model`: a worse model is registered (so it can be inspected, compared and promoted
by hand) but `champion_model` does not materialise for it.
"""

import dagster as dg

from ..common import (
    CHAMPION,
    EVALUATION,
    MODEL,
    OWNER,
    REGISTERED,
    SWEEP_REGISTERED,
    checkpoint_here,
    code_version,
    corpus_of,
    newest_upstream_metadata,
    snapshot_here,
    upstream_metadata,
)
from ..resources import DataHome, ObjectStoreResource, RegistryResource, StoreResource
from .gate import Candidate, GateConfig, gate_check_specs, numeric, register_and_gate


@dg.asset(
    key=REGISTERED,
    deps=[MODEL, EVALUATION],
    group_name="registry",
    kinds={"mlflow"},
    owners=[OWNER],
    description="The model as a version of the MLflow registered model 'quadra-matrix' (checkpoint, loadable "
    "pytorch/pyfunc model, tags: checkpoint SHA-256, Dagster run id, code version, data fingerprint); alias challenger.",
    check_specs=gate_check_specs(REGISTERED),
)
def registered_model(
    context: dg.AssetExecutionContext, config: GateConfig, registry: RegistryResource, store: StoreResource,
    data_home: DataHome, objects: ObjectStoreResource,
):
    trained = upstream_metadata(context, MODEL)
    evaluation = upstream_metadata(context, EVALUATION)
    if evaluation.get("checkpoint_sha256") != trained["checkpoint_sha256"]:
        raise dg.Failure(
            "model_evaluation is stale: it evaluated another checkpoint than the current quadra_model; "
            "materialise model_evaluation first"
        )
    snapshot = snapshot_here(corpus_of(trained), data_home, objects)
    candidate = Candidate(
        checkpoint=checkpoint_here(trained, data_home, objects),
        checkpoint_sha256=trained["checkpoint_sha256"],
        mlflow_run_id=trained["mlflow_run_id"],
        training_run_id=trained["training_run_id"],
        gate_score=float(evaluation["gate_score"]),
        metrics=numeric(evaluation),
        tags={
            "dagster_run_id": context.run.run_id,
            "code_version": code_version(),
            "data_fingerprint": trained["data_fingerprint"],
            "field_size": str(trained["field_size"]),
            "batches": str(trained["batches"]),
        },
        description=f"trained by Dagster run {context.run.run_id}",
        held_out_texts=snapshot.held_out_texts(),
    )
    yield from register_and_gate(context, registry.registry(), store.engine(), candidate, config.tolerance, registry.ui_base())


@dg.asset(
    key=CHAMPION,
    deps=[REGISTERED, SWEEP_REGISTERED],
    group_name="registry",
    kinds={"mlflow"},
    owners=[OWNER],
    description="The registry's champion alias, moved to the newest version that passed the gate, whichever "
    "way it was trained (training_job or a sweep's best trial; history in model_alias_events).",
)
def champion_model(context: dg.AssetExecutionContext, registry: RegistryResource, store: StoreResource) -> dg.MaterializeResult:
    from ...registry import CHAMPION as CHAMPION_ALIAS
    from ...registry.service import promote

    registered = newest_upstream_metadata(context, [REGISTERED, SWEEP_REGISTERED])
    version = int(registered["version"])
    if not registered.get("gate_passed", False):
        raise dg.Failure(
            f"version {version} did not pass the champion gate ({registered.get('gate_reason', 'no gate result')}); "
            "it stays challenger. To promote it anyway: quadra model promote "
            f"{version} --reason ... (or promote_model_job)"
        )
    previous = promote(
        registry.registry(),
        store.engine(),
        version,
        alias=CHAMPION_ALIAS,
        moved_by=f"dagster:{context.run.run_id}",
        reason=f"passed the champion gate (gate score {registered['gate_score']:.5f})",
    )
    context.log.info(f"champion: version {previous} -> {version}")
    return dg.MaterializeResult(
        metadata={"version": version, "previous_version": previous if previous is not None else "none"}
    )
