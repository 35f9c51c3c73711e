"""The pre-rank model: a small MLP over the recall vectors and the earlier stages' scores.

x = [u | v | u * v | scalars (standardised)]  ->  MLP  ->  logit
"""

from __future__ import annotations

import torch
from torch import nn

from recfunnel.nn import mlp


class PreRankMLP(nn.Module):
    """(user (n, d), item (n, d), scalars (n, k)) -> logits (n,)."""

    def __init__(self, dim: int, hidden: tuple[int, ...], n_scalars: int) -> None:
        super().__init__()
        self.mlp = mlp([3 * dim + n_scalars, *hidden, 1])

    def forward(
        self, user: torch.Tensor, item: torch.Tensor, scalars: torch.Tensor
    ) -> torch.Tensor:
        return self.mlp(torch.cat([user, item, user * item, scalars], dim=1)).squeeze(1)
