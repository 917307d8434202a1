"""The Quadra Matrix learner: three spiking networks, three actions, a Q-table (spec 2-5).

`QuadraModel.train(D, text, epochs)` is the original's `train`: per epoch it walks the items
with epsilon-greedy Q-learning, each item taking one action, and steps the networks on the
mean loss of the chosen actions. An item's result depends only on the item and its action,
so every action is evaluated for every item in one batched forward pass, and the sequential
walk only picks among the precomputed losses (spec section 4).

All randomness (weight initialisation, exploration, fresh vectors) comes from one seeded
`torch.Generator` owned by the model, so a seed fixes a run bit for bit, and the
generator's state in a checkpoint makes resuming exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .adam import adam_step, make_adam
from .features import text_features
from .networks import NetworkTrio
from .qlearning import ACTIONS, QTable, state_key
from .training_pass import SYNTROPY_GAIN, TrainingItems, TrioLayout, TrioPass, item_losses

DEFAULT_LEARNING_RATE = 0.001


@dataclass(frozen=True)
class TrainResult:
    """What one `train` call reports."""

    reward: float  # summed reward of one epoch, averaged over epochs (the original's return)
    reward_per_item: float
    loss: float  # the last epoch's mean item loss
    items: int
    action_counts: tuple[int, int, int]  # over all epochs, in ACTIONS order


def _draw_seed(seed: int) -> int:
    """A second seed derived from `seed` (SplitMix64's increment), for the draws."""
    return (seed + 0x9E3779B97F4A7C15) % (2**63)


def item_loss(fields: Tensor) -> Tensor:
    """l(f) = var(f) + |mean(f) - 0.5| over the last dimension."""
    return fields.var(-1) + (fields.mean(-1) - 0.5).abs()


class QuadraModel:
    """Networks, their optimisers, the Q-table and the fixed reference vector field0."""

    def __init__(self, field_size: int = 100, seed: int = 0, learning_rate: float = DEFAULT_LEARNING_RATE) -> None:
        if field_size < 2:
            raise ValueError(f"field_size must be at least 2, got {field_size}")
        self.field_size = field_size
        # Two streams from one seed, so the initial weights and the vectors drawn later are
        # not the same random numbers.
        self.generator = torch.Generator().manual_seed(_draw_seed(seed))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # nn.Linear draws its initial weights from the global RNG
            self.networks = NetworkTrio(field_size)
        self.field0 = 0.1 * self.randn(field_size)
        self.q_table = QTable()
        self.optimizers = [make_adam(net.parameters(), learning_rate) for net in self.networks.networks]

    # Randomness ---------------------------------------------------------------------------

    def randn(self, *shape: int) -> Tensor:
        return torch.randn(*shape, generator=self.generator)

    def rand(self, *shape: int) -> Tensor:
        return torch.rand(*shape, generator=self.generator)

    def fresh_vectors(self, count: int) -> Tensor:
        """`count` vectors 0.1 * N(0, I)."""
        return 0.1 * self.randn(count, self.field_size)

    # Learning rate -----------------------------------------------------------------------

    @property
    def learning_rate(self) -> float:
        return float(self.optimizers[0].param_groups[0]["lr"])

    def set_learning_rate(self, lr: float) -> None:
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr

    # The three actions, for all items at once ----------------------------------------------

    def action_fields(self, items: Tensor) -> Tensor:
        """f for every item and action: (B, 3, N), in ACTIONS order (spec section 3)."""
        mean = items.mean(1, keepdim=True)
        var = items.var(1, keepdim=True)
        gain = torch.where(var > 0.1, 0.5, 1.0)
        out1, out2, out3 = self.networks.forward_all(items, mean.expand_as(items), var.expand_as(items))
        update_field = items + gain * out1
        adjust_syntropy = items + SYNTROPY_GAIN * (0.5 - mean) * out2
        penalize_variance = items - out3 * var  # p stays a tensor: nn3 learns (the fix)
        return torch.stack((update_field, adjust_syntropy, penalize_variance), 1)

    # Training ------------------------------------------------------------------------------

    def items_for(self, vectors: Tensor, text: str | None) -> Tensor:
        if text is None:
            return vectors
        return torch.cat((vectors, text_features(text, self.field_size).unsqueeze(0)))

    def train(self, vectors: Tensor, text: str | None = None, epochs: int = 1) -> TrainResult:
        """The original's train(D, text, epochs) (spec section 5): the text's vector comes last."""
        return self.train_items(self.items_for(vectors, text), epochs)

    def train_items(self, items: Tensor, epochs: int) -> TrainResult:
        """Train on prepared item vectors (B, N) for `epochs` epochs.

        Per epoch: one forward pass of all three networks on all items (`TrioPass`, no
        autograd), the sequential Q-walk over the precomputed losses, then, for each network
        some item chose, its gradient written out by hand (`TrioPass.backward`; only the items
        that chose it contribute) and its Adam step. A network no item chose keeps
        `grad = None` and is not stepped (Adam would leave it alone anyway).
        """
        prepared = TrainingItems(items)
        count = prepared.count
        start_state = state_key(float(self.field0.mean()))
        q_table, generator = self.q_table, self.generator
        # Each optimiser's parameter list is its network's parameters(), in order.
        params = [optimizer.param_groups[0]["params"] for optimizer in self.optimizers]
        layout = TrioLayout(params)
        rows = np.arange(count)
        total_reward = 0.0
        loss_value = float("nan")
        action_counts = [0, 0, 0]
        with torch.no_grad():
            for _ in range(epochs):
                forward = TrioPass(params, prepared, layout)
                fields = prepared.fields(forward.rates, layout)  # (B, 3, N)
                losses, means = item_losses(fields)  # (B, 3) each
                explore = torch.rand(count, generator=generator).tolist()
                random_actions = torch.randint(0, len(ACTIONS), (count,), generator=generator).tolist()
                chosen, total_reward = q_table.walk(
                    start_state, losses.tolist(), means.tolist(), explore, random_actions, total_reward
                )

                chosen_actions = np.array(chosen)
                loss_value = float(np.add.reduce(losses[rows, chosen_actions]) / np.float32(count))
                stepped = []
                for index in range(len(ACTIONS)):
                    picked = chosen.count(index)
                    action_counts[index] += picked
                    if picked:
                        stepped.append(index)
                    else:
                        # No item chose this network: it gets no gradient this epoch, and Adam
                        # must leave it untouched (a zero gradient would still move it).
                        for param in params[index]:
                            param.grad = None
                grad_rates = prepared.rate_gradients(fields, means, chosen_actions, stepped, layout, forward.steps)
                for index, grads in zip(stepped, forward.backward(grad_rates, stepped)):
                    for param, grad in zip(params[index], grads, strict=True):
                        param.grad = grad
                    adam_step(self.optimizers[index])
        reward = total_reward / epochs
        return TrainResult(reward, reward / count, loss_value, count, tuple(action_counts))  # type: ignore[arg-type]
