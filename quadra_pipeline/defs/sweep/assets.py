"""The hyperparameter sweep as assets: corpus -> hyperparameter_sweep -> sweep_registered_model
-> champion_model, the same lineage as training_job's.

`hyperparameter_sweep` is a graph-backed asset (plan -> one `run_trial` per trial -> pick the
best); its value, kept by the IO manager in the object store, is the sweep's outcome.
`sweep_registered_model` registers the best trial's checkpoint as a new version (alias
`challenger`) that links to its MLflow child run and the sweep's parent run, and the champion
gate shared with `registered_model` (`registry/gate.py`) decides whether `champion_model`
follows it.
"""

import dagster as dg

from ...objectstore import fetch_verified
from ..common import CORPUS, OWNER, SWEEP, SWEEP_REGISTERED, code_version
from ..registry.gate import Candidate, GateConfig, gate_check_specs, numeric, register_and_gate
from ..resources import DataHome, ObjectStoreResource, RegistryResource, StoreResource
from .config import SweepConfig
from .trials import SweepOutcome, pick_best, plan_trials, run_trial


@dg.config_mapping
def _sweep_config(config: SweepConfig) -> dict:
    """The Launchpad's `ops: hyperparameter_sweep: config:` is the planning step's config."""
    return {"plan_trials": {"config": config.model_dump()}}


@dg.graph_asset(
    key=SWEEP,
    ins={"corpus": dg.AssetIn(CORPUS)},
    config=_sweep_config,
    group_name="sweep",
    kinds={"pytorch", "mlflow"},
    owners=[OWNER],
    description="A hyperparameter sweep on the corpus: one training run per point of the search space (an MLflow "
    "child run each, under one parent run), fanned out to whichever workers there are; its value is the best trial.",
)
def hyperparameter_sweep(corpus):
    return pick_best(plan_trials(corpus).map(run_trial).collect())


@dg.asset(
    key=SWEEP_REGISTERED,
    ins={"sweep": dg.AssetIn(SWEEP)},
    group_name="sweep",
    kinds={"mlflow"},
    owners=[OWNER],
    description="The sweep's best trial as a version of 'quadra-matrix' (alias challenger), linked to its MLflow child "
    "run and the sweep's parent run; the same champion gate as registered_model.",
    check_specs=gate_check_specs(SWEEP_REGISTERED),
)
def sweep_registered_model(
    context: dg.AssetExecutionContext, config: GateConfig, sweep: SweepOutcome, registry: RegistryResource,
    store: StoreResource, data_home: DataHome, objects: ObjectStoreResource,
):
    from ...data.snapshot import fetch_snapshot

    best = sweep.best
    shared = objects.store()
    checkpoint = fetch_verified(shared, best.checkpoint_key, data_home.path / "shared" / best.checkpoint_key,
                                best.checkpoint_sha256)
    snapshot = fetch_snapshot(best.corpus, shared, data_home.corpus_dir())
    candidate = Candidate(
        checkpoint=checkpoint,
        checkpoint_sha256=best.checkpoint_sha256,
        mlflow_run_id=best.mlflow_run_id,
        training_run_id=best.training_run_id,
        gate_score=best.gate_score,
        metrics=numeric(best.metrics),
        tags={
            "dagster_run_id": context.run.run_id,
            "code_version": code_version(),
            "data_fingerprint": best.corpus.fingerprint,
            "field_size": str(best.trial.params["field_size"]),
            "batches": str(best.trial.params["batches"]),
            "sweep_parent_run_id": sweep.parent_run_id,
            "sweep_trial": best.trial.key,
            "sweep_trials": str(len(sweep.results)),
        },
        description=f"best of {len(sweep.results)} sweep trial(s) ({best.trial.key}) of Dagster run {context.run.run_id}",
        held_out_texts=snapshot.held_out_texts(),
    )
    yield from register_and_gate(
        context, registry.registry(), store.engine(), candidate, config.tolerance, registry.ui_base(),
        extra_metadata={
            "sweep_parent_run": dg.MetadataValue.url(registry.registry().run_url(sweep.parent_run_id, registry.ui_base())),
            "trial": best.trial.key,
            "trial_params": dg.MetadataValue.json(best.trial.params),
            "trials": len(sweep.results),
            "trials_failed": len(sweep.failed),
            "workers": dg.MetadataValue.json(sorted({r.worker for r in sweep.results})),
        },
    )
