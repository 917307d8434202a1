"""Jobs and schedules.

`training_job`'s tag lets dagster.yaml run at most one training job at a time; others wait in
the queue. Its executor, as every job's, is chosen once in `definitions.py` (by default the
whole run in one process: every step would otherwise re-import torch and MLflow, ~10 s each
here, more than the training itself at the default size).
"""

from __future__ import annotations

import dagster as dg

from .common import CHAMPION, CORPUS, SWEEP, SWEEP_REGISTERED, SWEEP_TAG, TRAINING_TAG, identity_tags

training_job = dg.define_asset_job(
    name="training_job",
    selection=dg.AssetSelection.groups("data", "training", "evaluation", "registry"),
    description="Corpus snapshot -> trained model (+ metrics, state) -> evaluation -> registered version -> champion.",
    tags={TRAINING_TAG: "true", **identity_tags("training")},
)

sweep_job = dg.define_asset_job(
    name="sweep_job",
    selection=dg.AssetSelection.assets(CORPUS, SWEEP, SWEEP_REGISTERED, CHAMPION),
    description="Corpus snapshot -> hyperparameter sweep (a trial per point of the search space, fanned out to the "
    "workers) -> the best trial as a registered version -> champion, through the same gate.",
    tags={SWEEP_TAG: "true", **identity_tags("training")},
)

@dg.schedule(
    name="daily_training_schedule",
    job=training_job,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Retrain every day at 03:00 UTC on that day's corpus and seed (stopped until turned on).",
)
def daily_training_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Each day a new seed (the date) for the synthetic corpus and the model, so the schedule
    does not retrain the same model every day; the champion gate decides what it is worth."""
    day = context.scheduled_execution_time.date()
    seed = int(day.strftime("%Y%m%d"))
    return dg.RunRequest(
        run_key=day.isoformat(),
        run_config={
            "ops": {
                "corpus": {"config": {"source_options": {"seed": seed}}},
                "train_model": {"config": {"seed": seed}},
            }
        },
        tags={"quadra/schedule-day": day.isoformat()},
    )
