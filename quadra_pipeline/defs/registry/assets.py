"""The MLflow registry: every trained model becomes a version (alias `challenger`); only one
that passes the champion gate moves `champion`.

The gate is a blocking check on `registered_model`: a worse model is registered (so it can be
inspected, compared and promoted by hand) but `champion_model` does not materialise for it.
The champion is re-evaluated in the same step with the same code as the challenger (its gate
score, the policy's loss on the spec's fixed probe vectors, needs no corpus), so the comparison
does not depend on when or how the champion was trained.
"""


import tempfile
from pathlib import Path

import dagster as dg
from pydantic import Field

from ...data.snapshot import read_snapshot
from ...model import file_sha256, load_checkpoint
from ...model.evaluation import evaluate
from ..common import CHAMPION, EVALUATION, MODEL, OWNER, REGISTERED, code_version, upstream_metadata
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
            description="The gate: the version's files match its signature, and its evaluation is not worse than "
            "the current champion's on the same data.",
        ),
    ],
)
def registered_model(
    context: dg.AssetExecutionContext, config: GateConfig, registry: RegistryResource, store: StoreResource
):
    from ...registry import CHAMPION as CHAMPION_ALIAS
    from ...registry import SignatureError
    from ...registry.service import register_and_mirror

    trained = upstream_metadata(context, MODEL)
    evaluation = upstream_metadata(context, EVALUATION)
    if evaluation.get("checkpoint_sha256") != trained["checkpoint_sha256"]:
        raise dg.Failure(
            "model_evaluation is stale: it evaluated another checkpoint than the current quadra_model; "
            "materialise model_evaluation first"
        )
    reg = registry.registry()
    reg.check_available()
    model = load_checkpoint(trained["checkpoint_path"]).model
    champion_before = reg.alias_version(CHAMPION_ALIAS)
    existing = [v for v in reg.list_versions() if v.checkpoint_sha256 == trained["checkpoint_sha256"]]
    if existing:
        # The same bytes are already a version (a re-run, or an identical retraining): reuse it.
        version_number, model_uri, version_run = existing[0].version, "", existing[0].run_id
        context.log.info(f"checkpoint {trained['checkpoint_sha256'][:12]} is already version {version_number}; not registering it again")
    else:
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
        version_number, model_uri, version_run = version.version, version.model_uri, version.run_id
        context.log.info(f"registered {reg.model_name} version {version_number} (challenger)")

    # The gate is decided before the materialisation is recorded, so that champion_model can
    # refuse a version that failed it even when it is materialised on its own later. A version
    # whose files do not match its signature never passes.
    score = float(evaluation["gate_score"])
    try:
        reg.verify_version(version_number)
        signature_problem = None
    except SignatureError as exc:
        signature_problem = str(exc)
    if signature_problem:
        passed, champion_score, reason = False, None, signature_problem
    elif champion_before is None or champion_before == version_number:
        passed, champion_score = True, None
        reason = "no champion yet" if champion_before is None else "it is the champion already"
    else:
        held_out = read_snapshot(trained["corpus_path"]).held_out_texts()
        champion_score = evaluate(reg.load_model(champion_before), held_out).gate_score
        passed = score <= champion_score + config.tolerance
        reason = f"gate score {score:.5f} vs champion v{champion_before} {champion_score:.5f} (tolerance {config.tolerance})"
    context.log.info(f"champion gate: {'passed' if passed else 'FAILED'}: {reason}")

    yield dg.MaterializeResult(
        metadata={
            "version": version_number,
            "model_uri": model_uri or f"models:/{reg.model_name}/{version_number}",
            "checkpoint_sha256": trained["checkpoint_sha256"],
            "mlflow_run": dg.MetadataValue.url(reg.run_url(version_run, registry.ui_base())),
            "gate_score": score,
            "gate_passed": passed,
            "gate_reason": reason,
            "signature": "verified" if signature_problem is None else signature_problem,
            "champion_before": champion_before if champion_before is not None else "none",
        }
    )

    with tempfile.TemporaryDirectory() as tmp:
        downloaded = reg.download_checkpoint(version_number, Path(tmp), verify=False)
        actual = file_sha256(downloaded)
    tagged = reg.version_tags(version_number).get("checkpoint_sha256", "")
    yield dg.AssetCheckResult(
        check_name="checkpoint_sha256_matches",
        passed=tagged == actual == trained["checkpoint_sha256"],
        metadata={"tagged": tagged, "downloaded": actual, "trained": trained["checkpoint_sha256"]},
    )
    yield dg.AssetCheckResult(
        check_name="not_worse_than_champion",
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=reason,
        metadata={
            "version": version_number,
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
