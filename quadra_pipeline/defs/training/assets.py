"""Training: the model checkpoint, its per-batch metrics table and the system-state snapshot.

One step trains and produces three assets, so lineage shows where the metrics and the state
come from. Metrics go to `training_metrics` and to the MLflow run in batches while training
runs; the materialisation carries the loss/reward curve, a link to the MLflow run and the
final figures.
"""


import base64

import dagster as dg
from pydantic import Field

from ...data.snapshot import read_snapshot
from ...model import load_checkpoint
from ...plots import training_curve_png
from ...tracking import MetricLogger, ProgressLog
from ...training import TrainingConfig, run_training
from ..common import CORPUS, METRICS, MODEL, OWNER, SYSTEM_STATE, code_version, upstream_metadata
from ..resources import DataHome, RegistryResource, StoreResource


class TrainingRunConfig(dg.Config):
    """Hyperparameters of one training run (the Launchpad validates them before training)."""

    field_size: int = Field(100, ge=2, le=4096, description="Field size N: the length of every vector.")
    batches: int = Field(20, ge=1, le=1_000_000, description="Batches to train (in total, counting a resumed checkpoint's).")
    rows_per_batch: int = Field(10, ge=1, le=100_000, description="Rows pulled from the corpus per batch.")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed for every random draw (same seed, same metrics).")
    learning_rate: float = Field(0.001, gt=0, le=1, description="Base learning rate (the accelerator scales it up to 10x).")
    checkpoint_every: int = Field(10, ge=1, le=1_000_000, description="Write a checkpoint every k batches.")
    log_every: int = Field(5, ge=1, le=1_000_000, description="Progress line in the run log every k batches.")
    metrics_flush_every: int = Field(10, ge=1, le=10_000, description="Batches per bulk write of metrics (SQL and MLflow).")
    resume_from: str | None = Field(None, description="Checkpoint (ours) to resume from; it must match these settings.")


def check_corpus_is_large_enough(training_rows: int, config: TrainingRunConfig) -> None:
    needed = config.batches * config.rows_per_batch
    if training_rows < needed:
        raise dg.Failure(
            f"the corpus has {training_rows} training rows, but batches={config.batches} x "
            f"rows_per_batch={config.rows_per_batch} needs {needed}: raise the corpus's training_rows"
        )


def _quietly(context: dg.AssetExecutionContext, action) -> None:
    try:
        action()
    except Exception as exc:
        context.log.warning(f"cleanup after a failed training step also failed: {type(exc).__name__}: {exc}")


def _image_markdown(png: bytes) -> str:
    return f"![loss and reward per batch](data:image/png;base64,{base64.b64encode(png).decode()})"


