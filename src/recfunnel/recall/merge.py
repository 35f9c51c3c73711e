"""Merging recall channels' lists into one candidate list per request.

Each channel proposes its own top-K. The merged list keeps every candidate once, at most k
per request, and remembers the rank at which every channel proposed it
(`Candidates.channels`) and each channel's score (NaN where that channel did not propose it),
so the later stages can weigh the channels. Two orders:

- **round_robin**: every channel's first item, then every channel's second, and so on,
  channels in the order of `recall.channels` (equal quotas);
- **rrf**: reciprocal-rank fusion (Cormack et al., 2009), fused(i) = sum over the channels
  that proposed i of w_c / (rrf_k + rank), w_c the channel's weight (1 each unless given:
  `recall.rrf_weights`, chosen in training); ties go to the smaller catalogue position; an
  item that only weight-0 channels proposed is not fused in;
- **quota**: per-channel quotas, the way a product reserves slots for a channel: channel c
  places its best `quotas[c]` items that no earlier channel placed, the rest of the k slots
  go by fusion, and the list is in fused order (`quota_merge`).

With one channel the merged list is that channel's list. Everything is vectorised over the
batch: one sort of all (request, item) proposals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from recfunnel.types import Candidates


def merge_lists(
    lists: dict[str, Candidates],
    k: int,
    *,
    how: Literal["round_robin", "rrf", "quota"] = "round_robin",
    rrf_k: int = 60,
    quotas: Sequence[int] = (),
    weights: Sequence[float] | None = None,
) -> Candidates:
    """One list (B, k) from the channels' lists (B, k_c) each, in `lists`' order; -1 pads
    a row with fewer than k distinct candidates. `quotas` (one per channel) for "quota";
    `weights` (one >= 0 per channel, None: all 1) for "rrf"."""
    if how == "quota":
        return quota_merge(lists, k, quotas, rrf_k=rrf_k)
    names = list(lists)
    if len(names) == 1:
        only = lists[names[0]]
        if only.items.shape[1] <= k:
            return only
        return only.reorder(np.broadcast_to(np.arange(k), (len(only), k)).copy())
    b = len(lists[names[0]])
    row, item, ch, rk = _proposals(lists)
    span = int(item.max()) + 1 if len(item) else 1
    key = row * span + item

    if how == "round_robin":
        order = np.lexsort((ch, rk, row))  # by request, then rank, then channel order
        _, first = np.unique(key[order], return_index=True)
        chosen = order[np.sort(first)]  # each pair's first proposal, in merged order
        m_row, m_item = row[chosen], item[chosen]
    else:
        unique, inverse = np.unique(key, return_inverse=True)
        # w_c / (rrf_k + rank): with w_c = 1.0 the same float64 division as unweighted RRF.
        share = 1.0 if weights is None else np.asarray(weights, dtype=np.float64)[ch]
        fused = np.bincount(inverse, weights=share / (rrf_k + rk))
        live = fused > 0  # proposed by a channel of weight > 0 (every item when unweighted)
        unique, fused = unique[live], fused[live]
        u_row, u_item = unique // span, unique % span
        order = np.lexsort((u_item, -fused, u_row))  # by request, fused score, position
        m_row, m_item = u_row[order], u_item[order]

    # Place within each request's merged sequence; keep the first k.
    starts = np.searchsorted(m_row, np.arange(b))
    place = np.arange(len(m_row)) - starts[m_row]
    keep = place < k
    out = np.full((b, k), -1, dtype=np.int64)  # always k wide, so that batches stack
    out[m_row[keep], place[keep]] = m_item[keep]

    merged_key = np.where(out >= 0, np.arange(b)[:, None] * span + out, -1)
    scores, channels = {}, {}
    for name in names:
        part = lists[name]
        p_row, p_col = np.nonzero(part.valid)
        p_key = p_row * span + part.items[p_row, p_col]
        sort = np.argsort(p_key, kind="stable")
        p_key = p_key[sort]
        at = np.clip(np.searchsorted(p_key, merged_key), 0, max(len(p_key) - 1, 0))
        found = (merged_key >= 0) & (len(p_key) > 0)
        if len(p_key):
            found &= p_key[at] == merged_key
        source = (p_row[sort][at], p_col[sort][at]) if len(p_key) else None
        for key_name, value in part.scores.items():
            spread = np.full(out.shape, np.nan)
            if source is not None:
                spread[found] = value[source][found]
            scores[key_name] = spread
        for key_name, value in part.channels.items():
            spread_rank = np.zeros(out.shape, dtype=np.int64)
            if source is not None:
                spread_rank[found] = value[source][found]
            channels[key_name] = spread_rank
    embeddings = next((p.embeddings for p in lists.values() if p.embeddings is not None), None)
    return Candidates(out, scores, channels, embeddings)


def _proposals(
    lists: dict[str, Candidates],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every (request, item) proposal of the channels, channel by channel in `lists`' order,
    each row-major: request rows, catalogue positions, channel indices, 1-based ranks (n,)."""
    rows, items, channel, rank = [], [], [], []
    for c, part in enumerate(lists.values()):
        r, col = np.nonzero(part.valid)
        rows.append(r)
        items.append(part.items[r, col])
        channel.append(np.full(len(r), c))
        rank.append(col + 1)
    row, item = np.concatenate(rows).astype(np.int64), np.concatenate(items).astype(np.int64)
    return row, item, np.concatenate(channel), np.concatenate(rank)


