"""The rank stage's serving kernel: DIN + DCN-v2 + deep MLP in numpy, item side done once.

Two rewrites make one request cheap (n candidates, L liked items, d = rank.dim):

- **DIN's attention MLP** reads [k, q, k - q, k * q] for every (candidate q, history item k)
  pair. Its first layer is linear, so with W = [Wk | Wq | Wd | Wp] by those blocks,

      W [k, q, k - q, k * q] = (Wk + Wd) k + (Wq - Wd) q + Wp (k * q),

  and the first two terms are rows per item, precomputed for the whole vocabulary; only the
  (n, L, d) product term is left per pair (instead of an (n, L, 4d) input).
- **The first layers** (DCN-v2's first cross layer and the deep MLP's first layer) read
  x0 = [fields | dense]. Every field but the interest is an embedding row, so its part of
  W x0 is a row of a precomputed table: the item id, genres and year parts per catalogue
  item (one table), the popularity and age buckets per bucket, the user fields once per
  request. Per pair only the interest (d) and the dense inputs remain a product.

- **The serving moment**: every request made after train reads the item statistics
  (popularity and age buckets, like rate) at the end of train, so for that moment the item
  fields' part of the first layers and their x0 columns are one table over the catalogue
  (`RankFeatureSpace.catalogue_at`, built with the kernel); a request gathers its rows.
  A request at an earlier moment computes them for its candidates.

The later cross layer, the rest of the MLP and the heads are plain products of (n, width).

- **Low-rank cross layers** (rank.cross_rank = r, W = U V^T): a later layer is the two thin
  products (x @ V) @ U^T, 2 r width multiply-adds a pair instead of width^2 (the largest
  single cost of a request when full-rank). The first layer is composed back into its full
  (width, width) matrix U V^T when the kernel is built and stacked as before: the item part
  of x0 @ W^T is a table either way, and what a pair still multiplies, its interest and
  dense columns (d + m rows), costs (d + m) width through the composed matrix against
  (d + m) r + r width through the factors (precomputing only V^T x0's item part would
  leave the r width product of U per pair, the larger term).
DIEN reads the sequence through GRUs; its kernel is the batch call (`BatchKernel`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from recfunnel.blend import blend_key
from recfunnel.kernel import Dense, Row, UserRequest, dense_layers, run_layers
from recfunnel.nn import N_HISTORY_BUCKETS
from recfunnel.rank.features import SCORE_OF
from recfunnel.types import Candidates

if TYPE_CHECKING:
    from recfunnel.rank.stage import RankStage

_USER_FIELDS = {"gender": "gender", "age_group": "age", "occupation": "occupation", "zip": "zip"}


# The largest (V, h, d + 1) table of DIN's key blocks kept per vocabulary (ML-1M's: ~8 MB).
_KEY_BLOCK_BYTES = 64 * 2**20


def _np(tensor: Any) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().numpy(), dtype=np.float32)


def _logsigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(np.float32(0), -x)


@dataclass(frozen=True)
class _LowRank:
    """A low-rank cross map x -> (x @ v) @ u + bias: v (width, r), u (r, width) float32
    C-contiguous, bias (width,), the transposes of `LowRankCross`'s V^T and U."""

    v: np.ndarray
    u: np.ndarray
    bias: np.ndarray

    @classmethod
    def of(cls, layer: Any) -> _LowRank:
        return cls(_np(layer.v.weight).T.copy(), _np(layer.u.weight).T.copy(), _np(layer.u.bias))

    def composed(self) -> Dense:
        """The same map as one (width, width) `Dense`, V U^T summed in float64 and rounded
        once (the first layer's stacked tables need the full matrix)."""
        weight = (self.v.astype(np.float64) @ self.u.astype(np.float64)).astype(np.float32)
        return Dense(weight, self.bias, relu=False)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x (n, width) -> (n, width)."""
        y = (x @ self.v) @ self.u
        y += self.bias
        return y


class RankKernel:
    """`RankStage.__call__` for one request with a DIN (or no-sequence) model."""

    def __init__(self, stage: RankStage) -> None:
        stage.check_fitted()
        model, space = stage.model_, stage.features_
        if model.evolution is not None:
            raise ValueError("RankKernel serves DIN models; DIEN uses the batch call")
        self.stage, self.space = stage, space
        d = stage.config.dim
        self.dim = d
        self.item_table = _np(model.item_id.weight)  # (V, d)
        self.tables = {name: _np(t.weight) for name, t in model.categorical.items()}
        self.user_table = _np(model.user_id.weight) if model.user_id is not None else None
        self.genre_weight = _np(model.genres.weight).T  # (18, d): multi-hot -> genres field
        self.dense_names = stage.dense_
        # float32, as the batch path's `float32 column - python float` computes (NumPy 2
        # casts a Python scalar to the array's dtype), so one (n, m) expression gives the
        # column-by-column values bit for bit.
        self.dense_mean = np.array(
            [stage.dense_stats_[n][0] for n in self.dense_names], dtype=np.float32
        )
        self.dense_std = np.array(
            [stage.dense_stats_[n][1] for n in self.dense_names], dtype=np.float32
        )

        # x0's column blocks, in the model's field order (RankModel.logits_and_aux).
        order = ["item", "genres", *model.categorical]
        if self.user_table is not None:
            order.append("user")
        if model.attention is not None:
            order.append("interest")
        self.block = {name: slice(i * d, (i + 1) * d) for i, name in enumerate(order)}
        self.width = len(order) * d + len(self.dense_names)
        dense_cols = slice(len(order) * d, self.width)

        # The first layers, stacked side by side: x0 @ first = [cross_0 pre | deep_0 pre].
        # A low-rank first cross layer enters as its composed full matrix (module docstring).
        self.cross: list[Dense | _LowRank] = [
            Dense(_np(layer.weight).T.copy(), _np(layer.bias), relu=False)
            if model.cross.rank is None
            else _LowRank.of(layer)
            for layer in model.cross.layers
        ]
        self.deep = dense_layers(model.deep) if len(model.deep) else []
        cross_first = self.cross[:1]
        if cross_first and isinstance(cross_first[0], _LowRank):
            cross_first = [cross_first[0].composed()]
        firsts = cross_first + ([self.deep[0]] if self.deep else [])
        first = np.concatenate([f.weight for f in firsts], axis=1)  # (width, out)
        self.first_bias = np.concatenate([f.bias for f in firsts])
        self.n_cross_out = self.width if self.cross else 0
        static_cols = np.r_[
            np.arange(self.block["item"].start, self.block["item"].stop),
            np.arange(self.block["genres"].start, self.block["genres"].stop),
            np.arange(self.block["year"].start, self.block["year"].stop),
        ]
        self.first_static = np.ascontiguousarray(first[static_cols])  # (3d, out)
        self.first_bucket = {
            name: self.tables[name] @ first[self.block[name]] for name in ("recent", "total", "age")
        }
        self.first_user_rows = np.r_[
            *(np.arange(self.block[n].start, self.block[n].stop) for n in self._user_blocks)
        ]
        self.first_user = np.ascontiguousarray(first[self.first_user_rows])
        # The user blocks are neighbours in x0 (gender .. history_length [, user]): one
        # slice to write a request's user fields, not a fancy-indexed scatter.
        rows = self.first_user_rows
        contiguous = np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows)))
        self.user_cols = slice(rows[0], rows[0] + len(rows)) if contiguous else rows
        # A request's user fields: (table, user-feature name) in _user_blocks order, the
        # history length's bucket table last but one (or last, without the user id).
        self.user_tables = [(self.tables[n], f) for n, f in _USER_FIELDS.items()]
        # Where each dense input comes from: the earlier stages' scores (by their names in
        # the Row), or a column of the request / item side (written by `row` itself).
        self.dense_scores = [
            (column, SCORE_OF.get(name, name))
            for column, name in enumerate(self.dense_names)
            if name in SCORE_OF or name.startswith("recall.")
        ]
        self.dense_own = {
            name: column
            for column, name in enumerate(self.dense_names)
            if name in ("item_like_rate", "affinity", "user_like_rate")
        }
        if len(self.dense_scores) + len(self.dense_own) != len(self.dense_names):
            raise ValueError(f"RankKernel cannot read every dense input of {self.dense_names}")
        self.first_interest = (
            np.ascontiguousarray(first[self.block["interest"]])
            if "interest" in self.block
            else None
        )
        self.first_dense = np.ascontiguousarray(first[dense_cols])
        self.out = Dense(_np(model.out.weight).T.copy(), _np(model.out.bias), relu=False)

        if model.attention is not None:  # DIN, rewritten (see the module docstring)
            (att1, att2) = dense_layers(model.attention.mlp)
            w = att1.weight  # (4d, h) rows by blocks [k, q, k - q, k * q]
            wk, wq, wd, wp = w[:d], w[d : 2 * d], w[2 * d : 3 * d], w[3 * d :]
            att_key = self.item_table @ (wk + wd) + att1.bias  # (V, h), bias folded in
            # The target's term (V, h); _interest gathers its rows and transposes them to the
            # (h, n) blocks of its (L, h, n) layout (a gather of columns of an (h, V) table
            # cost ~40 us a request, a third of the attention).
            self.att_query = np.ascontiguousarray(self.item_table @ (wq - wd))
            # Each vocab item as a key: row (j, :) holds k * Wp[:, j] and the key's own term,
            # the (h, d + 1) block _interest's product reads, (V, h, d + 1) float32 (~8 MB
            # for ML-1M). The same single float32 product per element as computing it per
            # request, so the interest is unchanged; a request gathers its L keys' blocks.
            # A larger vocabulary keeps the (V, h) key term and builds its L blocks per request.
            self.att_pair_t = np.ascontiguousarray(wp.T)  # (h, d)
            self.att_key = att_key
            self.att_key_block = (
                self._key_blocks(np.arange(len(self.item_table)))
                if len(self.item_table) * att_key.shape[1] * (d + 1) * 4 <= _KEY_BLOCK_BYTES
                else None
            )
            self.att_out_half = att2.weight[:, 0] * np.float32(0.5)  # (h,), see _interest
            self.att_out_bias = float(att2.bias[0])
        self.objective = stage.config.objective
        # The list's order: the score blended with the incoming order, as `select` sorts.
        self.prior_weight, self.logit_scale = stage.prior_weight_, stage.logit_scale_
        # The item side of the whole catalogue at the serving moment, the end of train: the
        # popularity and age buckets every request made after train reads (n_items, out) +
        # (n_items, 6d) float32, ~8 MB for ML-1M), so a request only gathers its rows.
        self.served_at = space.likes.end
        everything = np.arange(len(space.column_vocab))
        self.served = _ItemSide.build(self, space.catalogue_at(self.served_at), everything)

    def _static(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The static item fields [item id | genres | year] (n, 3d) of catalogue positions
        `rows` (n,) and their part of x0 @ first (n, out). Computed for the whole catalogue
        once (the serving-moment table), else for a request's candidates only, so no
        (n_items, out) table is kept beside the serving one (an ML-32M catalogue's is
        ~160 MB)."""
        space = self.space
        static = np.concatenate(
            [
                self.item_table[space.column_vocab[rows]],
                space.column_genres[rows] @ self.genre_weight,
                self.tables["year"][space.column_year[rows]],
            ],
            axis=1,
        )
        return static, static @ self.first_static

    @property
    def _user_blocks(self) -> list[str]:
        names = [*_USER_FIELDS, "history_length"]
        return names + (["user"] if self.user_table is not None else [])

    def _key_blocks(self, keys: np.ndarray) -> np.ndarray:
        """(L, h, d + 1) float32 for vocab slots `keys` (L,): [k * Wp[:, j] | the key's own
        term] per hidden unit j, the rows of _interest's product."""
        d = self.dim
        blocks = np.empty((len(keys), self.att_pair_t.shape[0], d + 1), dtype=np.float32)
        blocks[:, :, :d] = self.item_table[keys][:, None, :] * self.att_pair_t[None, :, :]
        blocks[:, :, d] = self.att_key[keys]
        return blocks

    def _interest(self, targets: np.ndarray, sequence: np.ndarray) -> np.ndarray:
        """DIN's pooled interest (n, d) of target vocab slots (n,) over the request's
        sequence (L,) of vocab slots (0 = padding, masked out as in TargetAttention)."""
        keys = sequence[sequence > 0]
        n, n_keys, d = len(targets), len(keys), self.dim
        if not n_keys:  # softmax over nothing, times a zero mask: a zero interest
            return np.zeros((n, d), dtype=np.float32)
        key_vectors = self.item_table[keys]  # (L, d)
        hidden = self.att_pair_t.shape[0]
        # The attention MLP's first layer for every (key l, unit j, target q), (L, h, n), as
        # ONE product (L * h, d + 1) @ (d + 1, n): row (l, j) holds k_l * Wp[:, j] and the
        # key's own term (precomputed per vocab item), column q holds the target's vector
        # and a 1. Keys first, so the target's own term (h, n) is added to contiguous
        # (h, n) blocks.
        blocks = self.att_key_block
        per_key = blocks[keys] if blocks is not None else self._key_blocks(keys)  # (L, h, d + 1)
        queries = np.empty((d + 1, n), dtype=np.float32)
        queries[:d] = self.item_table[targets].T
        queries[d] = 1.0
        product = (per_key.reshape(n_keys * hidden, d + 1) @ queries).reshape(n_keys, hidden, n)
        product += np.ascontiguousarray(self.att_query[targets].T)[None, :, :]
        # ReLU as x + |x| = 2 relu(x), exactly (a power of two), against half the output
        # weights: np.maximum is ~4x slower than abs + add on this (L, h, n) block.
        product += np.abs(product)
        scores = (self.att_out_half @ product).T  # (n, L)
        scores += self.att_out_bias
        scores -= scores.max(axis=1, keepdims=True)
        weights = np.exp(scores)
        weights /= weights.sum(axis=1, keepdims=True)
        return (weights @ key_vectors).astype(np.float32)

    def __call__(self, request: UserRequest, candidates: Candidates, **_: Any) -> Candidates:
        return self.row(request, Row.of(candidates)).candidates()

    def _items_at(self, now: int, items: np.ndarray) -> _ItemSide:
        """The item side of the candidates (n,) for a request at `now`: from the tables of
        the serving moment when `now` reads the statistics at the end of train (every
        request made after train, i.e. every served one), else from `pairs`."""
        if min(now, self.space.likes.end) == self.served_at:
            return self.served.gather(items)
        features = self.space.catalogue_at(now)
        return _ItemSide.build(self, features, items)

    def row(self, request: UserRequest, row: Row, **_: Any) -> Row:
        """scores["rank"] and scores["rank.prob"] of every candidate, the list re-sorted by
        the ranking score (N,) -> (N,) (blended with the incoming order: rank.prior_weight)."""
        stage, space = self.stage, self.space
        req = space.one_request(
            request.user_id, request.items, request.ratings, request.timestamps, request.now
        )
        valid = row.valid
        full = bool(valid.all())  # no padding: read the arrays without boolean copies
        items = row.items if full else row.items[valid]
        n = len(items)
        side = self._items_at(request.now, items)
        # `pairs`' affinity, computed the same way: cosine of the profile and each genre row.
        profile = req.profile[:1]  # (1, 18)
        norm = np.linalg.norm(profile, axis=1) * side.genre_norm
        affinity = (profile * side.genres).sum(1) / np.maximum(norm, 1e-9)
        # The dense inputs (n, m), written column by column straight from their sources:
        # assigning a float64 score into the float32 block rounds it as `astype` does, so
        # the values are the batch path's float32 columns without a copy of each.
        raw = np.empty((n, len(self.dense_names)), dtype=np.float32)
        for column, score in self.dense_scores:
            raw[:, column] = row.scores[score] if full else row.scores[score][valid]
        own = self.dense_own
        if "item_like_rate" in own:
            raw[:, own["item_like_rate"]] = side.like_rate
        if "affinity" in own:
            raw[:, own["affinity"]] = affinity
        if "user_like_rate" in own:
            raw[:, own["user_like_rate"]] = req.like_rate[0]
        # The batch path's expression and dtypes: (float32 - mean) / std in float32.
        dense = (raw - self.dense_mean) / self.dense_std
        bucket = min(int(req.lengths[0]).bit_length(), N_HISTORY_BUCKETS - 1)
        user_fields = req.user
        user_parts = [table[user_fields[f][0]] for table, f in self.user_tables]
        user_parts.append(self.tables["history_length"][bucket])
        if self.user_table is not None:
            user_parts.append(self.user_table[user_fields["user"][0]])
        user = np.concatenate(user_parts)  # (5d or 6d,) in _user_blocks order

        # x0 @ first, from the precomputed tables (see the module docstring).
        first = side.first  # (n, out), the item fields' part, a fresh array
        first += user @ self.first_user + self.first_bias
        first += dense @ self.first_dense
        interest = None
        if self.first_interest is not None:
            interest = self._interest(side.vocab, req.sequence[0])
            first += interest @ self.first_interest

        parts = []
        if self.cross:  # x0 itself is read by every cross layer
            x0 = np.empty((n, self.width), dtype=np.float32)
            x0[:, : self.block["age"].stop] = side.fields
            x0[:, self.user_cols] = user
            if interest is not None:
                x0[:, self.block["interest"]] = interest
            x0[:, self.width - dense.shape[1] :] = dense
            x = x0 * first[:, : self.n_cross_out] + x0
            for layer in self.cross[1:]:
                x = x0 * layer(x) + x
            parts.append(x)
        if self.deep:
            hidden = first[:, self.n_cross_out :]
            np.maximum(hidden, 0, out=hidden)
            parts.append(run_layers(self.deep[1:], hidden))
        logits = self.out(np.concatenate(parts, axis=1))

        if self.objective == "like":
            rank = like = logits[:, 0].astype(np.float64)
            watch = np.zeros(n)
        else:
            watch32 = _logsigmoid(logits[:, 0])
            rank = (watch32 + _logsigmoid(logits[:, 1])).astype(np.float64)
            like, watch = logits[:, 1].astype(np.float64), watch32.astype(np.float64)
        like = like / stage.temperature_ + stage.bias_  # score_pairs' two steps, in order
        prob = np.exp(watch - np.logaddexp(0.0, -like))
        scored = row.with_score(stage.name, rank, valid).with_score(
            f"{stage.name}.prob", prob, valid
        )
        if self.prior_weight:  # `RankStage.select`'s key over the row's (N,) positions
            key = blend_key(scored.scores[stage.name], self.prior_weight, self.logit_scale)
            scored = scored.with_score(stage.name, key if full else key[valid], valid)
        if full:
            # `Row.top` of an unpadded list, without its padding masks: the same stable
            # descending order of the ranking score, so the same permutation.
            return scored.take(np.argsort(-scored.scores[stage.name], kind="stable"))
        return scored.top(stage.name, len(scored.items))  # `RankStage.select`: re-sorted