@dg.multi_asset(
    name="train_model",
    specs=[
        dg.AssetSpec(
            MODEL,
            deps=[CORPUS],
            group_name="training",
            kinds={"pytorch"},
            owners=[OWNER],
            description="The trained Quadra Matrix model: its checkpoint (our format, exact resume) under the data home.",
        ),
        dg.AssetSpec(
            METRICS,
            deps=[MODEL],
            group_name="training",
            kinds={"sqlalchemy", "mlflow"},
            owners=[OWNER],
            description="Per-batch training metrics: the training_metrics table and the MLflow run's stepped metrics.",
        ),
        dg.AssetSpec(
            SYSTEM_STATE,
            deps=[MODEL],
            group_name="training",
            kinds={"sqlalchemy"},
            owners=[OWNER],
            description="Snapshot of the trainer's state after the run (system_states table).",
        ),
    ],
    check_specs=[
        dg.AssetCheckSpec("weights_finite", asset=MODEL, blocking=True, description="Every weight of the checkpoint is finite."),
        dg.AssetCheckSpec(
            "one_row_per_batch",
            asset=METRICS,
            description="training_metrics and the MLflow run hold exactly one row per trained batch.",
        ),
    ],
    can_subset=False,
    pool="training",  # dagster.yaml: one slot, whichever job or backfill materialises the model
)
def train_model(
    context: dg.AssetExecutionContext,
    config: TrainingRunConfig,
    data_home: DataHome,
    store: StoreResource,
    registry: RegistryResource,
):
    from ...store import finish_training_run, metrics_for_run, save_system_state, session_scope, start_training_run

    snapshot = read_snapshot(upstream_metadata(context, CORPUS)["path"])
    check_corpus_is_large_enough(snapshot.training_rows, config)
    training = TrainingConfig(
        field_size=config.field_size,
        batches=config.batches,
        rows_per_batch=config.rows_per_batch,
        seed=config.seed,
        learning_rate=config.learning_rate,
        source="file",
        source_options={"path": str(snapshot.train_path)},
        checkpoint_every=config.checkpoint_every,
    )
    reg = registry.registry()
    reg.check_available()  # fail before training, not after, when MLflow is unreachable
    engine = store.engine()
    run_id = context.run.run_id
    with session_scope(engine) as session:
        training_run_id = start_training_run(
            session,
            external_run_id=run_id,
            field_size=config.field_size,
            seed=config.seed,
            config=training.as_dict(),
            source={**snapshot.source, "snapshot": snapshot.fingerprint},
        ).id
    mlflow_run_id: str | None = None
    try:
        mlflow_run_id = reg.start_run(
            f"train-{run_id[:8]}",
            tags={"dagster_run_id": run_id, "data_fingerprint": snapshot.fingerprint, "code_version": code_version()},
        )
        out_dir = data_home.checkpoint_dir(run_id)
        logger = MetricLogger(engine, training_run_id, reg, mlflow_run_id, flush_every=config.metrics_flush_every)
        reg.log_params(mlflow_run_id, {**config.model_dump(), "data_fingerprint": snapshot.fingerprint})
        outcome = run_training(
            training,
            out_dir,
            resume=config.resume_from,
            on_batch=[logger, ProgressLog(context.log.info, config.batches, config.rows_per_batch, config.log_every)],
            on_checkpoint=lambda path, sha, done: context.log.info(f"checkpoint after batch {done}: {path} ({sha[:12]})"),
        )
        logger.close()
        if outcome.batches_done < config.batches:
            raise dg.Failure(
                f"the corpus ran out after {outcome.batches_done} of {config.batches} batches "
                "(rows without usable text); raise the corpus's training_rows"
            )
        png = training_curve_png(outcome.metrics, title=f"run {run_id[:8]}")
        curve_path = out_dir / "training_curve.png"
        curve_path.write_bytes(png)
        reg.log_artifact(mlflow_run_id, curve_path)
        loaded = load_checkpoint(outcome.checkpoint)
        with session_scope(engine) as session:
            state_id = save_system_state(
                session,
                field_size=config.field_size,
                iteration_count=outcome.batches_done,
                is_running=False,
                is_initialized=True,
                loss_history=[m.loss for m in outcome.metrics],
                reward_history=[m.reward for m in outcome.metrics],
                variance_history=[m.variance for m in outcome.metrics],
                field_mean_history=[m.field_mean for m in outcome.metrics],
                training_run=training_run_id,
            ).id
            finish_training_run(session, training_run_id, status="succeeded")
            stored_rows = len(metrics_for_run(session, training_run_id))
        mlflow_rows = reg.metric_history_length(mlflow_run_id, "loss")
        reg.end_run(mlflow_run_id, "FINISHED")
    except BaseException as exc:
        # Close both records whatever failed (the database or MLflow may be the broken part);
        # the original error is the one that propagates.
        _quietly(context, lambda: reg.end_run(mlflow_run_id, "FAILED") if mlflow_run_id else None)

        def mark_failed() -> None:
            with session_scope(engine) as session:
                finish_training_run(session, training_run_id, status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])

        _quietly(context, mark_failed)
        raise

    last = outcome.metrics[-1]
    trained_here = len(outcome.metrics)
    run_url = reg.run_url(mlflow_run_id, registry.ui_base())
    yield dg.MaterializeResult(
        asset_key=MODEL,
        metadata={
            "checkpoint_path": dg.MetadataValue.path(str(outcome.checkpoint)),
            "checkpoint_sha256": outcome.checkpoint_sha256,
            "mlflow_run_id": mlflow_run_id,
            "mlflow_run": dg.MetadataValue.url(run_url),
            "training_run_id": training_run_id,
            "field_size": config.field_size,
            "batches": outcome.batches_done,
            "resumed_from_batch": outcome.resumed_from,
            "rows_per_second": round(outcome.rows_per_second, 1),
            "seconds": round(outcome.seconds, 2),
            "final_loss": last.loss,
            "final_reward": last.reward,
            "final_reward_per_item": last.reward_per_item,
            "data_fingerprint": snapshot.fingerprint,
            "corpus_path": dg.MetadataValue.path(str(snapshot.path)),
            "code_version": code_version(),
            "curve": dg.MetadataValue.md(_image_markdown(png)),
        },
    )
    yield dg.MaterializeResult(
        asset_key=METRICS,
        metadata={
            "rows": stored_rows,
            "mlflow_rows": mlflow_rows,
            "training_run_id": training_run_id,
            "mlflow_run": dg.MetadataValue.url(run_url),
            "first_loss": outcome.metrics[0].loss,
            "final_loss": last.loss,
        },
    )
    yield dg.MaterializeResult(
        asset_key=SYSTEM_STATE,
        metadata={"system_state_id": state_id, "iteration_count": outcome.batches_done, "training_run_id": training_run_id},
    )
    bad = [name for name, value in loaded.model.networks.state_dict().items() if value.is_floating_point() and not value.isfinite().all()]
    yield dg.AssetCheckResult(
        check_name="weights_finite",
        asset_key=MODEL,
        passed=not bad,
        metadata={"non_finite_tensors": dg.MetadataValue.json(bad)},
    )
    yield dg.AssetCheckResult(
        check_name="one_row_per_batch",
        asset_key=METRICS,
        passed=stored_rows == trained_here == mlflow_rows,
        metadata={"batches_trained": trained_here, "batches_requested": config.batches - outcome.resumed_from,
                  "sql_rows": stored_rows, "mlflow_rows": mlflow_rows},
    )


__all__ = ["TrainingRunConfig", "train_model"]
