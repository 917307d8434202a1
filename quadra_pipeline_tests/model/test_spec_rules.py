"""The spec's rules, recomputed independently: Q-learning (section 4) and one batch (section 6).

Other tests compare the fast path with the reference path; both share these rules, so here
each rule is derived again from the spec's text, with numpy where arithmetic is involved.
"""

import math

import numpy as np
import pytest
import torch

from quadra_pipeline.model import FieldTrainer, QTable, QuadraModel, TrainResult, state_key, text_features
from quadra_pipeline.model.trainer import HISTORY_LENGTH, TEXT_QUEUE_LENGTH

# Q-learning ----------------------------------------------------------------------------------


def test_epsilon_greedy_explores_below_0_1_and_breaks_ties_to_the_first_action():
    table = QTable({"s": [1.0, 3.0, 3.0], "t": [2.0, 2.0, 2.0]})
    assert table.choose("s", 0.0999, random_action=0) == 0  # explore: the random action
    assert table.choose("s", 0.1, random_action=0) == 1  # exploit: argmax, first of the tie 1/2
    assert table.choose("t", 0.5, random_action=2) == 0
    assert table.choose("unseen", 0.5, random_action=2) == 0  # unseen state: Q = 0 for all


def test_update_rule_uses_the_fixed_reference_state():
    table = QTable({"s": [1.0, 0.0, 0.0], "s0": [0.0, 4.0, 2.0]})
    table.update("s", 0, reward=0.8, next_state="s0")
    # Q[s][a] += alpha * (r + gamma * max Q[s0] - Q[s][a]) = 1 + 0.1 * (0.8 + 0.9 * 4 - 1)
    assert table.q("s")[0] == pytest.approx(1.0 + 0.1 * (0.8 + 3.6 - 1.0))
    table.update("new", 2, reward=0.5, next_state="nowhere")
    assert table.q("new") == [0.0, 0.0, pytest.approx(0.05)]


class Recording(QTable):
    def __init__(self):
        super().__init__()
        self.visits = []
        self.targets = []

    def choose(self, state, explore_draw, random_action):
        action = super().choose(state, explore_draw, random_action)
        self.visits.append((state, action))
        return action

    def update(self, state, action, reward, next_state):
        self.targets.append((next_state, reward))
        super().update(state, action, reward, next_state)


def test_the_walk_starts_at_key_field0_and_follows_the_chosen_fields():
    model = QuadraModel(16, seed=11)
    model.q_table = Recording()
    items = model.items_for(model.fresh_vectors(6) * 5, "words of the text item , last")
    assert torch.equal(items[-1], text_features("words of the text item , last", 16))  # text comes last
    with torch.no_grad():
        fields = model.action_fields(items)
    losses = fields.var(-1) + (fields.mean(-1) - 0.5).abs()
    model.train_items(items, epochs=1)
    start = state_key(float(model.field0.mean()))
    visits = model.q_table.visits
    assert visits[0][0] == start
    for i in range(1, len(items)):
        previous_action = visits[i - 1][1]
        assert visits[i][0] == state_key(float(fields[i - 1, previous_action].mean()))
    for (next_state, reward), (i, (_, action)) in zip(model.q_table.targets, enumerate(visits)):
        assert next_state == start  # the spec's quirk: the target always looks at key(field0)
        assert reward == pytest.approx(1 / (1 + float(losses[i, action])), rel=1e-6)


# One batch (spec section 6) ----------------------------------------------------------------------


def fake_train(reward):
    calls = []

    def train_items(model, items, epochs):
        calls.append((items.clone(), epochs))
        return TrainResult(reward, reward / len(items), 0.25, len(items), (len(items) * epochs, 0, 0))

    return train_items, calls


