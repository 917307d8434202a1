"""The batched training step against a one-item-at-a-time reference, and its rules."""

import copy

import torch

from quadra_pipeline.model.qlearning import ACTIONS, QTable, state_key
from quadra_pipeline.model.quadra import QuadraModel
from quadra_pipeline.model.reference import reference_train_items


def test_batched_train_matches_item_by_item_reference():
    fast = QuadraModel(24, seed=5)
    slow = copy.deepcopy(fast)
    items = fast.fresh_vectors(12) * 8  # large enough that the networks spike
    slow.fresh_vectors(12)  # keep both generators in step
    fast_reward = fast.train_items(items, 4).reward
    slow_reward = reference_train_items(slow, items, 4).reward
    assert abs(fast_reward - slow_reward) < 1e-5
    assert fast.q_table.values.keys() == slow.q_table.values.keys()
    for key in fast.q_table.values:
        torch.testing.assert_close(torch.tensor(fast.q_table.values[key]), torch.tensor(slow.q_table.values[key]))
    for p, q in zip(fast.networks.parameters(), slow.networks.parameters()):
        # Adam divides by sqrt of tiny second moments: float summation order shows at 1e-5.
        torch.testing.assert_close(p, q, rtol=1e-4, atol=2e-5)


class AlwaysFirstAction(QTable):
    def choose(self, state, explore_draw, random_action):
        return 0


def test_networks_no_item_chose_get_no_gradient_and_adam_leaves_them_alone():
    model = QuadraModel(20, seed=1)
    model.q_table = AlwaysFirstAction()
    before = copy.deepcopy(model.networks.state_dict())
    result = model.train(model.fresh_vectors(10) * 5, "some words here and there", epochs=3)
    assert result.action_counts == (33, 0, 0)
    after = model.networks.state_dict()
    changed = {name: not torch.equal(before[name], after[name]) for name in before}
    assert changed["nn1.fc1.weight"] and changed["nn1.fc3.bias"]
    assert not any(v for k, v in changed.items() if k.startswith(("nn2.", "nn3.")))
    assert model.optimizers[1].state == {} and model.optimizers[2].state == {}
    assert all(p.grad is None for p in model.networks.nn2.parameters())


class AlwaysPenalize(QTable):
    def choose(self, state, explore_draw, random_action):
        return 2


def test_nn3_receives_a_gradient_the_original_bug_is_fixed():
    model = QuadraModel(20, seed=2)
    model.q_table = AlwaysPenalize()
    # Items with enough variance that nn3's input current makes it spike.
    items = model.fresh_vectors(8) * 12
    before = model.networks.nn3.fc3.weight.detach().clone()
    model.train_items(items, 2)
    assert model.networks.nn3.fc1.weight.grad is not None
    assert not torch.equal(before, model.networks.nn3.fc3.weight)


def test_reward_is_the_summed_epoch_reward_and_the_q_table_fills():
    model = QuadraModel(30, seed=3)
    result = model.train(model.fresh_vectors(20), "a text item with some words", epochs=3)
    assert result.items == 21
    assert 0 < result.reward <= 21
    assert abs(result.reward_per_item - result.reward / 21) < 1e-12
    assert sum(result.action_counts) == 63
    assert len(model.q_table) > 0
    assert set(model.q_table.to_dict()[next(iter(model.q_table.values))]) == set(ACTIONS)


def test_same_seed_same_weights_different_seed_different():
    a, b, c = QuadraModel(50, seed=9), QuadraModel(50, seed=9), QuadraModel(50, seed=10)
    assert torch.equal(a.networks.nn1.fc1.weight, b.networks.nn1.fc1.weight)
    assert torch.equal(a.field0, b.field0)
    assert not torch.equal(a.networks.nn1.fc1.weight, c.networks.nn1.fc1.weight)
    # The global RNG is not disturbed by creating a model.
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    QuadraModel(10, seed=4)
    assert torch.equal(torch.rand(3), expected)


def test_state_key_keeps_negative_zero():
    assert state_key(-0.001) == "-0.0"
    assert state_key(0.001) == "0.0"
    assert state_key(0.456) == "0.46"
