"""Jobs and schedules.

`training_job` runs in one process: every step would otherwise re-import torch and MLflow
(~10 s each here), which costs more than the training itself at the default size. Its tag
lets dagster.yaml run at most one training job at a time; others wait in the queue.
"""

from __future__ import annotations

import dagster as dg

from .common import TRAINING_TAG

training_job = dg.define_asset_job(
    name="training_job",
    selection=dg.AssetSelection.groups("data", "training", "evaluation", "registry"),
    description="Corpus snapshot -> trained model (+ metrics, state) -> evaluation -> registered version -> champion.",
    executor_def=dg.in_process_executor,
    tags={TRAINING_TAG: "true"},
)

daily_training_schedule = dg.ScheduleDefinition(
    name="daily_training_schedule",
    job=training_job,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Retrain every day at 03:00 UTC (stopped until someone turns it on).",
)
