"""The rank model: a deep CTR model, a pure `nn.Module` built from sizes and a few numbers.

    fields (each an embedding of size d):
        item id | genres (projection) | release year | recent / all-time like share
        | days in catalogue | gender | age | occupation | zip digit | history length
        | [user id] | DIN interest: attention over the liked-items sequence, keyed by the target
    dense: recall logit | pre-rank logit | genre affinity | user / item like rate
           | [each recall channel's score and reciprocal rank, with several channels]
    x0 = [fields | dense]
    cross (DCN-v2):  x_{l+1} = x0 * (W_l x_l + b_l) + x_l        explicit feature crosses
    deep:            MLP(x0)                                      implicit interactions
    logits = W . [x_L | deep] + b       one per head (see RankConfig.objective)

DIN (Zhou et al. 2018) pools the behaviour sequence with weights that depend on the target
item, so "liked Alien and Toy Story" counts Alien when scoring Aliens and Toy Story when
scoring Toy Story 2. DCN-v2 (Wang et al. 2021) learns bounded-degree crosses such as
"recent popularity x young user" explicitly instead of hoping the MLP finds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recfunnel.data.schema import GENRES, N_OCCUPATIONS
from recfunnel.features import N_SHARE_BUCKETS, N_YEAR_BUCKETS
from recfunnel.nn import N_HISTORY_BUCKETS, history_bucket, init_embeddings, mlp
from recfunnel.rank.features import DENSE, N_AGE_BUCKETS


@dataclass(frozen=True)
class RankSizes:
    """Vocabulary sizes (unknown slot 0 included)."""

    n_users: int
    n_items: int


class TargetAttention(nn.Module):
    """DIN's activation unit: weights (n, L) from [key, query, key - query, key * query]."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = mlp([4 * dim, hidden, 1])

    def forward(self, keys: torch.Tensor, query: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """keys (n, L, d), query (n, d), mask (n, L) bool -> pooled interest (n, d)."""
        q = query[:, None, :].expand_as(keys)
        scores = self.mlp(torch.cat([keys, q, keys - q, keys * q], dim=-1)).squeeze(-1)
        # Softmax over the real positions only; a user without history pools to zero.
        weights = torch.softmax(scores.masked_fill(~mask, -1e9), dim=1) * mask
        return torch.einsum("nl,nld->nd", weights, keys)


class CrossNetwork(nn.Module):
    """DCN-v2's full-rank cross layers: x_{l+1} = x0 * (W_l x_l + b_l) + x_l."""

    def __init__(self, width: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class RankModel(nn.Module):
    """Shapes: n pairs, L sequence length. See the module docstring for the architecture."""

    def __init__(
        self,
        sizes: RankSizes,
        *,
        dim: int = 16,
        deep: tuple[int, ...] = (256, 128),
        cross_layers: int = 2,
        attention_hidden: int = 32,
        use_din: bool = True,
        use_user_id: bool = False,
        dense: tuple[str, ...] = DENSE,
        dropout: float = 0.1,
        heads: int = 1,
    ) -> None:
        super().__init__()
        self.use_din, self.dense = use_din, dense
        self.item_id = nn.Embedding(sizes.n_items, dim, padding_idx=0)
        self.user_id = nn.Embedding(sizes.n_users, dim, padding_idx=0) if use_user_id else None
        self.genres = nn.Linear(len(GENRES), dim, bias=False)
        self.categorical = nn.ModuleDict(
            {
                "year": nn.Embedding(N_YEAR_BUCKETS + 1, dim),
                "recent": nn.Embedding(N_SHARE_BUCKETS, dim),
                "total": nn.Embedding(N_SHARE_BUCKETS, dim),
                "age": nn.Embedding(N_AGE_BUCKETS, dim),
                "gender": nn.Embedding(3, dim),
                "age_group": nn.Embedding(8, dim),
                "occupation": nn.Embedding(N_OCCUPATIONS + 1, dim),
                "zip": nn.Embedding(11, dim),
                "history_length": nn.Embedding(N_HISTORY_BUCKETS, dim),
            }
        )
        self.attention = TargetAttention(dim, attention_hidden) if use_din else None
        n_fields = 2 + len(self.categorical) + int(use_din) + int(use_user_id)
        width = n_fields * dim + len(dense)
        self.cross = CrossNetwork(width, cross_layers)
        self.deep = mlp([width, *deep], dropout, last_activation=True)
        self.out = nn.Linear(width + (deep[-1] if deep else 0), heads)
        init_embeddings(self, std=0.05)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch: "item", "year", "recent", "total", "age", "gender", "age_group",
        "occupation", "zip", "user" (n,) int64; "lengths" (n,) history lengths; "genres" (n, 18);
        "sequence" (n, L) int64 (0 = padding); one (n,) float per dense name -> logits
        (n, heads)."""
        target = self.item_id(batch["item"])
        fields = [target, self.genres(batch["genres"])]
        for name, table in self.categorical.items():
            if name == "history_length":
                fields.append(table(history_bucket(batch["lengths"])))
            else:
                fields.append(table(batch[name]))
        if self.user_id is not None:
            fields.append(self.user_id(batch["user"]))
        if self.attention is not None:
            sequence = batch["sequence"]
            fields.append(self.attention(self.item_id(sequence), target, sequence > 0))
        dense = [batch[name][:, None] for name in self.dense]
        x0 = torch.cat(fields + dense, dim=1)
        parts = [self.cross(x0)]
        if len(self.deep):
            parts.append(self.deep(x0))
        return self.out(torch.cat(parts, dim=1))
