"""Training: the model checkpoint, its per-batch metrics table and the system-state snapshot.

One step trains and produces three assets, so lineage shows where the metrics and the state
come from. Each batch's metrics row is committed to `training_metrics` when the batch ends;
the MLflow run gets them in groups. The materialisation carries the loss/reward curve, a link
to the MLflow run and the final figures.

A run that was killed is not lost: a run that resumes from its checkpoint (`resume_from`, or
automatically when a Dagster run retries a failed one) carries the batches before the
checkpoint over from the database, and the killed run's own MLflow run is completed from the
database and closed, so both hold one row per batch.
"""


import base64
from pathlib import Path

import dagster as dg
from pydantic import Field

from ...model import load_checkpoint
from ...model.checkpoint import CheckpointError, non_finite_tensors
from ...objectstore import ObjectStoreError
from ...tracked_training import Predecessor, close_mlflow_run, train_tracked
from ...training import CHECKPOINT_NAME, TrainingConfig
from ..common import (
    CORPUS,
    METRICS,
    MODEL,
    OWNER,
    SYSTEM_STATE,
    checkpoint_here,
    code_version,
    snapshot_here,
    upstream_metadata,
)
from ..resources import DataHome, ObjectStoreResource, RegistryResource, StoreResource
from ..runs.dead_runs import StopWhenRunEnds

_FAILED_STATUSES = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


class TrainingRunConfig(dg.Config):
    """Hyperparameters of one training run (the Launchpad validates them before training)."""

    field_size: int = Field(100, ge=2, le=4096, description="Field size N: the length of every vector.")
    batches: int = Field(20, ge=1, le=1_000_000, description="Batches to train (in total, counting a resumed checkpoint's).")
    rows_per_batch: int = Field(10, ge=1, le=100_000, description="Rows pulled from the corpus per batch.")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed for every random draw (same seed, same metrics).")
    learning_rate: float = Field(0.001, gt=0, le=1, description="Base learning rate (the accelerator scales it up to 10x).")
    checkpoint_every: int = Field(10, ge=1, le=1_000_000, description="Write a checkpoint every k batches.")
    log_every: int = Field(5, ge=1, le=1_000_000, description="Progress line in the run log every k batches.")
    metrics_flush_every: int = Field(10, ge=1, le=10_000, description="Batches per MLflow log_batch call (SQL gets every batch at once).")
    resume_from: str | None = Field(
        None,
        description="Checkpoint (ours) to resume from; it must match these settings. Unset: a retry of a failed "
        "run resumes from that run's last checkpoint.",
    )


def check_corpus_is_large_enough(training_rows: int, config: TrainingRunConfig) -> None:
    needed = config.batches * config.rows_per_batch
    if training_rows < needed:
        raise dg.Failure(
            f"the corpus has {training_rows} training rows, but batches={config.batches} x "
            f"rows_per_batch={config.rows_per_batch} needs {needed}: raise the corpus's training_rows"
        )


def _image_markdown(png: bytes) -> str:
    return f"![loss and reward per batch](data:image/png;base64,{base64.b64encode(png).decode()})"


def shared_checkpoint_key(run_id: str) -> str:
    """Where a training run's latest checkpoint is in the object store."""
    return f"checkpoints/{run_id}/{CHECKPOINT_NAME}"


def resume_point(context: dg.AssetExecutionContext, config: TrainingRunConfig, home: Path, shared=None) -> tuple[str | None, str]:
    """Where this run starts: `resume_from`, or, for a retry or re-execution of a failed run
    (Dagster's `parent_run_id`), that run's last checkpoint if it has batches left to train
    (from the object store when the failed run ran on another host)."""
    if config.resume_from:
        return config.resume_from, f"resuming from {config.resume_from}"
    parent_id = context.run.parent_run_id
    if not parent_id:
        return None, ""
    parent = context.instance.get_run_by_id(parent_id)
    checkpoint = home / "checkpoints" / parent_id / CHECKPOINT_NAME
    if parent is None or parent.status not in _FAILED_STATUSES:
        return None, ""
    if not checkpoint.is_file() and shared is not None and shared.exists(shared_checkpoint_key(parent_id)):
        shared.get_file(shared_checkpoint_key(parent_id), checkpoint)
    if not checkpoint.is_file():
        return None, ""
    try:
        done = int(load_checkpoint(checkpoint).progress.get("batches_done", 0))
    except CheckpointError as exc:
        context.log.warning(f"not resuming from the failed run's checkpoint: {exc}")
        return None, ""
    if done >= config.batches:
        return None, ""
    return str(checkpoint), f"retry of failed run {parent_id}: resuming from its last checkpoint (batch {done})"