def test_one_batch_recomputed_from_the_spec():
    n = 40
    texts = ["alpha beta gamma alpha delta , epsilon", "zeta eta theta iota kappa lambda mu nu", "xi omicron pi pi pi rho"]
    train_items, calls = fake_train(reward=15.0)
    trainer = FieldTrainer(QuadraModel(n, seed=3), train_items=train_items)
    draws = torch.Generator()
    draws.set_state(trainer.model.generator.get_state())  # replay the model's random stream
    psi = trainer.psi.double().numpy().copy()

    metrics = trainer.step(texts)

    history, queue, throttle = [], [], 0
    for i, text in enumerate(texts):
        fresh = 0.1 * torch.randn(10, n, generator=draws)
        x = text_features(text, n)
        queue.append(x.double().numpy())
        assert torch.equal(calls[i][0][:10], fresh) and torch.equal(calls[i][0][10], x) and calls[i][1] == 5
        u = np.mean(queue, axis=0)
        psi = 0.9 * psi + 0.1 * u * (1 + 0.2 * math.sin(0.1 * len(history)))
        history.append(psi)
        throttle += psi.var(ddof=1) > 0.05
    resonance = 1 / (1 + np.stack(history[-10:]).std(ddof=1))
    noise = torch.randn(n, generator=draws).double().numpy()
    p = psi + 0.15 * psi.std(ddof=1) * noise
    t = np.linspace(0, 2 * np.pi, n)
    p = p + p.std(ddof=1) * 0.0075 * (np.sin(t) + np.sin(2.5 * t) + np.sin(5 * t))
    stability = 1 / (1 + p.var(ddof=1))
    kappa = np.clip(p.var(ddof=1) * -(np.abs(p) * np.log(np.abs(p) + 1e-10)).sum() * 0.01, 0, 1)
    k = min(max(3 + int(0.15 * (int(2 + 18 * resonance * kappa) - 3)), 2), 20)
    vectors = 0.1 * torch.randn(20, n, generator=draws)
    kept = torch.rand(20, n, generator=draws) > 0.045
    batch_items, batch_epochs = calls[-1]
    assert batch_epochs == 3 and len(calls) == len(texts) + 1
    assert torch.equal(batch_items[:20], vectors * kept)
    assert torch.equal(batch_items[20], text_features(texts[0], n))  # the batch's first text, last
    assert 0 < (batch_items[:20] == 0).float().mean() < 0.1  # ~4.5% dropped, no rescaling

    assert metrics.variance == pytest.approx(psi.var(ddof=1), rel=1e-5)
    assert metrics.field_mean == pytest.approx(psi.mean(), rel=1e-5, abs=1e-7)
    assert metrics.resonance == pytest.approx(resonance, rel=1e-5)
    assert metrics.stability == pytest.approx(stability, rel=1e-5)
    assert metrics.k_clusters == k
    assert metrics.throttle_events == throttle
    assert metrics.reward == 15.0 and metrics.texts == 3 and metrics.batch_number == 1
    # Accelerator: R = 15 > 0.7 and stability > 0.6 -> streak 1, a = 1 * (1 + 0.1 * sqrt(1)).
    assert stability > 0.6 and metrics.speedup_factor == pytest.approx(1.1)
    assert metrics.learning_rate == pytest.approx(0.0011)


def test_resonance_is_zero_before_two_history_entries_and_windows_are_bounded():
    train_items, _ = fake_train(reward=15.0)
    trainer = FieldTrainer(QuadraModel(12, seed=1), train_items=train_items)
    assert trainer.step(["only one text here, long enough"]).resonance == 0.0
    for _ in range(30):
        trainer.step(["some more text , long enough", "and another row of words", "third row of text here", "fourth"])
    assert len(trainer.history) == HISTORY_LENGTH == 50
    assert len(trainer.text_queue) == TEXT_QUEUE_LENGTH == 100


def test_accelerator_decays_when_the_batch_does_not_pass():
    train_items, _ = fake_train(reward=0.5)  # R <= 0.7
    trainer = FieldTrainer(QuadraModel(12, seed=1), train_items=train_items)
    trainer.accelerator, trainer.streak = 4.0, 2
    metrics = trainer.step(["a text that is long enough"])
    assert trainer.streak == 1
    assert metrics.speedup_factor == pytest.approx(3.8)
    trainer.accelerator = 1.02
    assert trainer.step(["a text that is long enough"]).speedup_factor == 1.0  # never below 1
