"""The MLflow registry: every trained model becomes a version (alias `challenger`); only one
that passes the champion gate moves `champion`.

The gate is a blocking check on `registered_model`: a worse model is registered (so it can be
inspected, compared and promoted by hand) but `champion_model` does not materialise for it.
Both models are evaluated on the same held-out data in the same run, so the comparison is fair
even when the champion was trained on another corpus.
"""


import tempfile
from pathlib import Path

import dagster as dg
from pydantic import Field

from ...data.snapshot import read_snapshot
from ...model import file_sha256, load_checkpoint
from ...model.evaluation import evaluate
from ..common import CHAMPION, CORPUS, EVALUATION, MODEL, OWNER, REGISTERED, code_version, upstream_metadata
from ..resources import RegistryResource, StoreResource


class GateConfig(dg.Config):
    tolerance: float = Field(
        0.0, ge=0.0, le=1.0, description="A challenger passes if its gate score is at most the champion's plus this."
    )


@dg.asset(
    key=REGISTERED,
    deps=[MODEL, EVALUATION],
    group_name="registry",
    kinds={"mlflow"},
    owners=[OWNER],
    description="The model as a version of the MLflow registered model 'quadra-matrix' (checkpoint, loadable "
    "pytorch/pyfunc model, tags: checkpoint SHA-256, Dagster run id, code version, data fingerprint); alias challenger.",
    check_specs=[
        dg.AssetCheckSpec(
            "checkpoint_sha256_matches",
            asset=REGISTERED,
            description="The SHA-256 tagged on the version equals the SHA-256 of the checkpoint downloaded from the registry.",
        ),
        dg.AssetCheckSpec(
            "not_worse_than_champion",
            asset=REGISTERED,
            blocking=True,
            description="The gate: the version's evaluation is not worse than the current champion's on the same data.",
        ),
    ],
)
def registered_model(
    context: dg.AssetExecutionContext, config: GateConfig, registry: RegistryResource, store: StoreResource
):
    from ...registry import CHAMPION as CHAMPION_ALIAS
    from ...registry.service import register_and_mirror

    trained = upstream_metadata(context, MODEL)
    evaluation = upstream_metadata(context, EVALUATION)
    snapshot = read_snapshot(upstream_metadata(context, CORPUS)["path"])
    reg = registry.registry()
    reg.check_available()
    model = load_checkpoint(trained["checkpoint_path"]).model
    champion_before = reg.alias_version(CHAMPION_ALIAS)
    version = register_and_mirror(
        reg,
        store.engine(),
        run_id=trained["mlflow_run_id"],
        model=model,
        checkpoint_path=Path(trained["checkpoint_path"]),
        tags={
            "dagster_run_id": context.run.run_id,
            "code_version": code_version(),
            "data_fingerprint": trained["data_fingerprint"],
            "field_size": str(trained["field_size"]),
            "batches": str(trained["batches"]),
        },
        description=f"trained by Dagster run {context.run.run_id}",
        metrics={k: float(v) for k, v in evaluation.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        training_run=trained["training_run_id"],
    )
    context.log.info(f"registered {reg.model_name} version {version.version} (challenger)")
    yield dg.MaterializeResult(
        metadata={
            "version": version.version,
            "model_uri": version.model_uri,
            "checkpoint_sha256": version.checkpoint_sha256,
            "mlflow_run": dg.MetadataValue.url(reg.run_url(version.run_id, registry.ui_url)),
            "gate_score": evaluation["gate_score"],
            "champion_before": champion_before if champion_before is not None else "none",
        }
    )

    with tempfile.TemporaryDirectory() as tmp:
        downloaded = reg.download_checkpoint(version.version, Path(tmp))
        actual = file_sha256(downloaded)
    tagged = reg.version_tags(version.version).get("checkpoint_sha256", "")
    yield dg.AssetCheckResult(
        check_name="checkpoint_sha256_matches",
        passed=tagged == actual == trained["checkpoint_sha256"],
        metadata={"tagged": tagged, "downloaded": actual, "trained": trained["checkpoint_sha256"]},
    )

    score = float(evaluation["gate_score"])
    if champion_before is None:
        passed, champion_score, reason = True, None, "no champion yet"
    else:
        champion_model = reg.load_model(champion_before)
        champion_score = evaluate(champion_model, snapshot.held_out_texts()).gate_score
        passed = score <= champion_score + config.tolerance
        reason = f"gate score {score:.5f} vs champion v{champion_before} {champion_score:.5f} (tolerance {config.tolerance})"
    context.log.info(f"champion gate: {'passed' if passed else 'FAILED'}: {reason}")
    yield dg.AssetCheckResult(
        check_name="not_worse_than_champion",
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=reason,
        metadata={
            "version": version.version,
            "gate_score": score,
            "champion_version": champion_before if champion_before is not None else "none",
            "champion_gate_score": champion_score if champion_score is not None else "none",
        },
    )


@dg.asset(
    key=CHAMPION,
    deps=[REGISTERED],
    group_name="registry",
    kinds={"mlflow"},
    owners=[OWNER],
    description="The registry's champion alias, moved to the newest version that passed the gate (history in model_alias_events).",
)
def champion_model(context: dg.AssetExecutionContext, registry: RegistryResource, store: StoreResource) -> dg.MaterializeResult:
    from ...registry import CHAMPION as CHAMPION_ALIAS
    from ...registry.service import promote

    registered = upstream_metadata(context, REGISTERED)
    version = int(registered["version"])
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
