"""The shipped text classifier, its sentences as ids, and its forward pass written out from the embedding."""

from __future__ import annotations

from typing import Any

import numpy as np

from gradsal.reference_models.train_text import SAMPLE_SENTENCES, encode, vocabulary

PAD = 0


def sample_ids(count: int = 2) -> np.ndarray:
    """Ids ``(count, L)`` of the shipped sample sentences, padded with [PAD] to the longest."""
    return encode(SAMPLE_SENTENCES[:count], vocabulary())


def forward_from_embedding(torch: Any, net: Any, embedded: Any, ids: Any) -> Any:
    """TextClassifier's logits from its embedding, written out here (no hooks): an independent reference."""
    mask = (ids != net.pad_id).unsqueeze(-1).to(embedded.dtype)
    features = torch.tanh(torch.nn.functional.conv1d(embedded.transpose(1, 2), net.conv.weight, net.conv.bias,
                                                     padding=net.conv.padding[0])).transpose(1, 2)
    pooled = (features * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    return pooled @ net.head.weight.T + net.head.bias
