"""The original's training step, one item at a time: the yardstick for the batched one.

Same rules as `QuadraModel.train_items` (and the same random draws, in the same order), but
each item runs its chosen action through its own network with step-by-step autograd, as the
original did. The tests hold the fast path to it; the benchmark times both in one run.
"""

from __future__ import annotations

import torch

from .quadra import QuadraModel, TrainResult, item_loss
from .qlearning import state_key


def reference_train_items(model: QuadraModel, items: torch.Tensor, epochs: int) -> TrainResult:
    nets = model.networks.networks
    start = state_key(float(model.field0.mean()))
    total = 0.0
    loss_value = float("nan")
    counts = [0, 0, 0]
    for _ in range(epochs):
        for optimizer in model.optimizers:
            optimizer.zero_grad(set_to_none=True)
        explore = model.rand(len(items)).tolist()
        random_actions = torch.randint(0, 3, (len(items),), generator=model.generator).tolist()
        state, losses, chosen = start, [], []
        for i, d in enumerate(items):
            action = model.q_table.choose(state, explore[i], random_actions[i])
            d = d.unsqueeze(0)
            mean, var = d.mean(), d.var()
            if action == 0:
                f = d + (0.5 if var > 0.1 else 1.0) * nets[0].forward_reference(d)
            elif action == 1:
                f = d + 0.25 * (0.5 - mean) * nets[1].forward_reference(mean * torch.ones_like(d))
            else:
                f = d - nets[2].forward_reference(var * torch.ones_like(d)) * var
            loss = item_loss(f)[0]
            reward = 1.0 / (1.0 + float(loss.detach()))
            model.q_table.update(state, action, reward, start)
            total += reward
            state = state_key(float(f.detach().mean()))
            losses.append(loss)
            chosen.append(action)
        epoch_loss = torch.stack(losses).mean()
        epoch_loss.backward()
        for index, net in enumerate(nets):
            counts[index] += chosen.count(index)
            if index not in chosen:
                for param in net.parameters():
                    param.grad = None
        for optimizer in model.optimizers:
            optimizer.step()
        loss_value = float(epoch_loss.detach())
    reward = total / epochs
    return TrainResult(reward, reward / len(items), loss_value, len(items), tuple(counts))  # type: ignore[arg-type]
