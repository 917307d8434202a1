"""The training step's hand-written pass, its Adam call and its Q-walk, against the definitions.

`QuadraModel.train_items` no longer goes through autograd and `Optimizer.step`: these tests
hold each replacement to what it replaces (autograd through `action_fields` and `item_loss`,
`torch.optim.Adam.step`, the Q-table's `choose` and `update`).
"""

import io
import random

import numpy as np
import pytest
import torch

from quadra_pipeline.model import QTable, QuadraModel, item_loss, load_checkpoint, save_checkpoint
from quadra_pipeline.model.adam import adam_step, make_adam
from quadra_pipeline.model.trainer import FieldTrainer
from quadra_pipeline.model.training_pass import TrainingItems, TrioLayout, TrioPass, item_losses


def spiking_items(model: QuadraModel, count: int = 9, scale: float = 12.0) -> torch.Tensor:
    """Items big enough that the networks spike sometimes, plus a text-like one (word counts)."""
    items = model.fresh_vectors(count) * scale
    counts = (torch.arange(model.field_size) % 4).float().unsqueeze(0)
    return torch.cat((items, counts))


def params_of(model: QuadraModel) -> list[list[torch.Tensor]]:
    return [list(net.parameters()) for net in model.networks.networks]


def test_forward_gives_forward_all_rates_and_action_fields_bit_for_bit():
    model = QuadraModel(40, seed=3)
    items = spiking_items(model, scale=40.0)
    prepared = TrainingItems(items)
    layout = TrioLayout(params_of(model))
    forward = TrioPass(params_of(model), prepared, layout)
    with torch.no_grad():
        mean, var = items.mean(1, keepdim=True), items.var(1, keepdim=True)
        outs = model.networks.forward_all(items, mean.expand_as(items), var.expand_as(items))
        expected_fields = model.action_fields(items)
    for index, out in enumerate(outs):
        assert torch.equal(torch.from_numpy(forward.rates[:, layout.outputs[index]]), out)
    assert all(0.0 < float(out.mean()) < 1.0 for out in outs)  # every network's last layer spikes
    fields = prepared.fields(forward.rates, layout)
    assert torch.equal(torch.from_numpy(fields), expected_fields)
    losses, means = item_losses(fields)
    torch.testing.assert_close(torch.from_numpy(losses), item_loss(expected_fields), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(torch.from_numpy(means), expected_fields.mean(-1), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "chosen",
    [
        [0, 2, 0, 1, 2, 0, 0, 1, 2, 0],  # all three networks
        [0, 0, 2, 0, 2, 2, 0, 0, 0, 2],  # nn1 and nn3 (the usual epoch)
        [0] * 10,  # nn1 on every item
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],  # nn2 alone
        [2, 1, 2, 2, 2, 1, 2, 2, 2, 2],  # nn2 and nn3
    ],
    ids=["all", "nn1+nn3", "nn1-only", "nn2-only", "nn2+nn3"],
)
def test_backward_gives_autograds_gradients(chosen):
    model = QuadraModel(40, seed=7)
    items = spiking_items(model)
    chosen = np.array(chosen)
    networks = sorted(set(chosen.tolist()))

    # Autograd through the definitions: the epoch loss is the mean of the chosen actions' losses.
    fields = model.action_fields(items)
    item_loss(fields)[torch.arange(len(items)), torch.from_numpy(chosen)].mean().backward()
    expected = {k: [p.grad.clone() for p in net.parameters()] for k, net in enumerate(model.networks.networks)}
    for k, net in enumerate(model.networks.networks):
        if k not in networks:
            assert all(g.abs().max() == 0 for g in expected[k])  # no item reached it

    prepared = TrainingItems(items)
    layout = TrioLayout(params_of(model))
    forward = TrioPass(params_of(model), prepared, layout)
    out_fields = prepared.fields(forward.rates, layout)
    _, means = item_losses(out_fields)
    grad_rates = prepared.rate_gradients(out_fields, means, chosen, networks, layout, forward.steps)
    got = forward.backward(grad_rates, networks)
    assert len(got) == len(networks)
    names = [name for name, _ in model.networks.nn1.named_parameters()]
    for k, grads in zip(networks, got):
        assert [tuple(g.shape) for g in grads] == [tuple(p.shape) for p in model.networks.networks[k].parameters()]
        for name, g, e in zip(names, grads, expected[k]):
            assert e.abs().max() > 0, f"nn{k + 1}.{name}: the test's items must reach every layer"
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6, msg=f"nn{k + 1}.{name}")


