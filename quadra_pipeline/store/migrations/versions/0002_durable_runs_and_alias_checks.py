"""Training runs name their MLflow run; alias checks record when the registry was last compared.

`training_runs.mlflow_run_id` lets a later run complete a dead run's MLflow metrics from
`training_metrics`; `alias_checks` holds, per registered model, the time of the last comparison
of MLflow's aliases with `model_alias_events` (the bound on when an external move happened).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("training_runs", sa.Column("mlflow_run_id", sa.String(length=64), nullable=True))
    op.create_table(
        "alias_checks",
        sa.Column("model_name", sa.String(length=255), nullable=False),
        sa.Column("checked_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("model_name", name=op.f("pk_alias_checks")),
    )


def downgrade() -> None:
    op.drop_table("alias_checks")
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("mlflow_run_id")
