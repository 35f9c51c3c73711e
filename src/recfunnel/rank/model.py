"""The rank model: a deep CTR model, a pure `nn.Module` built from sizes and a few numbers.

    fields (each an embedding of size d):
        item id | genres (projection) | release year | recent / all-time like share
        | days in catalogue | gender | age | occupation | zip digit | history length
        | [user id] | interest: the liked-items sequence read against the target item,
                      by DIN (attention pooling) or DIEN (GRU + AUGRU), see rank.interest
    dense: recall logit | pre-rank logit | genre affinity | user / item like rate
           | [each recall channel's score and reciprocal rank, with several channels]
    x0 = [fields | dense]
    cross (DCN-v2):  x_{l+1} = x0 * (W_l x_l + b_l) + x_l        explicit feature crosses
                     (W_l = U_l V_l^T of rank rank.cross_rank when it is set)
    deep:            MLP(x0)                                      implicit interactions
    logits = W . [x_L | deep] + b       one per head (see RankConfig.objective)

DIN (Zhou et al. 2018) pools the behaviour sequence with weights that depend on the target
item, so "liked Alien and Toy Story" counts Alien when scoring Aliens and Toy Story when
scoring Toy Story 2. DIEN (Zhou et al. 2019) reads the same sequence in time order instead of
as a bag: an interest extractor GRU turns the embedded behaviours e_1..e_T (oldest first) into
interest states h_1..h_T, trained by an auxiliary loss to tell the next real behaviour e_{t+1}
from a sampled item (so each h_t is a summary of the taste *at* step t, not only whatever helps
the click head); then an AUGRU runs over h_1..h_T with its update gate scaled by the attention
a_t of h_t on the target, so steps unrelated to the target barely move the state, and the last
state is the interest field. Padding and unknown items are dropped before the GRUs and never
move a state; a user without liked history gets a zero interest.

DCN-v2 (Wang et al. 2021) learns bounded-degree crosses such as "recent popularity x young
user" explicitly instead of hoping the MLP finds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
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


def chronological(sequence: torch.Tensor) -> torch.Tensor:
    """(n, L) int64 item slots, most recent first, 0 = padding or unknown item -> (n, L), the
    real slots oldest first and packed to the left, zeros after them.

    The features keep DIN's newest-first order (a bag needs none); the GRUs need time order,
    and with the real steps first, a padded step comes after every real one, so it cannot
    touch a real step's state (a causal GRU only looks back)."""
    n, length = sequence.shape
    position = torch.arange(length, device=sequence.device).expand(n, length)
    # Real slots sort by -position (the oldest, largest position, first); padding after them,
    # in its own order. A stable sort keeps ties (none among real slots) deterministic.
    key = torch.where(sequence > 0, -position, length + position)
    return sequence.gather(1, torch.argsort(key, dim=1, stable=True))


