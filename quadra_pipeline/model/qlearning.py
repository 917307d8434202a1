"""Tabular Q-learning over the three actions (spec section 4)."""

from __future__ import annotations

from collections.abc import Mapping

ACTIONS = ("update_field", "adjust_syntropy", "penalize_variance")
EPSILON = 0.1
ALPHA = 0.1
GAMMA = 0.9


def state_key(mean: float) -> str:
    """The state of a vector: its mean rounded to 2 places, as a string ("-0.0" != "0.0")."""
    return str(round(mean, 2))


class QTable:
    """Q values per state key; an unseen state has Q = 0 for every action."""

    def __init__(self, values: Mapping[str, list[float]] | None = None) -> None:
        self.values: dict[str, list[float]] = {k: list(v) for k, v in (values or {}).items()}

    def __len__(self) -> int:
        return len(self.values)

    def q(self, state: str) -> list[float]:
        return self.values.get(state, [0.0, 0.0, 0.0])

    def greedy(self, state: str) -> int:
        """argmax over actions, the first action on ties."""
        q = self.q(state)
        best = 0
        for action in (1, 2):
            if q[action] > q[best]:
                best = action
        return best

    def choose(self, state: str, explore_draw: float, random_action: int) -> int:
        """epsilon-greedy, with the random draws supplied by the caller (one RNG for everything)."""
        return random_action if explore_draw < EPSILON else self.greedy(state)

    def update(self, state: str, action: int, reward: float, next_state: str) -> None:
        """Q[s][a] += alpha * (r + gamma * max_a' Q[s'][a'] - Q[s][a])."""
        target = reward + GAMMA * max(self.q(next_state))
        row = self.values.setdefault(state, [0.0, 0.0, 0.0])
        row[action] += ALPHA * (target - row[action])

    def walk(
        self,
        start: str,
        losses: list[list[float]],
        means: list[list[float]],
        explore_draws: list[float],
        random_actions: list[int],
        total: float = 0.0,
    ) -> tuple[list[int], float]:
        """One epoch's walk (spec section 4): from state `start`, item i takes an action by
        `choose`, earns r = 1 / (1 + losses[i][a]), updates Q towards `start` (the spec's quirk),
        and moves to key(means[i][a]). Returns the actions and `total` plus the rewards (added
        one by one, so a running sum over epochs is the same float as adding them in a loop).

        A plain `QTable` runs the rules inline (the same arithmetic as `choose`, `greedy` and
        `update`, without their calls per item); a subclass that overrides any of them (or `q`)
        goes through the methods.
        """
        chosen: list[int] = []
        state = start
        cls = type(self)
        overridden = any(getattr(cls, name) is not getattr(QTable, name) for name in ("choose", "update", "greedy", "q"))
        if overridden:
            for i, draw in enumerate(explore_draws):
                action = self.choose(state, draw, random_actions[i])
                reward = 1.0 / (1.0 + losses[i][action])
                self.update(state, action, reward, start)
                total += reward
                state = state_key(means[i][action])
                chosen.append(action)
            return chosen, total
        values = self.values
        for i, draw in enumerate(explore_draws):
            row = values.get(state)
            if draw < EPSILON:
                action = random_actions[i]
            elif row is None:
                action = 0
            else:  # argmax, the first action on ties
                action = 1 if row[1] > row[0] else 0
                if row[2] > row[action]:
                    action = 2
            reward = 1.0 / (1.0 + losses[i][action])
            target_row = values.get(start)
            target = reward + GAMMA * (max(target_row) if target_row is not None else 0.0)
            if row is None:
                row = values[state] = [0.0, 0.0, 0.0]
            row[action] += ALPHA * (target - row[action])
            total += reward
            state = state_key(means[i][action])
            chosen.append(action)
        return chosen, total

    # The original's checkpoint format: {state: {action name: value}}.
    def to_dict(self) -> dict[str, dict[str, float]]:
        return {s: dict(zip(ACTIONS, q)) for s, q in self.values.items()}

    @classmethod
    def from_dict(cls, table: Mapping[str, Mapping[str, float]]) -> "QTable":
        return cls({str(s): [float(row.get(a, 0.0)) for a in ACTIONS] for s, row in table.items()})