@dataclass(frozen=True)
class _ItemSide:
    """What the rank kernel reads of the candidates' items, (n,) rows each: first (n, out)
    their part of x0 @ first (the item id, genres, year and the three popularity / age
    buckets), fields (n, 6d) those fields' x0 columns, like_rate (n,) float32, vocab (n,)
    slots, genres (n, 18) and genre_norm (n,) for the affinity."""

    first: np.ndarray
    fields: np.ndarray
    like_rate: np.ndarray
    vocab: np.ndarray
    genres: np.ndarray
    genre_norm: np.ndarray

    @classmethod
    def build(cls, kernel: RankKernel, features: dict[str, np.ndarray], rows: np.ndarray):
        """The item side of catalogue positions `rows` from `catalogue_at`'s features. The
        first-layer sum is added in the batch kernel's order (static, recent, total, age)."""
        buckets = {name: features[name][rows] for name in ("recent", "total", "age")}
        static, first = kernel._static(rows)
        for name, bucket in buckets.items():
            first += kernel.first_bucket[name][bucket]
        fields = np.concatenate(
            [static] + [kernel.tables[name][b] for name, b in buckets.items()], axis=1
        )
        return cls(
            first,
            fields,
            features["item_like_rate"][rows],
            features["item"][rows],
            kernel.space.column_genres[rows],
            features["genre_norm"][rows],
        )

    def gather(self, items: np.ndarray) -> _ItemSide:
        """The rows of catalogue positions `items` (n,) of a whole-catalogue side (fresh
        arrays, so the caller may add into `first`)."""
        return _ItemSide(
            self.first[items],
            self.fields[items],
            self.like_rate[items],
            self.vocab[items],
            self.genres[items],
            self.genre_norm[items],
        )