class AUGRUCell(nn.Module):
    """DIEN's GRU with attentional update gate: one step for a batch.

        r = sigmoid(W_r x + U_r h + b_r)               reset gate
        u = a * sigmoid(W_u x + U_u h + b_u)           update gate, scaled by the attention a
        h~ = tanh(W_h x + r * (U_h h) + b_h)
        h' = (1 - u) * h + u * h~

    With a = 0 the state is carried through unchanged, so a step the target does not attend
    to (or a padded one) is skipped, while its relevance still decides *how much* it counts.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.x2h = nn.Linear(input_size, 3 * hidden_size)
        self.h2h = nn.Linear(hidden_size, 3 * hidden_size)

    def forward(self, x: torch.Tensor, h: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """x (n, d_in), h (n, d), attention (n,) in [0, 1] -> the next state (n, d)."""
        x_r, x_u, x_h = self.x2h(x).chunk(3, dim=-1)
        h_r, h_u, h_h = self.h2h(h).chunk(3, dim=-1)
        reset = torch.sigmoid(x_r + h_r)
        update = attention[:, None] * torch.sigmoid(x_u + h_u)
        candidate = torch.tanh(x_h + reset * h_h)
        return (1 - update) * h + update * candidate


class InterestEvolution(nn.Module):
    """DIEN's interest layers: extractor GRU -> attention on the target -> AUGRU.

    The attention is the paper's bilinear one, a_t = softmax_t(h_t W e_target) over the real
    steps (DIN's activation unit, and so rank.attention_hidden, is not used here)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.extractor = nn.GRU(dim, dim, batch_first=True)
        self.attention = nn.Linear(dim, dim, bias=False)
        self.evolution = AUGRUCell(dim, dim)

    def forward(
        self, keys: torch.Tensor, query: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """keys (n, L, d) embedded behaviours, oldest first with the real steps packed to the
        left (see `chronological`); query (n, d) the target item; mask (n, L) bool, True at
        real steps -> (interest (n, d), the extracted states h_t (n, L', d), L' <= L: the
        steps up to the longest real history in the batch)."""
        # Steps after the longest history are padding for every row: skip them (the result
        # does not change; a batch of full histories still runs all L steps).
        steps = int(mask.sum(1).max()) if mask.numel() else 0
        keys, mask = keys[:, :steps], mask[:, :steps]
        n, d = query.shape
        h = query.new_zeros(n, d)
        if steps == 0:
            return h, keys
        # Padding is right of every real step, so the causal GRU's real states ignore it.
        states, _ = self.extractor(keys)
        scores = torch.einsum("nld,nd->nl", states, self.attention(query))
        weights = torch.softmax(scores.masked_fill(~mask, -1e9), dim=1) * mask
        for t in range(steps):  # L <= max_sequence (50): a loop over steps, batched over n
            step = self.evolution(states[:, t], h, weights[:, t])
            # A padded step keeps the state (its weight is 0 already; this makes it exact).
            h = torch.where(mask[:, t, None], step, h)
        return h, states


def next_behaviour_loss(
    states: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """DIEN's auxiliary loss: h_t should score the real next behaviour above a sampled one.

    states (n, L, d) extractor states h_t; positives, negatives (n, L, d) embeddings of the
    real behaviour at t + 1 and of a sampled item (row t pairs with h_t); mask (n, L) bool,
    True where both t and t + 1 are real steps -> the mean over those steps of
    BCE(h_t . e_{t+1}, 1) + BCE(h_t . e_neg, 0); 0 (with a gradient) when there is none."""
    pos = (states * positives).sum(-1)[mask]
    neg = (states * negatives).sum(-1)[mask]
    if pos.numel() == 0:
        return states.sum() * 0.0
    ones, zeros = torch.ones_like(pos), torch.zeros_like(neg)
    loss = F.binary_cross_entropy_with_logits(pos, ones, reduction="sum")
    loss = loss + F.binary_cross_entropy_with_logits(neg, zeros, reduction="sum")
    return loss / pos.numel()


class LowRankCross(nn.Module):
    """DCN-v2's low-rank cross map: x -> U (V^T x) + b, W = U V^T of rank r.

    (width, width) weights become (width, r) + (r, width), so a pair costs 2 r width
    multiply-adds instead of width^2; the paper finds r around width / 4 keeps the full-rank
    accuracy (the learned full-rank matrices are numerically low-rank)."""

    def __init__(self, width: int, rank: int) -> None:
        super().__init__()
        self.v = nn.Linear(width, rank, bias=False)  # V^T: (r, width)
        self.u = nn.Linear(rank, width)  # U: (width, r), and the layer's bias b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (n, width) -> U V^T x + b (n, width)."""
        return self.u(self.v(x))


class CrossNetwork(nn.Module):
    """DCN-v2's cross layers: x_{l+1} = x0 * (W_l x_l + b_l) + x_l, with W_l full-rank
    (width, width), or U_l V_l^T of rank `rank` (`LowRankCross`) when it is set."""

    def __init__(self, width: int, layers: int, rank: int | None = None) -> None:
        super().__init__()
        self.rank = rank
        self.layers = nn.ModuleList(
            nn.Linear(width, width) if rank is None else LowRankCross(width, rank)
            for _ in range(layers)
        )

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 (n, width) -> x_L (n, width)."""
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
        cross_rank: int | None = None,
        attention_hidden: int = 32,
        interest: Literal["din", "dien"] | None = "din",
        use_user_id: bool = False,
        dense: tuple[str, ...] = DENSE,
        dropout: float = 0.1,
        heads: int = 1,
    ) -> None:
        super().__init__()
        self.interest, self.dense = interest, dense
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
        # DIN's module keeps its name "attention", so runs saved before DIEN still load.
        self.attention = TargetAttention(dim, attention_hidden) if interest == "din" else None
        self.evolution = InterestEvolution(dim) if interest == "dien" else None
        n_fields = 2 + len(self.categorical) + int(interest is not None) + int(use_user_id)
        width = n_fields * dim + len(dense)
        self.cross = CrossNetwork(width, cross_layers, cross_rank)
        self.deep = mlp([width, *deep], dropout, last_activation=True)
        self.out = nn.Linear(width + (deep[-1] if deep else 0), heads)
        init_embeddings(self, std=0.05)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch: "item", "year", "recent", "total", "age", "gender", "age_group",
        "occupation", "zip", "user" (n,) int64; "lengths" (n,) history lengths; "genres" (n, 18);
        "sequence" (n, L) int64, most recent first (0 = padding); one (n,) float per dense name
        -> logits (n, heads)."""
        return self.logits_and_aux(batch, aux=False)[0]

    def logits_and_aux(
        self, batch: dict[str, torch.Tensor], *, aux: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits (n, heads) of `forward`, and DIEN's auxiliary next-behaviour loss (a
        scalar; 0 for DIN, without a sequence field, or when `aux` is False). Training adds
        the loss, weighted by rank.aux_loss_weight, to the heads' losses; its negatives are
        drawn from torch's global generator, so a seeded run repeats."""
        target = self.item_id(batch["item"])
        fields = [target, self.genres(batch["genres"])]
        for name, table in self.categorical.items():
            if name == "history_length":
                fields.append(table(history_bucket(batch["lengths"])))
            else:
                fields.append(table(batch[name]))
        if self.user_id is not None:
            fields.append(self.user_id(batch["user"]))
        aux_loss = target.new_zeros(())
        if self.attention is not None:
            sequence = batch["sequence"]
            fields.append(self.attention(self.item_id(sequence), target, sequence > 0))
        if self.evolution is not None:
            sequence = chronological(batch["sequence"])
            mask = sequence > 0
            interest, states = self.evolution(self.item_id(sequence), target, mask)
            fields.append(interest)
            if aux:
                aux_loss = self._next_behaviour_loss(states, sequence[:, : states.shape[1]])
        dense = [batch[name][:, None] for name in self.dense]
        x0 = torch.cat(fields + dense, dim=1)
        parts = [self.cross(x0)]
        if len(self.deep):
            parts.append(self.deep(x0))
        return self.out(torch.cat(parts, dim=1)), aux_loss

    def _next_behaviour_loss(self, states: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
        """states (n, L', d) extractor states, sequence (n, L') chronological item slots ->
        the auxiliary loss, each h_t against e_{t+1} and a uniformly sampled known item."""
        following = sequence[:, 1:]
        pairs = (sequence[:, :-1] > 0) & (following > 0)
        n_items = self.item_id.num_embeddings
        if n_items < 3 or not pairs.any():  # nothing to predict, or no item to sample
            return states.sum() * 0.0
        # Slots 1..n_items-1 (0 is padding / unknown); a draw equal to the real next item is
        # moved to another slot, so a negative is never the positive.
        drawn = torch.randint(1, n_items, following.shape, device=sequence.device)
        drawn = torch.where(drawn == following, drawn % (n_items - 1) + 1, drawn)
        return next_behaviour_loss(
            states[:, :-1], self.item_id(following), self.item_id(drawn), pairs
        )
