"""A training run recorded as it goes: a row in `training_runs` with one committed metrics row
per batch, and an MLflow run with the same metrics (no Dagster here).

The training asset and every sweep trial train this way, so both keep the same promises: the
MLflow run always ends (FINISHED, or FAILED with the SQL run marked failed and the error kept,
whatever broke, MLflow or the database included); a run that dies keeps exactly its finished
batches in SQL, and MLflow gets them later (`tracking.complete_mlflow_run`); a resumed run
carries the batches before its checkpoint over, so both stores hold batches 1..n. A sweep's
trial is an MLflow child run (`parent_run_id`): MLflow's UI nests it under the sweep's run and
compares the trials side by side.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from .plots import training_curve_png
from .store import (
    copy_metrics,
    finish_training_run,
    metrics_for_run,
    save_system_state,
    session_scope,
    set_mlflow_run,
    start_training_run,
)
from .tracking import MetricLogger, ProgressLog, complete_mlflow_run
from .training import BatchCallback, TrainingConfig, TrainingError, TrainingOutcome, run_training

log = logging.getLogger(__name__)

#: The MLflow tag that makes a run another run's child (MLflow's own name for it).
PARENT_RUN_TAG = "mlflow.parentRunId"


@dataclass
class TrackedRun:
    """What a finished tracked run produced, and where it is recorded."""

    outcome: TrainingOutcome
    training_run_id: int
    mlflow_run_id: str
    history: list[Any]  # the SQL metric rows, 1..n (carried over + trained here)
    carried_over: int
    mlflow_steps: list[int]
    curve_png: bytes
    system_state_id: int | None = None


@dataclass(frozen=True)
class Predecessor:
    """The training run whose checkpoint this one resumes, and its batches to carry over."""

    training_run_id: int
    batches: int


def train_tracked(
    training: TrainingConfig,
    out_dir: str | Path,
    *,
    engine: Engine,
    registry: Any,  # quadra_pipeline.registry.ModelRegistry
    external_run_id: str,
    run_name: str,
    tags: Mapping[str, Any],
    params: Mapping[str, Any],
    source: Mapping[str, Any],
    resume_from: str | None = None,
    predecessor: Predecessor | None = None,
    parent_run_id: str | None = None,
    origin: Mapping[str, Any] | None = None,
    say: Callable[[str], None] = log.info,
    log_every: int = 5,
    flush_every: int = 10,
    save_state: bool = False,
    accept: Callable[[TrainingOutcome], None] | None = None,
    on_checkpoint: Callable[[Path, str, int], None] | None = None,
    on_batch: Sequence[BatchCallback] = (),
) -> TrackedRun:
    """Train `training` into `out_dir`, recording it in SQL and in a new MLflow run.

    Raises what training raised (after closing both records), `TrainingError` when the data ran
    out before `training.batches` (rows without usable text), and whatever `accept` raises: it
    sees the finished outcome before the run is recorded as succeeded (a sweep trial refuses a
    checkpoint with a non-finite weight there)."""
    with session_scope(engine) as session:
        training_run_id = start_training_run(
            session,
            external_run_id=external_run_id,
            field_size=training.field_size,
            seed=training.seed,
            config={**training.as_dict(), "resume_from": resume_from},
            source=dict(source),
        ).id
    mlflow_run_id: str | None = None
    logger: MetricLogger | None = None
    try:
        mlflow_run_id = registry.start_run(
            run_name, tags={**tags, **({PARENT_RUN_TAG: parent_run_id} if parent_run_id else {})}
        )
        inherited = 0
        with session_scope(engine) as session:
            set_mlflow_run(session, training_run_id, mlflow_run_id)
            if predecessor:
                inherited = copy_metrics(session, predecessor.training_run_id, training_run_id, through_batch=predecessor.batches)
        if inherited:
            complete_mlflow_run(registry, engine, training_run_id, mlflow_run_id)  # the carried-over batches
            say(f"carried over the metrics of batches 1..{predecessor.batches} from training run {predecessor.training_run_id}")
        logger = MetricLogger(engine, training_run_id, registry, mlflow_run_id, flush_every=flush_every)
        registry.log_params(mlflow_run_id, params)
        outcome = run_training(
            training,
            out_dir,
            resume=resume_from,
            on_batch=[logger, ProgressLog(say, training.batches, training.rows_per_batch, log_every), *on_batch],
            on_checkpoint=lambda path, sha, done: _checkpointed(path, sha, done, say, on_checkpoint),
            origin={**(origin or {}), "mlflow_run_id": mlflow_run_id},
        )
        logger.close()
        if outcome.batches_done < training.batches:
            raise TrainingError(
                f"the corpus ran out after {outcome.batches_done} of {training.batches} batches "
                "(rows without usable text); raise the corpus's training_rows"
            )
        if accept is not None:
            accept(outcome)
        with session_scope(engine) as session:
            history = metrics_for_run(session, training_run_id)
        png = training_curve_png(history, title=run_name)
        curve_path = Path(out_dir) / "training_curve.png"
        curve_path.write_bytes(png)
        registry.log_artifact(mlflow_run_id, curve_path)
        state_id = None
        with session_scope(engine) as session:
            if save_state:
                state_id = save_system_state(
                    session,
                    field_size=training.field_size,
                    iteration_count=outcome.batches_done,
                    is_running=False,
                    is_initialized=True,
                    loss_history=[m.loss for m in history],
                    reward_history=[m.reward for m in history],
                    variance_history=[m.variance for m in history],
                    field_mean_history=[m.field_mean for m in history],
                    training_run=training_run_id,
                ).id
            finish_training_run(session, training_run_id, status="succeeded")
        mlflow_steps = sorted(registry.metric_steps(mlflow_run_id, "loss"))
        registry.end_run(mlflow_run_id, "FINISHED")
    except BaseException as exc:
        # Close both records whatever failed (the database or MLflow may be the broken part),
        # after sending MLflow every batch that finished; the original error propagates.
        fail_tracked(engine, registry, training_run_id, mlflow_run_id, f"{type(exc).__name__}: {exc}", logger, say)
        raise
    return TrackedRun(outcome, training_run_id, mlflow_run_id, history, inherited, mlflow_steps, png, state_id)


def _checkpointed(path: Path, sha: str, done: int, say: Callable[[str], None],
                  also: Callable[[Path, str, int], None] | None) -> None:
    say(f"checkpoint after batch {done}: {path} ({sha[:12]})")
    if also is not None:
        also(path, sha, done)


def fail_tracked(
    engine: Engine,
    registry: Any,
    training_run_id: int,
    mlflow_run_id: str | None,
    error: str,
    logger: MetricLogger | None = None,
    say: Callable[[str], None] = log.warning,
) -> None:
    """Mark both records of a run failed, each attempt on its own (never raises): MLflow gets
    the batches it still lacks first. Also for a run that trained but was then judged bad (a
    non-finite weight)."""
    if logger is not None:
        _quietly(say, logger.close)
    if mlflow_run_id:
        _quietly(say, lambda: registry.end_run(mlflow_run_id, "FAILED"))

    def mark_failed() -> None:
        with session_scope(engine) as session:
            finish_training_run(session, training_run_id, status="failed", error=error[:2000])

    _quietly(say, mark_failed)


def close_mlflow_run(registry: Any, engine: Engine, training_run_id: int, mlflow_run_id: str,
                     say: Callable[[str], None] = log.warning) -> int | None:
    """An MLflow run still RUNNING whose training run ended or died: the batches the database
    has and it lacks are sent, and it is marked FAILED. Returns how many were sent, or None when
    it was closed already or cannot be closed (deleted, purged, MLflow down: said, never
    raised, so that one old run does not block the runs after it)."""
    try:
        if registry.run_status(mlflow_run_id) != "RUNNING":
            return None
        sent = complete_mlflow_run(registry, engine, training_run_id, mlflow_run_id)
        registry.end_run(mlflow_run_id, "FAILED")
        return sent
    except Exception as exc:  # noqa: BLE001 - see the docstring
        say(f"could not close MLflow run {mlflow_run_id} of training run {training_run_id}: {exc}")
        return None


def _quietly(say: Callable[[str], None], action: Callable[[], Any]) -> None:
    try:
        action()
    except Exception as exc:  # noqa: BLE001 - cleanup after a failure: the first error matters
        say(f"cleanup after a failed training run also failed: {type(exc).__name__}: {exc}")
