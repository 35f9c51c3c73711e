"""The two-tower (DSSM) retrieval model: a pure `nn.Module` built from sizes and a config.

    user tower: [user id | gender | age | occupation | zip digit | history length bucket
                 | mean of the history's item-id embeddings]  -> MLP -> u (out_dim)
    item tower: [item id | genre multi-hot projection | release-year bucket
                 | recent and all-time like-share buckets (causal)] -> MLP -> v
    score(u, v) = <u, v> / temperature   (u, v L2-normalised when `normalize`)

The two towers never see each other's inputs, so item vectors can be computed once and put
in an ANN index, and a user's top-K is a nearest-neighbour search. The history's item
embeddings are the item tower's id embeddings (shared), so a user who liked an item moves
towards it. A user without history (cold) is served by the demographic inputs alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recfunnel.data.schema import GENRES, N_OCCUPATIONS
from recfunnel.features import N_SHARE_BUCKETS, N_YEAR_BUCKETS
from recfunnel.nn import N_HISTORY_BUCKETS, history_bucket, init_embeddings, mlp


@dataclass(frozen=True)
class TowerSizes:
    """Vocabulary sizes (unknown slot 0 included) the towers are built for."""

    n_users: int
    n_items: int


class TwoTower(nn.Module):
    """Two-tower model. Shapes: B users or items, H total history events of a batch."""

    def __init__(
        self,
        sizes: TowerSizes,
        *,
        dim: int = 64,
        hidden: tuple[int, ...] = (128,),
        out_dim: int = 64,
        use_user_id: bool = True,
        normalize: bool = True,
        temperature: float = 0.05,
        dropout: float = 0.0,
        use_popularity: bool = True,
    ) -> None:
        super().__init__()
        self.use_user_id = use_user_id
        self.use_popularity = use_popularity
        self.normalize = normalize
        self.temperature = temperature
        small = max(4, dim // 4)
        # padding_idx=0: unknown ids embed to zero and never train.
        self.item_id = nn.Embedding(sizes.n_items, dim, padding_idx=0)
        self.user_id = nn.Embedding(sizes.n_users, dim, padding_idx=0) if use_user_id else None
        self.gender = nn.Embedding(3, small)
        self.age = nn.Embedding(8, small)
        self.occupation = nn.Embedding(N_OCCUPATIONS + 1, small)
        self.zip = nn.Embedding(11, small)
        self.history_length = nn.Embedding(N_HISTORY_BUCKETS, small)
        self.genres = nn.Linear(len(GENRES), dim, bias=False)
        self.year = nn.Embedding(N_YEAR_BUCKETS + 1, small)
        self.recent_likes = nn.Embedding(N_SHARE_BUCKETS, small) if use_popularity else None
        self.total_likes = nn.Embedding(N_SHARE_BUCKETS, small) if use_popularity else None
        user_in = dim * (2 if use_user_id else 1) + 5 * small
        item_in = 2 * dim + small * (3 if use_popularity else 1)
        self.user_mlp = mlp([user_in, *hidden, out_dim], dropout)
        self.item_mlp = mlp([item_in, *hidden, out_dim], dropout)
        # A learned offset turns cosine / temperature into a calibrated logit for BCE.
        self.bias = nn.Parameter(torch.zeros(()))
        init_embeddings(self, std=0.1)

    def user_vectors(
        self,
        user: torch.Tensor,
        gender: torch.Tensor,
        age: torch.Tensor,
        occupation: torch.Tensor,
        zip_digit: torch.Tensor,
        history: torch.Tensor,
        offsets: torch.Tensor,
    ) -> torch.Tensor:
        """Users (B,) int64 features, history (H,) item indices, offsets (B,) -> (B, out_dim).

        User b's history is history[offsets[b]:offsets[b + 1]] (an EmbeddingBag layout).
        """
        lengths = torch.diff(offsets, append=torch.tensor([history.numel()], device=offsets.device))
        # Sum / sqrt(n) pooling: a mean would shrink a long history's vector towards zero
        # (random directions cancel), a sum would let it explode; sqrt(n) keeps its scale.
        weights = torch.repeat_interleave(lengths.clamp(min=1).float().rsqrt(), lengths)
        pooled = F.embedding_bag(
            history, self.item_id.weight, offsets, mode="sum", per_sample_weights=weights
        )
        parts = [
            pooled,
            self.gender(gender),
            self.age(age),
            self.occupation(occupation),
            self.zip(zip_digit),
            self.history_length(history_bucket(lengths)),
        ]
        if self.user_id is not None:
            parts.insert(0, self.user_id(user))
        return self._finish(self.user_mlp(torch.cat(parts, dim=1)))

    def item_vectors(
        self,
        item: torch.Tensor,
        genres: torch.Tensor,
        year: torch.Tensor,
        recent: torch.Tensor | None = None,
        total: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Items (B,) int64, genres (B, 18) float, year buckets (B,), and when the model uses
        popularity the recent / total like-count buckets (B,) -> (B, out_dim)."""
        parts = [self.item_id(item), self.genres(genres), self.year(year)]
        if self.recent_likes is not None and self.total_likes is not None:
            if recent is None or total is None:
                raise ValueError("this model reads popularity: pass recent and total buckets")
            parts += [self.recent_likes(recent), self.total_likes(total)]
        return self._finish(self.item_mlp(torch.cat(parts, dim=1)))

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.normalize else x

    def logits(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Row-wise logits of matching users (B, d) and items (B, d) -> (B,)."""
        return (users * items).sum(-1) / self.temperature
