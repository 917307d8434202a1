"""Evaluation of a trained model: the spec's probe plus the loss on held-out text.

Both walk their items in order with the learned policy (greedy Q-learning, no exploration,
starting from key(field0) as in training) and score each item by the loss of the action the
policy takes: `policy_probe_loss` on the spec's 200 probe vectors, `held_out_loss` on the
feature vectors of held-out texts. Lower is better.

`gate_score` (the figure the champion gate compares) is `policy_probe_loss`. The held-out
text loss is reported but not gated on: text vectors are word counts whose own variance
(~1.3) dominates l(f), and the networks' outputs (spike rates in [0, 1]) move it by only a
few hundredths, so it ranks models by noise (measured: 1.87 fresh, 1.70 after 3 batches,
1.72 after 20, while the probe's update_field went 0.51, 0.08, 0.03).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from .features import text_features
from .probe import probe, probe_vectors
from .qlearning import ACTIONS, state_key
from .quadra import QuadraModel, item_loss


@dataclass(frozen=True)
class Evaluation:
    policy_probe_loss: float
    held_out_loss: float
    best_action_loss: float
    held_out_texts: int
    probe_update_field: float
    probe_adjust_syntropy: float
    probe_penalize_variance: float
    probe_spike_rate: float
    action_losses: dict[str, float]
    policy_actions: dict[str, int]

    @property
    def gate_score(self) -> float:
        return self.policy_probe_loss

    def as_metrics(self) -> dict[str, float]:
        """Flat numeric figures (for MLflow metrics and Dagster metadata)."""
        flat = {k: float(v) for k, v in asdict(self).items() if isinstance(v, (int, float))}
        flat.update({f"held_out_{a}": v for a, v in self.action_losses.items()})
        return flat


def policy_walk(model: QuadraModel, vectors: torch.Tensor) -> tuple[torch.Tensor, list[float], list[int]]:
    """Per-action losses (B, 3), the loss of the action the greedy policy takes on each item,
    and how often it took each action."""
    with torch.no_grad():
        fields = model.action_fields(vectors)
        losses = item_loss(fields)
    loss_rows = losses.tolist()
    mean_rows = fields.mean(-1).tolist()
    state = state_key(float(model.field0.mean()))
    taken, counts = [], [0, 0, 0]
    for i in range(len(loss_rows)):
        action = model.q_table.greedy(state)
        taken.append(loss_rows[i][action])
        counts[action] += 1
        state = state_key(mean_rows[i][action])
    return losses, taken, counts


def evaluate(model: QuadraModel, texts: Sequence[str]) -> Evaluation:
    if not texts:
        raise ValueError("evaluation needs at least one held-out text")
    vectors = torch.stack([text_features(t, model.field_size) for t in texts])
    losses, taken, counts = policy_walk(model, vectors)
    _, probe_taken, _ = policy_walk(model, probe_vectors(model.field_size))
    result = probe(model)
    return Evaluation(
        policy_probe_loss=sum(probe_taken) / len(probe_taken),
        held_out_loss=sum(taken) / len(taken),
        best_action_loss=float(losses.min(1).values.mean()),
        held_out_texts=len(texts),
        probe_update_field=result.update_field,
        probe_adjust_syntropy=result.adjust_syntropy,
        probe_penalize_variance=result.penalize_variance,
        probe_spike_rate=result.spike_rate,
        action_losses=dict(zip(ACTIONS, losses.mean(0).tolist())),
        policy_actions=dict(zip(ACTIONS, counts)),
    )