class WeightedFusion:
    """`merge_lists(how="rrf")`'s top lists for many weightings of the same channel lists
    (`RecallStage.choose_weights`), with the per-call work cut to one bincount and one row
    sort: the proposals are grouped once, each request's distinct items laid out in
    ascending position along a row of a (B, width) table. A stable sort of each row by
    -fused then breaks ties by the smaller position, as the merge does, so the lists are
    the merge's."""

    def __init__(self, lists: dict[str, Candidates], rrf_k: int) -> None:
        row, item, self.channel, rank = _proposals(lists)
        self.offset = rrf_k + rank  # the merge's rrf_k + rank
        span = int(item.max()) + 1 if len(item) else 1
        unique, self.inverse = np.unique(row * span + item, return_inverse=True)
        u_row = unique // span
        n = len(next(iter(lists.values())))
        starts = np.searchsorted(u_row, np.arange(n))
        slot = np.arange(len(unique)) - starts[u_row]
        width = int(slot.max()) + 1 if len(slot) else 1
        self.cell = (u_row, slot)
        self.items = np.full((n, width), -1, dtype=np.int64)
        self.items[self.cell] = unique % span

    def top(self, weights: Sequence[float], cutoff: int) -> np.ndarray:
        """(B, cutoff) the lists fused with `weights` (one per channel), -1 padding."""
        share = np.asarray(weights, dtype=np.float64)[self.channel] / self.offset
        fused = np.bincount(self.inverse, weights=share)
        table = np.full(self.items.shape, -np.inf)
        table[self.cell] = np.where(fused > 0, fused, -np.inf)  # weight-0-only: not fused in
        order = np.argsort(-table, axis=1, kind="stable")[:, :cutoff]
        top = np.take_along_axis(self.items, order, axis=1)
        top = np.where(np.take_along_axis(table, order, axis=1) > -np.inf, top, -1)
        if top.shape[1] < cutoff:  # fewer distinct proposals than the cutoff: pad
            top = np.pad(top, ((0, 0), (0, cutoff - top.shape[1])), constant_values=-1)
        return top


def quota_merge(
    lists: dict[str, Candidates], k: int, quotas: Sequence[int], *, rrf_k: int = 60
) -> Candidates:
    """Per-channel quotas (see the module docstring): channels in `lists`' order, channel c
    keeps its best `quotas[c]` items not already kept; free slots are filled by the fused
    order; the kept items are listed in fused order, at most k (the earliest fused first
    when the quotas add up to more than k)."""
    names = list(lists)
    if len(quotas) != len(names) or min(quotas, default=0) < 0:
        raise ValueError(f"one quota >= 0 per channel ({len(names)}), got {list(quotas)}")
    width = sum(c.items.shape[1] for c in lists.values())
    union = merge_lists(lists, width, how="rrf", rrf_k=rrf_k)  # every candidate, fused order
    b = len(union)
    order = np.full((b, k), -1, dtype=np.int64)
    for row in range(b):  # a few hundred items per row: a plain loop is clear and fast enough
        kept: set[int] = set()
        for name, quota in zip(names, quotas, strict=True):
            own = [int(i) for i in lists[name].items[row] if i >= 0 and int(i) not in kept]
            kept.update(own[:quota])
        items = union.items[row]
        valid = items >= 0
        chosen = valid & np.isin(items, list(kept))
        # The kept items first (up to k), then the best-fused others; both in fused order.
        columns = np.sort(np.r_[np.flatnonzero(chosen)[:k], np.flatnonzero(valid & ~chosen)][:k])
        order[row, : len(columns)] = columns
    return union.reorder(order)
