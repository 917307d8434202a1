"""The sweep's three steps: plan the trials (one MLflow parent run), train each trial (an MLflow
child run, wherever a worker takes it), pick the best.

Trials fan out with Dagster's dynamic outputs: one `run_trial` step per trial, each its own
Celery task under QUADRA_RUN_EXECUTOR=celery (queue `sweeps`), so any worker host can take
it. Steps share nothing but the object store (the corpus snapshot, each trial's checkpoint,
their results through the IO manager), PostgreSQL and MLflow.

A trial that fails on its own (an exception in training, a non-finite weight) is a result, not
a failed step: its child run ends FAILED with the reason, and the sweep picks the best of the
rest; it fails only when no trial succeeded. A broken dependency (MLflow, the database, the
object store unreachable) fails the step and the run, clearly, like any other step. A trial
whose worker died (a SIGKILL, a lost host) is delivered again to another worker (Celery's late
acknowledgement); the attempt that died is found by its SQL row, and its child run and row are
closed FAILED before the trial trains again.
"""


import json
import math
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from sqlalchemy.exc import SQLAlchemyError

from ...data.snapshot import SnapshotRef, fetch_snapshot
from ...model import load_checkpoint
from ...model.checkpoint import non_finite_tensors
from ...model.evaluation import evaluate
from ...objectstore import ObjectStoreError
from ...registry import RegistryError
from ...store import finish_training_run, list_training_runs, session_scope
from ...sweep import Trial
from ...tracked_training import close_mlflow_run, train_tracked
from ...training import TrainingConfig, TrainingOutcome
from ..common import code_version
from ..resources import DataHome, ObjectStoreResource, RegistryResource, StoreResource
from ..runs.dead_runs import StopWhenRunEnds
from .config import SweepConfig, planned_trials

#: The Celery queue trial steps go to (workers started by `quadra worker` consume it).
SWEEP_QUEUE = "sweeps"
#: Errors that mean the sweep's infrastructure is broken, not the trial: the step fails.
INFRASTRUCTURE_ERRORS = (RegistryError, ObjectStoreError, SQLAlchemyError)


@dataclass(frozen=True)
class TrialPlan:
    trial: Trial
    corpus: SnapshotRef
    parent_run_id: str
    checkpoint_every: int
    metrics_flush_every: int


@dataclass(frozen=True)
class TrialResult:
    trial: Trial
    parent_run_id: str
    corpus: SnapshotRef
    ok: bool
    worker: str
    error: str | None = None
    mlflow_run_id: str | None = None
    training_run_id: int | None = None
    gate_score: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint_key: str | None = None
    checkpoint_sha256: str | None = None
    seconds: float = 0.0  # the step's body, fetching and uploading included
    training_seconds: float = 0.0  # training alone


@dataclass(frozen=True)
class SweepOutcome:
    parent_run_id: str
    best: TrialResult
    results: list[TrialResult]

    @property
    def failed(self) -> list[TrialResult]:
        return [r for r in self.results if not r.ok]


def worker_name() -> str:
    """Which worker runs this step: the Celery worker's node name inside a Celery task
    (`quadra@<host>`), else the host and process."""
    try:
        from celery import current_task

        if current_task and current_task.request and current_task.request.hostname:
            return str(current_task.request.hostname)
    except ImportError:
        pass
    return f"{socket.gethostname()}:{os.getpid()}"


