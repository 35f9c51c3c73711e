"""Merging recall channels' lists into one candidate list per request.

Each channel proposes its own top-K. The merged list takes every channel's candidates in
order of the channels' priority (the order of `recall.channels`), drops repeats, and keeps
the first k; each candidate remembers the rank at which every channel proposed it
(`Candidates.channels`), so the later stages can weigh the channels. With one channel the
merged list is that channel's list.
"""

from __future__ import annotations

import numpy as np

from recfunnel.types import Candidates


def merge_lists(lists: dict[str, Candidates], k: int) -> Candidates:
    """One list (B, <= k) from the channels' lists (B, k_c) each, in `lists`' order. Scores
    of a channel are kept where that channel proposed the item (NaN elsewhere)."""
    names = list(lists)
    if len(names) == 1:
        only = lists[names[0]]
        return only if only.items.shape[1] <= k else only.reorder(_first(only.items.shape, k))
    first = lists[names[0]]
    b = len(first)
    rows = []
    for r in range(b):
        seen: dict[int, int] = {}
        for name in names:
            for item in lists[name].items[r]:
                if item >= 0 and item not in seen and len(seen) < k:
                    seen[int(item)] = len(seen)
        rows.append(list(seen))
    width = max((len(row) for row in rows), default=0)
    items = np.full((b, width), -1, dtype=np.int64)
    for r, row in enumerate(rows):
        items[r, : len(row)] = row
    scores, channels = {}, {}
    for name in names:
        part = lists[name]
        for key, value in part.scores.items():
            scores[key] = _spread(items, part.items, value, np.nan)
        for key, value in part.channels.items():
            channels[key] = _spread(items, part.items, value, 0)
    embeddings = next((p.embeddings for p in lists.values() if p.embeddings is not None), None)
    return Candidates(items, scores, channels, embeddings)


def _first(shape: tuple[int, int], k: int) -> np.ndarray:
    return np.broadcast_to(np.arange(k), (shape[0], k)).copy()


def _spread(items: np.ndarray, source: np.ndarray, values: np.ndarray, fill: float) -> np.ndarray:
    """values (B, M) given for `source` (B, M) items, laid out over `items` (B, N)."""
    out = np.full(items.shape, fill, dtype=np.asarray(values).dtype if fill == 0 else np.float64)
    for r in range(len(items)):
        where = {int(item): j for j, item in enumerate(source[r]) if item >= 0}
        for c, item in enumerate(items[r]):
            j = where.get(int(item))
            if j is not None:
                out[r, c] = values[r, j]
    return out
