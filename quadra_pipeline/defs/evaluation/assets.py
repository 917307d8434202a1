"""Evaluation of the trained model on held-out text, plus the spec's probe."""


import json

import dagster as dg

from ...model import load_checkpoint
from ...model.evaluation import evaluate
from ..common import CORPUS, EVALUATION, MODEL, OWNER, checkpoint_here, corpus_of, snapshot_here, upstream_metadata
from ..resources import DataHome, ObjectStoreResource, RegistryResource


@dg.asset(
    key=EVALUATION,
    deps=[MODEL, CORPUS],
    group_name="evaluation",
    kinds={"pytorch"},
    owners=[OWNER],
    description="Probe losses per action (spec) and the learned policy's loss on the held-out corpus rows; "
    "gate_score (the policy on the probe vectors) is what the champion gate compares.",
)
def model_evaluation(
    context: dg.AssetExecutionContext, registry: RegistryResource, data_home: DataHome, objects: ObjectStoreResource
) -> dg.MaterializeResult:
    trained = upstream_metadata(context, MODEL)
    snapshot = snapshot_here(corpus_of(trained), data_home, objects)  # the corpus this model was trained on
    model = load_checkpoint(checkpoint_here(trained, data_home, objects)).model
    result = evaluate(model, snapshot.held_out_texts())
    metrics = result.as_metrics()
    registry.registry().log_metrics(
        trained["mlflow_run_id"], [{"batch_number": trained["batches"], **{f"eval_{k}": v for k, v in metrics.items()}}]
    )
    context.log.info(f"gate score {result.gate_score:.4f}, held-out loss {result.held_out_loss:.4f}")
    return dg.MaterializeResult(
        metadata={
            "gate_score": result.gate_score,
            **{k: v for k, v in metrics.items() if k != "gate_score"},
            "policy_actions": dg.MetadataValue.json(result.policy_actions),
            "checkpoint_sha256": trained["checkpoint_sha256"],
            "evaluation": dg.MetadataValue.json(json.loads(json.dumps(metrics))),
        }
    )
