"""Building blocks shared by the funnel's models (two-tower, pre-rank, rank).

Each is written once here so that the models read as a list of their parts; every block is
exactly what the models used to build inline (same layers, same order, same init), so a
seeded model starts from the same weights whichever model builds it.
"""

from __future__ import annotations

import torch
from torch import nn

N_HISTORY_BUCKETS = 12  # log2 buckets of a history length: 0 = empty, 11 = >= 1024


def mlp(
    sizes: list[int], dropout: float | None = None, *, last_activation: bool = False
) -> nn.Sequential:
    """Linear layers sizes[0] -> ... -> sizes[-1], each followed by ReLU (and Dropout when
    `dropout` is given), except the output layer unless `last_activation`."""
    layers: list[nn.Module] = []
    n = len(sizes) - 1
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < n - 1 or last_activation:
            layers.append(nn.ReLU())
            if dropout is not None:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def init_embeddings(model: nn.Module, std: float) -> None:
    """Every nn.Embedding of `model` drawn from N(0, std^2), its padding row (if any) zero.

    One small scale for every field, so no input drowns the others at the start (PyTorch's
    default N(0, 1) would make a 3-value demographic 20x louder than item ids)."""
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()


def history_bucket(lengths: torch.Tensor) -> torch.Tensor:
    """(B,) int64 lengths -> (B,) int64 buckets: 0 for none, else 1 + floor(log2(len))."""
    buckets = torch.floor(torch.log2(lengths.clamp(min=1).float())).long() + 1
    return torch.where(lengths > 0, buckets, 0).clamp(max=N_HISTORY_BUCKETS - 1)
