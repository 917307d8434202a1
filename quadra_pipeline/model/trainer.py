"""One batch of the original's training loop (spec section 6), and its metrics.

State carried across batches: the core field psi and its history, the queue of recent text
vectors, the cluster count k, and the learning-rate accelerator with its streak. The
original slept 2 s whenever var(psi) > 0.05; we never sleep and count those events.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from .features import text_features
from .quadra import QuadraModel, TrainResult

HISTORY_LENGTH = 50
TEXT_QUEUE_LENGTH = 100
RESONANCE_WINDOW = 10
TEXT_EPOCHS = 5
TEXT_VECTORS = 10
BATCH_EPOCHS = 3
BATCH_VECTORS = 20
DROPOUT = 0.045
NOISE_INTENSITY = 0.15
THROTTLE_VARIANCE = 0.05


@dataclass(frozen=True)
class BatchMetrics:
    """The per-batch metrics of spec section 6 (one `training_metrics` row, one MLflow step)."""

    batch_number: int
    loss: float
    reward: float
    reward_per_item: float
    variance: float
    field_mean: float
    learning_rate: float
    k_clusters: int
    speedup_factor: float
    resonance: float
    stability: float
    throttle_events: int
    texts: int
    batch_seconds: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


class FieldTrainer:
    """Runs batches of text through a `QuadraModel`, keeping the field state between them."""

    def __init__(
        self,
        model: QuadraModel,
        base_learning_rate: float | None = None,
        train_items: Callable[[QuadraModel, Tensor, int], TrainResult] = QuadraModel.train_items,
    ) -> None:
        self.model = model
        self._train_items = train_items  # the batched step; the benchmark swaps in the reference
        self.base_learning_rate = base_learning_rate if base_learning_rate is not None else model.learning_rate
        self.psi = 0.1 * model.randn(model.field_size)
        self.history: deque[Tensor] = deque(maxlen=HISTORY_LENGTH)
        self.text_queue: deque[Tensor] = deque(maxlen=TEXT_QUEUE_LENGTH)
        self.k = 3
        self.accelerator = 1.0
        self.streak = 0
        self.batches_done = 0

    def step(self, texts: Sequence[str]) -> BatchMetrics:
        """Train on one batch of usable texts (at least one) and return its metrics."""
        if not texts:
            raise ValueError("a batch needs at least one text (empty batches are skipped)")
        started = time.perf_counter()
        model = self.model
        n = model.field_size

        # 1. Per text: train on fresh vectors plus the text, then move the core field.
        throttle_events = 0
        for text in texts:
            features = text_features(text, n)
            self.text_queue.append(features)
            items = torch.cat((model.fresh_vectors(TEXT_VECTORS), features.unsqueeze(0)))
            self._train_items(model, items, TEXT_EPOCHS)
            u = torch.stack(tuple(self.text_queue)).mean(0)
            self.psi = 0.9 * self.psi + 0.1 * u * (1 + 0.2 * math.sin(0.1 * len(self.history)))
            self.history.append(self.psi)
            if float(self.psi.var()) > THROTTLE_VARIANCE:
                throttle_events += 1

        # 2. Resonance of the recent field history.
        if len(self.history) < 2:
            resonance = 0.0
        else:
            recent = torch.stack(tuple(self.history)[-RESONANCE_WINDOW:])
            resonance = 1.0 / (1.0 + float(recent.std()))

        # 3. The noisy field (for metrics and the accelerator only) and its stability.
        noisy = self.psi + NOISE_INTENSITY * self.psi.std() * model.randn(n)
        t = torch.linspace(0, 2 * math.pi, n)
        waves = torch.sin(t) + torch.sin(2.5 * t) + torch.sin(5 * t)
        noisy = noisy + noisy.std() * 0.0075 * waves
        noisy_var = float(noisy.var())
        stability = 1.0 / (1.0 + noisy_var)

        # 4. Cluster count k follows resonance and the field's entropy-like spread.
        magnitude = noisy.abs()
        spread = float(-(magnitude * torch.log(magnitude + 1e-10)).sum())
        kappa = min(max(noisy_var * spread * 0.01, 0.0), 1.0)
        target = int(2 + 18 * resonance * kappa)
        self.k = min(max(self.k + int(0.15 * (target - self.k)), 2), 20)

        # 5. Batch update on dropped-out fresh vectors plus the batch's first text.
        vectors = model.fresh_vectors(BATCH_VECTORS)
        vectors = vectors * (model.rand(BATCH_VECTORS, n) > DROPOUT)
        result = self._train_items(model, model.items_for(vectors, texts[0]), BATCH_EPOCHS)

        # 6. The accelerator scales the learning rate from the next batch on.
        if result.reward > 0.7 and stability > 0.6:
            self.streak += 1
            self.accelerator = min(10.0, self.accelerator * (1 + 0.1 * math.sqrt(self.streak)))
        else:
            self.streak = max(0, self.streak - 1)
            self.accelerator = max(1.0, 0.95 * self.accelerator)
        model.set_learning_rate(self.base_learning_rate * self.accelerator)

        self.batches_done += 1
        return BatchMetrics(
            batch_number=self.batches_done,
            loss=result.loss,
            reward=result.reward,
            reward_per_item=result.reward_per_item,
            variance=float(self.psi.var()),
            field_mean=float(self.psi.mean()),
            learning_rate=model.learning_rate,
            k_clusters=self.k,
            speedup_factor=self.accelerator,
            resonance=resonance,
            stability=stability,
            throttle_events=throttle_events,
            texts=len(texts),
            batch_seconds=time.perf_counter() - started,
        )