#: Failed training runs whose MLflow run is re-checked when a training run starts.
RECHECK_FAILED = 10


def close_orphaned_runs(context: dg.AssetExecutionContext, engine, reg) -> None:
    """Training runs left "running" by a process that died (their Dagster run has ended):
    MLflow gets the batches the database has and it lacks, then both are marked failed. And
    failed runs whose MLflow run could not be closed (MLflow was down): closed now."""
    from ...store import finish_training_run, list_training_runs, session_scope

    with session_scope(engine) as session:
        running = [(r.id, r.external_run_id, r.mlflow_run_id) for r in list_training_runs(session, status="running")]
    for training_run_id, dagster_run_id, mlflow_run_id in running:
        run = context.instance.get_run_by_id(dagster_run_id) if dagster_run_id else None
        if run is None or not run.is_finished:
            continue  # alive, or not a run of this instance: not ours to judge
        sent = close_mlflow_run(reg, engine, training_run_id, mlflow_run_id, context.log.warning) if mlflow_run_id else None
        with session_scope(engine) as session:
            finish_training_run(
                session, training_run_id, status="failed",
                error=f"Dagster run {dagster_run_id} ended ({run.status.value}) without closing this training run: its process died",
            )
        context.log.info(
            f"closed training run {training_run_id} of dead Dagster run {dagster_run_id}, marked failed"
            + (f"; its MLflow run completed with {sent} batch(es) from the database and marked failed" if sent is not None else "")
        )
    # Runs that failed while MLflow was unreachable: marked failed here, but MLflow could not be
    # told, so their MLflow run still says RUNNING. The most recent few are checked each time.
    with session_scope(engine) as session:
        failed = [(r.id, r.mlflow_run_id) for r in list_training_runs(session, status="failed", limit=RECHECK_FAILED)
                  if r.mlflow_run_id]
    for training_run_id, mlflow_run_id in failed:
        sent = close_mlflow_run(reg, engine, training_run_id, mlflow_run_id, context.log.warning)
        if sent is not None:
            context.log.info(f"closed MLflow run {mlflow_run_id} of failed training run {training_run_id} "
                             f"(MLflow was unreachable when it failed): {sent} batch(es) completed from the database")


