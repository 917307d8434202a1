"""The loss/reward curve of a training run as a PNG (for Dagster metadata and MLflow)."""

from __future__ import annotations

import io
from collections.abc import Sequence

from .model import BatchMetrics


def training_curve_png(metrics: Sequence[BatchMetrics], title: str = "training") -> bytes:
    """`metrics`: anything with batch_number, loss and reward (BatchMetrics, TrainingMetric rows)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    batches = [m.batch_number for m in metrics]
    figure = Figure(figsize=(6.4, 3.2), dpi=100)
    loss_axis = figure.add_subplot(1, 1, 1)
    loss_axis.plot(batches, [m.loss for m in metrics], color="tab:red", label="loss")
    loss_axis.set_xlabel("batch")
    loss_axis.set_ylabel("loss", color="tab:red")
    reward_axis = loss_axis.twinx()
    reward_axis.plot(batches, [m.reward for m in metrics], color="tab:blue", label="reward")
    reward_axis.set_ylabel("reward (summed per epoch)", color="tab:blue")
    loss_axis.set_title(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
