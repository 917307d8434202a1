"""Text to vector, the original's way (spec section 7): counts of the first N distinct tokens."""

from __future__ import annotations

from collections import Counter

import torch
from torch import Tensor


def text_features(text: str, field_size: int) -> Tensor:
    """Whitespace tokens, counted; distinct tokens sorted by code point, first N kept, zero-padded.

    No tokenizer, vocabulary or embedding: this is the encoding the model was trained with.
    """
    counts = Counter(text.split())
    values = [float(counts[token]) for token in sorted(counts)[:field_size]]
    vector = torch.zeros(field_size)
    if values:
        vector[: len(values)] = torch.tensor(values)
    return vector
