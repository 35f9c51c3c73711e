"""The three retrieval objectives the recall stage can train with.

All take L2-normalised (or raw) tower outputs and the model's temperature. Worked examples
live in tests/test_recall_losses.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sampled_softmax_loss(
    users: torch.Tensor,
    positives: torch.Tensor,
    positive_items: torch.Tensor,
    log_q: torch.Tensor,
    temperature: float,
    negatives: torch.Tensor | None = None,
    negative_log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax over in-batch negatives (plus optional shared random ones), logQ-corrected.

    users (B, d), positives (B, d): row b is a (user, liked item) pair; the other rows' items
    are b's negatives. positive_items (B,) item indices, to mask accidental hits (the same
    item as another row's positive is not a negative). log_q (B,): log of the expected number
    of times each positive item is drawn into a batch as a negative; subtracting it (Yi et al.,
    2019) undoes the popularity bias of in-batch sampling, so the model estimates the full
    softmax. negatives (R, d) with negative_log_q (R,): extra uniformly drawn items.
    """
    logits = users @ positives.T / temperature - log_q[None, :]  # (B, B)
    same = positive_items[:, None] == positive_items[None, :]
    eye = torch.eye(len(users), dtype=torch.bool, device=users.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    if negatives is not None:
        assert negative_log_q is not None
        extra = users @ negatives.T / temperature - negative_log_q[None, :]  # (B, R)
        logits = torch.cat([logits, extra], dim=1)
    target = torch.arange(len(users), device=users.device)
    return F.cross_entropy(logits, target)


def bpr_loss(
    users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Bayesian personalised ranking: -log sigmoid(s(u, pos) - s(u, neg)), averaged.

    users (B, d), positives (B, d), negatives (B, n, d) -> scalar.
    """
    pos = (users * positives).sum(-1, keepdim=True) / temperature  # (B, 1)
    neg = torch.einsum("bd,bnd->bn", users, negatives) / temperature  # (B, n)
    return -F.logsigmoid(pos - neg).mean()


def bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Pointwise binary cross-entropy on logits (N,) with labels (N,) in {0, 1}."""
    return F.binary_cross_entropy_with_logits(logits, labels)
