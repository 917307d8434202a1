"""The model as one `nn.Module`, for the registry (`mlflow.pytorch` / `mlflow.pyfunc`).

Input: item vectors (B, N) float32 (text features, `text_features`, or field vectors).
Output: (B, 3) float32, the loss l(f) of each action (ACTIONS order) on each item, the
quantity the Q-learner ranks. The Q-table and field0 travel with the module (as a buffer and
a plain attribute), so a loaded model can also answer which action its policy picks.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .networks import NetworkTrio
from .qlearning import ACTIONS, QTable, state_key
from .quadra import QuadraModel, item_loss


class QuadraPolicyModule(nn.Module):
    def __init__(self, field_size: int) -> None:
        super().__init__()
        self.field_size = field_size
        self.networks = NetworkTrio(field_size)
        self.register_buffer("field0", torch.zeros(field_size))
        self.q_values: dict[str, list[float]] = {}

    @classmethod
    def from_model(cls, model: QuadraModel) -> "QuadraPolicyModule":
        module = cls(model.field_size)
        module.networks.load_state_dict(model.networks.state_dict())
        module.field0.copy_(model.field0)
        module.q_values = {k: list(v) for k, v in model.q_table.values.items()}
        return module.eval()

    def forward(self, vectors: Tensor) -> Tensor:
        vectors = torch.as_tensor(vectors, dtype=torch.float32)
        if vectors.dim() == 1:
            vectors = vectors.unsqueeze(0)
        if vectors.shape[-1] != self.field_size:
            raise ValueError(f"expected vectors of size {self.field_size}, got {list(vectors.shape)}")
        with torch.no_grad():
            mean = vectors.mean(1, keepdim=True)
            var = vectors.var(1, keepdim=True)
            out1, out2, out3 = self.networks.forward_all(vectors, mean.expand_as(vectors), var.expand_as(vectors))
            fields = torch.stack(
                (vectors + torch.where(var > 0.1, 0.5, 1.0) * out1, vectors + 0.25 * (0.5 - mean) * out2, vectors - out3 * var),
                1,
            )
            return item_loss(fields)

    def greedy_action(self) -> str:
        """The action the policy picks from its start state (key of field0), without exploring."""
        return ACTIONS[QTable(self.q_values).greedy(state_key(float(self.field0.mean())))]
