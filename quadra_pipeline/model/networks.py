"""The three spiking networks of the model (spec section 2) and their fused forward pass.

Each network is Linear -> LIF -> Linear -> LIF -> Linear -> LIF over T = 10 steps of the same
static input; its output is the last layer's mean spike rate. The module and buffer names
(`fc1..fc3`, `lif1..lif3`) are the original's, so its checkpoints load unchanged.

Training evaluates all three networks on every item of an epoch (spec section 4). Their LIF
layers are element-wise, so `NetworkTrio.forward_all` runs the first, second and third LIF
layers of all three networks as one layer each: three recurrences per step instead of nine.
The training step makes the same pass, and its backward pass, by hand (`training_pass.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .lif import LIF, TIME_STEPS, lif_rate, lif_reference, lif_spikes


@dataclass(frozen=True)
class NetworkShape:
    name: str
    hidden: int
    out_is_field: bool  # output N values (True) or one scalar (False)


#: nn1 updates the field, nn2 adjusts syntropy, nn3 gives the variance penalty.
SHAPES = (
    NetworkShape("nn1", 64, True),
    NetworkShape("nn2", 32, True),
    NetworkShape("nn3", 48, False),
)


class SpikingNetwork(nn.Module):
    """Linear(N, H) -> LIF -> Linear(H, H) -> LIF -> Linear(H, out) -> LIF, rate-coded."""

    def __init__(self, field_size: int, hidden: int, out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(field_size, hidden)
        self.lif1 = LIF()
        self.fc2 = nn.Linear(hidden, hidden)
        self.lif2 = LIF()
        self.fc3 = nn.Linear(hidden, out)
        self.lif3 = LIF()

    def forward(self, x: Tensor, steps: int = TIME_STEPS) -> Tensor:
        spikes1 = lif_spikes(self.fc1(x), steps)
        spikes2 = lif_spikes(self.fc2(spikes1), steps)
        return lif_rate(self.fc3(spikes2), steps)

    def forward_reference(self, x: Tensor, steps: int = TIME_STEPS) -> Tensor:
        """The same network through step-by-step autograd (for tests)."""
        spikes1 = lif_reference(self.fc1(x), steps)
        spikes2 = lif_reference(self.fc2(spikes1), steps)
        return lif_reference(self.fc3(spikes2), steps).mean(0)


class NetworkTrio(nn.Module):
    """nn1, nn2 and nn3 of one model, with a fused forward over all three."""

    def __init__(self, field_size: int) -> None:
        super().__init__()
        self.field_size = field_size
        self.nn1 = SpikingNetwork(field_size, SHAPES[0].hidden, field_size)
        self.nn2 = SpikingNetwork(field_size, SHAPES[1].hidden, field_size)
        self.nn3 = SpikingNetwork(field_size, SHAPES[2].hidden, 1)

    @property
    def networks(self) -> tuple[SpikingNetwork, SpikingNetwork, SpikingNetwork]:
        return (self.nn1, self.nn2, self.nn3)

    def forward_all(
        self, x1: Tensor, x2: Tensor, x3: Tensor, steps: int = TIME_STEPS
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Outputs of nn1(x1), nn2(x2), nn3(x3), each input (B, N): (B, N), (B, N), (B, 1)."""
        nets = self.networks
        hidden = [net.fc1.out_features for net in nets]
        current1 = torch.cat([F.linear(x, n.fc1.weight, n.fc1.bias) for x, n in zip((x1, x2, x3), nets)], 1)
        spikes1 = lif_spikes(current1, steps).split(hidden, dim=-1)
        current2 = torch.cat([F.linear(s, n.fc2.weight, n.fc2.bias) for s, n in zip(spikes1, nets)], -1)
        spikes2 = lif_spikes(current2, steps).split(hidden, dim=-1)
        current3 = torch.cat([F.linear(s, n.fc3.weight, n.fc3.bias) for s, n in zip(spikes2, nets)], -1)
        rates = lif_rate(current3, steps)
        n = self.field_size
        return rates[:, :n], rates[:, n : 2 * n], rates[:, 2 * n :]