@dg.op(
    out=dg.DynamicOut(TrialPlan),
    description="Check the search space (one line per problem, before any trial), start the sweep's MLflow parent "
    "run, and fan out one trial per point of the space.",
)
def plan_trials(
    context: dg.OpExecutionContext, config: SweepConfig, corpus: SnapshotRef, registry: RegistryResource,
    objects: ObjectStoreResource,
):
    trials = planned_trials(config, corpus.training_rows)
    reg = registry.registry()
    reg.check_available()
    objects.store().check_available()
    run_id = context.run.run_id
    space = config.space().as_dict()
    parent = reg.start_run(
        f"sweep-{run_id[:8]}",
        tags={"dagster_run_id": run_id, "code_version": code_version(), "data_fingerprint": corpus.fingerprint,
              "quadra.sweep": "parent"},
    )
    reg.log_params(parent, {
        "trials": len(trials),
        **{f"space.{name}": json.dumps(value, sort_keys=True) for name, value in space.items()},
        "data_fingerprint": corpus.fingerprint,
    })
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "trials.json"
        listing.write_text(json.dumps({"space": space, "trials": [{"key": t.key, **t.params} for t in trials]}, indent=2))
        reg.log_artifact(parent, listing)
    context.log.info(f"sweep of {len(trials)} trial(s), MLflow parent run {parent}")
    for trial in trials:
        yield dg.DynamicOutput(
            TrialPlan(trial, corpus, parent, config.checkpoint_every, config.metrics_flush_every), mapping_key=trial.key
        )


