"""The pre-rank stage's serving kernel: its MLP in numpy, the item side of layer 1 done once.

The first layer reads x = [u | v | u * v | s]; split its weight by those blocks,

    W1 x = Wu u + Wv v + Wuv (u * v) + Ws s,

and Wv v is a fixed row per catalogue item: computed once for the whole catalogue (the first
time the kernel sees the recall item vectors) and then gathered. Per request only Wu u (once),
the u * v block (one (N, d) @ (d, h) product) and the scalars remain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from recfunnel.blend import blend_key
from recfunnel.errors import ConfigError
from recfunnel.kernel import Row, UserRequest, dense_layers, run_layers
from recfunnel.types import Candidates

if TYPE_CHECKING:
    from recfunnel.prerank.stage import PreRankStage


class PreRankKernel:
    """`PreRankStage.__call__` for one request: score every candidate, keep the best."""

    def __init__(self, stage: PreRankStage) -> None:
        stage.check_fitted()
        self.stage = stage
        first, *self.rest = dense_layers(stage.model_.mlp)
        d = stage.dim_
        weight = first.weight  # (3d + n_scalars, hidden)
        self.w_user, self.w_item = weight[:d], weight[d : 2 * d]
        self.w_cross = np.ascontiguousarray(weight[2 * d : 3 * d])
        self.w_scalars = np.ascontiguousarray(weight[3 * d :])
        self.bias, self.relu = first.bias, first.relu
        self.scalars = stage.scalars  # the scores it reads, fixed once fitted
        self.mean = np.asarray(stage.scalar_mean_)
        self.std = np.asarray(stage.scalar_std_)
        # The kept list's order: the same blend with the incoming order as `select`'s.
        self.prior_weight, self.logit_scale = stage.prior_weight_, stage.logit_scale_
        self._items: np.ndarray | None = None  # the item vectors the table was built from
        self._item_part: np.ndarray | None = None  # (n_items, hidden): Wv v per item

    def _item_table(self, items: np.ndarray) -> np.ndarray:
        if self._items is not items:  # the recall kernel hands on one array for every call
            self._item_part = items @ self.w_item
            self._items = items
        assert self._item_part is not None
        return self._item_part

    def __call__(
        self, request: UserRequest, candidates: Candidates, *, keep: int | None = None, **_: Any
    ) -> Candidates:
        return self.row(request, Row.of(candidates), keep=keep).candidates()

    def row(self, request: UserRequest, row: Row, *, keep: int | None = None, **_: Any) -> Row:
        """Every candidate's logit as scores["prerank"], then the best `keep` (N,) -> (keep,)
        by the logit blended with the incoming order (`PreRankStage.select`)."""
        emb = row.embeddings
        if emb is None:
            raise ConfigError("prerank reads the recall embeddings: the candidates carry none")
        valid = row.valid
        full = bool(valid.all())  # no padding: read the arrays without boolean copies
        items = row.items if full else row.items[valid]
        user = emb.users[0]
        vectors = emb.items[items]  # (n, d)
        names = self.scalars
        columns = [
            np.asarray(row.scores[n] if full else row.scores[n][valid], np.float64) for n in names
        ]
        raw = np.stack(columns, 1) if columns else np.zeros((len(items), 0))
        scalars = ((raw - self.mean) / self.std).astype(np.float32)
        hidden = self._item_table(emb.items)[items]
        hidden += user @ self.w_user + self.bias
        hidden += (vectors * user) @ self.w_cross
        hidden += scalars @ self.w_scalars
        if self.relu:
            np.maximum(hidden, 0, out=hidden)
        logits = run_layers(self.rest, hidden)[:, 0]
        name = self.stage.name
        scored = row.with_score(name, logits.astype(np.float64), valid)
        key = blend_key(scored.scores[name], self.prior_weight, self.logit_scale)
        return scored.top_by(key, keep or self.stage.config.keep)