def test_adam_step_is_optimizer_step_bit_for_bit_across_a_save_and_load():
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    ours, theirs = make_adam(nets[0].parameters(), 0.01), make_adam(nets[1].parameters(), 0.01)
    generator = torch.Generator().manual_seed(1)

    def step(ours, theirs, skip=False):
        for p, q in zip(nets[0].parameters(), nets[1].parameters()):
            grad = None if skip else torch.randn(p.shape, generator=generator)
            p.grad = grad
            q.grad = None if grad is None else grad.clone()
        adam_step(ours)
        theirs.step()
        for p, q in zip(nets[0].parameters(), nets[1].parameters()):
            assert torch.equal(p, q)

    for i in range(4):
        step(ours, theirs, skip=i == 1)  # no gradient: neither moves, no state is created
        if i == 0:
            assert len(ours.state) == 0 or all(len(s) == 3 for s in ours.state.values())
    for opt in (ours, theirs):
        opt.param_groups[0]["lr"] = 0.003
    step(ours, theirs)
    assert [float(s["step"]) for s in ours.state.values()] == [4.0] * 4

    # Through torch.save / torch.load(weights_only=True) and a fresh optimiser, both ways round.
    buffer = io.BytesIO()
    torch.save(ours.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert [float(s["step"]) for s in saved["state"].values()] == [4.0] * 4
    reloaded = make_adam(nets[0].parameters(), 0.01)
    reloaded.load_state_dict(saved)
    step(reloaded, theirs)
    step(reloaded, theirs)
    assert [float(s["step"]) for s in reloaded.state.values()] == [6.0] * 4
    # And torch's own step on our state (views of one buffer) counts each parameter once.
    step(theirs, reloaded)
    assert [float(s["step"]) for s in reloaded.state.values()] == [7.0] * 4
    assert [float(s["step"]) for s in theirs.state.values()] == [7.0] * 4


def test_adam_step_leaves_other_optimisers_to_optimizer_step():
    net = torch.nn.Linear(3, 2)
    sgd = torch.optim.SGD(net.parameters(), lr=0.1)
    before = net.weight.detach().clone()
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    adam_step(sgd)
    assert torch.equal(net.weight, before - 0.1)
    hooked = make_adam(net.parameters(), 0.1)
    calls = []
    hooked.register_step_post_hook(lambda *args: calls.append(1))
    adam_step(hooked)
    assert calls == [1]


class ThroughMethods(QTable):
    """Overrides `choose` (calling the base): the walk must go through the methods."""

    def choose(self, state, explore_draw, random_action):
        return super().choose(state, explore_draw, random_action)


def test_inline_walk_follows_choose_and_update():
    rng = random.Random(5)
    inline, through = QTable(), ThroughMethods()
    for table in (inline, through):
        table.values.update({"0.0": [0.3, 0.3, 0.1], "0.01": [0.0, 0.2, 0.2], "-0.0": [0.5, 0.0, 0.9]})
    total_inline = total_through = 1.25
    for _ in range(60):
        count = rng.randint(1, 25)
        losses = [[rng.random() for _ in range(3)] for _ in range(count)]
        means = [[rng.choice((-0.004, 0.004, 0.012, rng.uniform(-0.03, 0.03))) for _ in range(3)] for _ in range(count)]
        explore = [rng.random() for _ in range(count)]
        actions = [rng.randrange(3) for _ in range(count)]
        chosen_inline, total_inline = inline.walk("0.0", losses, means, explore, actions, total_inline)
        chosen_through, total_through = through.walk("0.0", losses, means, explore, actions, total_through)
        assert chosen_inline == chosen_through
        assert total_inline == total_through
        assert inline.values == through.values
    assert len(inline.values) > 3


def test_checkpoint_from_before_the_fused_adam_resumes_on_the_fused_kernel(tmp_path):
    trainer = FieldTrainer(QuadraModel(16, seed=2))
    trainer.step(["some words of a text that is long enough", "another row of words here"])
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, trainer)
    payload = torch.load(path, weights_only=True)
    for state in payload["optimizers"]:
        assert state["param_groups"][0]["fused"] is True
        state["param_groups"][0]["fused"] = None  # what the earlier code wrote
    torch.save(payload, path)
    loaded = load_checkpoint(path)
    assert all(group["fused"] is True for opt in loaded.model.optimizers for group in opt.param_groups)
    loaded.trainer.step(["a third text with enough words in it"])