@dg.op(
    tags={"dagster-celery/queue": SWEEP_QUEUE},
    description="Train one trial (an MLflow child run of the sweep, tagged with the worker that ran it), evaluate it, "
    "and put its checkpoint in the object store.",
)
def run_trial(
    context: dg.OpExecutionContext, plan: TrialPlan, data_home: DataHome, store: StoreResource,
    registry: RegistryResource, objects: ObjectStoreResource,
) -> TrialResult:
    started = time.perf_counter()
    trial, worker, run_id = plan.trial, worker_name(), context.run.run_id
    reg, engine, shared = registry.registry(), store.engine(), objects.store()
    attempt = close_lost_attempts(engine, reg, f"{run_id}/{trial.key}#", context.log.warning) + 1
    snapshot = fetch_snapshot(plan.corpus, shared, data_home.corpus_dir())
    held_out = snapshot.held_out_texts()
    params = {name: trial.params[name] for name in ("field_size", "batches", "rows_per_batch", "seed", "learning_rate")}
    training = TrainingConfig(**params, source="file", source_options={"path": str(snapshot.train_path)},
                              checkpoint_every=min(plan.checkpoint_every, int(params["batches"])))
    scored: dict[str, float] = {}

    def accept(outcome: TrainingOutcome) -> None:
        """The trial counts only with finite weights; its evaluation is part of it."""
        bad = non_finite_tensors(outcome.checkpoint)
        if bad:
            raise ValueError(f"non-finite values in {', '.join(bad)}")
        scored.update(evaluate(load_checkpoint(outcome.checkpoint).model, held_out).as_metrics())
        if not math.isfinite(scored["policy_probe_loss"]):
            raise ValueError(f"gate score is {scored['policy_probe_loss']}")

    context.log.info(f"{trial.key} (attempt {attempt}) on {worker}: {params}")
    tags = {"dagster_run_id": run_id, "trial": trial.key, "attempt": attempt, "worker": worker,
            "code_version": code_version(), "data_fingerprint": plan.corpus.fingerprint, "quadra.sweep": "trial"}
    try:
        tracked = train_tracked(
            training,
            data_home.checkpoint_dir(run_id) / trial.key,
            engine=engine,
            registry=reg,
            external_run_id=f"{run_id}/{trial.key}#{attempt}",
            run_name=trial.key,
            tags=tags,
            params={**params, "trial": trial.key},
            source={**plan.corpus.source, "snapshot": plan.corpus.fingerprint},
            parent_run_id=plan.parent_run_id,
            origin={"dagster_run_id": run_id, "trial": trial.key},
            say=context.log.info,
            log_every=max(1, training.batches // 4),
            flush_every=plan.metrics_flush_every,
            accept=accept,
            on_batch=[StopWhenRunEnds(context)],
        )
    except (*INFRASTRUCTURE_ERRORS, dg.Failure):
        raise
    except Exception as exc:  # noqa: BLE001 - the trial failed on its own: a result, the sweep goes on
        error = f"{type(exc).__name__}: {exc}"[:1000]
        context.log.warning(f"{trial.key} failed: {error}")
        return TrialResult(trial, plan.parent_run_id, plan.corpus, ok=False, worker=worker, error=error,
                           seconds=time.perf_counter() - started)
    reg.log_metrics(tracked.mlflow_run_id, [{"batch_number": tracked.outcome.batches_done,
                                              **{f"eval_{k}": v for k, v in scored.items()}}])
    key = f"runs/{run_id}/trials/{trial.key}/checkpoint.pt"
    shared.put_file(key, tracked.outcome.checkpoint)
    score = scored["policy_probe_loss"]
    context.log.info(f"{trial.key}: gate score {score:.5f}, {tracked.outcome.seconds:.1f} s of training on {worker}")
    return TrialResult(
        trial, plan.parent_run_id, plan.corpus, ok=True, worker=worker, mlflow_run_id=tracked.mlflow_run_id,
        training_run_id=tracked.training_run_id, gate_score=score, metrics=scored, checkpoint_key=key,
        checkpoint_sha256=tracked.outcome.checkpoint_sha256, seconds=time.perf_counter() - started,
        training_seconds=tracked.outcome.seconds,
    )


def close_lost_attempts(engine, reg, prefix: str, say) -> int:
    """Attempts of a trial (SQL rows under `prefix`) whose worker died mid-trial: their child
    run and row are closed FAILED. Returns how many attempts there were before this one."""
    with session_scope(engine) as session:
        attempts = [(r.id, r.status, r.mlflow_run_id) for r in list_training_runs(session, external_prefix=prefix)]
    for training_run_id, status, mlflow_run_id in attempts:
        if status != "running":
            continue
        if mlflow_run_id:
            close_mlflow_run(reg, engine, training_run_id, mlflow_run_id, say)
        with session_scope(engine) as session:
            finish_training_run(session, training_run_id, status="failed",
                                error="its worker was lost mid-trial (killed or gone): the trial ran again on another worker")
        say(f"closed attempt {training_run_id} of {prefix.rstrip('#')}: its worker was lost; running the trial again")
    return len(attempts)


@dg.op(description="Pick the trial with the best (lowest) gate score; record the sweep's figures on its parent run.")
def pick_best(context: dg.OpExecutionContext, results: list[TrialResult], registry: RegistryResource) -> SweepOutcome:
    results = sorted(results, key=lambda r: r.trial.index)
    parent = results[0].parent_run_id
    reg = registry.registry()
    good = [r for r in results if r.ok]
    for failed in (r for r in results if not r.ok):
        context.log.warning(f"{failed.trial.key} failed on {failed.worker}: {failed.error}")
    if not good:
        reg.set_run_tags(parent, {"best_trial": "none"})
        reg.end_run(parent, "FAILED")
        raise dg.Failure(
            f"no trial of the sweep succeeded ({len(results)} failed): "
            + "; ".join(f"{r.trial.key}: {r.error}" for r in results)[:2000]
        )
    best = min(good, key=lambda r: (r.gate_score, r.trial.index))
    reg.log_metrics(parent, [{"batch_number": 0, "best_gate_score": best.gate_score, "trials_succeeded": len(good),
                              "trials_failed": len(results) - len(good)}])
    reg.set_run_tags(parent, {"best_trial": best.trial.key, "best_child_run_id": best.mlflow_run_id,
                              "workers": ",".join(sorted({r.worker for r in results}))})
    reg.end_run(parent, "FINISHED")
    context.log.info(f"best: {best.trial.key} (gate score {best.gate_score:.5f}, child run {best.mlflow_run_id}) "
                     f"of {len(good)} succeeded, {len(results) - len(good)} failed")
    return SweepOutcome(parent, best, results)