def _predecessor(engine, checkpoint: str | None) -> Predecessor | None:
    """The training run that wrote `checkpoint` and its batches, when the database knows it."""
    from ...store import UnknownRunError, get_training_run, session_scope

    if checkpoint is None:
        return None
    progress = load_checkpoint(checkpoint).progress
    done = int(progress.get("batches_done", 0))
    origin = progress.get("origin") or {}
    if not origin.get("dagster_run_id"):
        return None
    with session_scope(engine) as session:
        try:
            return Predecessor(get_training_run(session, origin["dagster_run_id"]).id, done)
        except UnknownRunError:
            return None


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
        dg.AssetCheckSpec(
            "one_row_per_batch",
            asset=METRICS,
            description="training_metrics and the MLflow run hold exactly one row per batch of the model, 1..n.",
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
    objects: ObjectStoreResource,
):
    corpus_meta = upstream_metadata(context, CORPUS)
    snapshot = snapshot_here(corpus_meta, data_home, objects)
    check_corpus_is_large_enough(snapshot.training_rows, config)
    shared = objects.store()
    resume_from, resume_reason = resume_point(context, config, data_home.path, shared)
    if resume_reason:
        context.log.info(resume_reason)
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
    close_orphaned_runs(context, engine, reg)
    predecessor = _predecessor(engine, resume_from)
    run_id = context.run.run_id
    tracked = train_tracked(
        training,
        data_home.checkpoint_dir(run_id),
        engine=engine,
        registry=reg,
        external_run_id=run_id,
        run_name=f"train-{run_id[:8]}",
        tags={"dagster_run_id": run_id, "data_fingerprint": snapshot.fingerprint, "code_version": code_version(),
              **({"resumed_from": resume_from} if resume_from else {})},
        params={**config.model_dump(), "resume_from": resume_from, "data_fingerprint": snapshot.fingerprint},
        source={**snapshot.source, "snapshot": snapshot.fingerprint},
        resume_from=resume_from,
        predecessor=predecessor,
        origin={"dagster_run_id": run_id},
        say=context.log.info,
        log_every=config.log_every,
        flush_every=config.metrics_flush_every,
        save_state=True,
        # Every checkpoint is shared too: a step on another host evaluates and registers it, and
        # a retry on another host resumes from it.
        on_checkpoint=lambda path, sha, done: shared.put_file(shared_checkpoint_key(run_id), path),
        on_batch=[StopWhenRunEnds(context)],  # a step on a Celery worker is not stopped by a signal
    )
    outcome, history, mlflow_run_id = tracked.outcome, tracked.history, tracked.mlflow_run_id
    training_run_id, inherited, mlflow_steps, png = tracked.training_run_id, tracked.carried_over, tracked.mlflow_steps, tracked.curve_png
    state_id = tracked.system_state_id
    last = outcome.metrics[-1] if outcome.metrics else None
    run_url = reg.run_url(mlflow_run_id, registry.ui_base())
    stored = [m.batch_number for m in history]
    first = 1 if predecessor or outcome.resumed_from == 0 else outcome.resumed_from + 1
    expected = list(range(first, outcome.batches_done + 1))
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
            "final_loss": history[-1].loss,
            "final_reward": history[-1].reward,
            "final_reward_per_item": last.reward_per_item if last else float("nan"),
            "data_fingerprint": snapshot.fingerprint,
            "corpus_path": dg.MetadataValue.path(str(snapshot.path)),
            "corpus_key": corpus_meta.get("store_key") or "",
            "checkpoint_key": shared_checkpoint_key(run_id),
            "code_version": code_version(),
            "curve": dg.MetadataValue.md(_image_markdown(png)),
        },
    )
    yield dg.MaterializeResult(
        asset_key=METRICS,
        metadata={
            "rows": len(stored),
            "mlflow_rows": len(mlflow_steps),
            "carried_over_rows": inherited,
            "training_run_id": training_run_id,
            "mlflow_run": dg.MetadataValue.url(run_url),
            "first_loss": history[0].loss,
            "final_loss": history[-1].loss,
        },
    )
    yield dg.MaterializeResult(
        asset_key=SYSTEM_STATE,
        metadata={"system_state_id": state_id, "iteration_count": outcome.batches_done, "training_run_id": training_run_id},
    )
    yield dg.AssetCheckResult(
        check_name="one_row_per_batch",
        asset_key=METRICS,
        passed=stored == expected == mlflow_steps,
        metadata={
            "expected_batches": f"{first}..{outcome.batches_done}",
            "batches_trained_here": len(outcome.metrics),
            "carried_over": inherited,
            "sql_rows": len(stored),
            "mlflow_rows": len(mlflow_steps),
            "history_before_the_checkpoint": "carried over" if predecessor or not outcome.resumed_from else
            "not in the database (a checkpoint from outside the pipeline)",
        },
    )


@dg.asset_check(
    asset=MODEL,
    name="weights_finite",
    blocking=True,
    description="Every floating-point tensor of the checkpoint (weights, field, trainer state) is finite, read from the file.",
)
def weights_finite(
    context: dg.AssetCheckExecutionContext, data_home: DataHome, objects: ObjectStoreResource
) -> dg.AssetCheckResult:
    try:
        path = str(checkpoint_here(upstream_metadata(context, MODEL), data_home, objects, as_written=True))
        bad = non_finite_tensors(path)
    except (CheckpointError, ObjectStoreError) as exc:
        return dg.AssetCheckResult(passed=False, description=str(exc), metadata={"problem": str(exc)})
    return dg.AssetCheckResult(
        passed=not bad,
        description=f"non-finite values in {', '.join(bad)}" if bad else "every tensor is finite",
        metadata={"non_finite_tensors": dg.MetadataValue.json(bad), "checkpoint_path": dg.MetadataValue.path(path)},
    )


__all__ = ["TrainingRunConfig", "train_model", "weights_finite"]
