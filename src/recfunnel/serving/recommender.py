"""`Pipeline`: a trained run directory, loaded once, answering one user or a batch.

    pipeline = Pipeline.load("runs/default")
    rec = pipeline.recommend_for_user(42, topk_recall=200, topk_final=20, lambda_mmr=0.5)
    for item in rec.items: print(item.rank, item.title, item.scores["rank"])

One user is served by the fast path (`Funnel.serve`: each stage's numpy kernel on one
dense request, `recfunnel.kernel`), a batch by `Funnel.run`; both give the same lists.
A user's history is everything known when serving: their train and valid ratings (the
protocol's known history before test). A user with no rating at all goes through the same
funnel on demographics and item features alone ("cold"); an id that is not in users.dat gets
the most liked movies of train ("popularity"). Both are flagged in the result.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from recfunnel.data.dataset import MovieLens
from recfunnel.data.schema import ITEM, TIME, USER
from recfunnel.errors import ConfigError
from recfunnel.evaluation.baselines import Popularity
from recfunnel.evaluation.protocol import interaction_matrix
from recfunnel.funnel import STAGES, Funnel
from recfunnel.kernel import UserRequest
from recfunnel.rerank.stage import METHODS
from recfunnel.run import Run, load_run, read_manifest
from recfunnel.serving.trace import Catalogue, Trace, build_trace
from recfunnel.types import Candidates, History, Requests

Path_ = Literal["funnel", "cold", "popularity"]

BATCH_CHUNK = 1024  # users per funnel pass in a batch: bounds the working memory
MAX_BATCH = 100_000  # user ids one recommend_batch call returns lists for
VISITOR = 0  # the raw user id of an anonymous request: no users.dat row, so no demographics


@dataclass(frozen=True)
class RecommendedItem:
    """One final item: its 1-based place, ids and text, and every stage's score and place."""

    rank: int
    movie_id: int
    title: str
    genres: str
    scores: dict[str, float]
    positions: dict[str, int]


@dataclass(frozen=True)
class Recommendation:
    """The answer for one user. `path`: "funnel" (warm), "cold" (no rating yet: features
    only) or "popularity" (unknown id). `candidates`: list length after each stage."""

    user_id: int
    path: Path_
    items: list[RecommendedItem]
    ild: float
    candidates: dict[str, int] = field(default_factory=dict)

    @property
    def cold(self) -> bool:
        return self.path != "funnel"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cold"] = self.cold
        return out


def _user_ids(values: Any) -> np.ndarray:
    """(n,) int64 user ids from a sequence of integers; strings, floats, booleans and nested
    lists are refused rather than converted (int("1") or int(1.7) would hide a mistake)."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ConfigError(f"user ids must be a flat sequence of integers, got shape {array.shape}")
    if array.size and array.dtype.kind not in "iu":
        raise ConfigError(
            f"user ids must be integers, got {array.dtype} values such as {array[:3].tolist()}"
        )
    return array.astype(np.int64)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class Pipeline:
    """A loaded run plus the serving-time history of every user."""

    def __init__(self, run: Run, ml: MovieLens) -> None:
        self.run, self.ml, self.funnel = run, ml, run.funnel
        known = run.split.known_history("test")
        self.user_ids = np.sort(ml.users[USER].to_numpy().astype(np.int64))
        self._ratings = interaction_matrix(known, self.user_ids, self.funnel.item_ids)
        self._times = interaction_matrix(known, self.user_ids, self.funnel.item_ids, TIME)
        # The fast path reads one user's row straight from these arrays (no scipy slicing).
        if not (
            np.array_equal(self._ratings.indptr, self._times.indptr)
            and np.array_equal(self._ratings.indices, self._times.indices)
        ):
            raise ConfigError("known ratings and their times must share one sparsity pattern")
        movies = ml.items.set_index(ITEM).reindex(self.funnel.item_ids)
        self._titles = movies["title"].astype(str).to_numpy()
        self._genre_text = movies["genres"].astype(str).to_numpy()
        # The same per position as Python objects, so an answer's 20 items read list
        # entries instead of converting numpy scalars one by one.
        self._item_text = (
            self.funnel.item_ids.tolist(),
            [str(title) for title in self._titles],
            [str(text) for text in self._genre_text],
        )
        self._popular = Popularity().fit(run.split.train, self.funnel.item_ids)
        self._genres = ml.genre_matrix(self.funnel.item_ids).astype(np.float32)  # for ILD
        self.catalogue = Catalogue(
            self.funnel.item_ids,
            self._titles,
            [text.split("|") if text else [] for text in self._genre_text],
        )
        self._funnels: dict[str, Funnel] = {}  # the funnel with each re-rank method
        self._search: tuple[np.ndarray, np.ndarray] | None = None  # titles by popularity
        self._user_set: frozenset[int] | None = None

    @classmethod
    def load(
        cls, run_dir: str | Path, ml: MovieLens | None = None, device: str = "auto"
    ) -> Pipeline:
        """Load a run directory; `ml` defaults to `load_movielens()` of the run's data set
        (its manifest's `dataset`; env var or download). `device` (auto, cpu, cuda) is where
        its torch parts compute."""
        if ml is None:
            from recfunnel.data import load_movielens

            dataset = str(read_manifest(Path(run_dir)).get("dataset", "ml-1m"))
            ml = load_movielens(dataset=dataset, progress=False)
        return cls(load_run(Path(run_dir), ml, device), ml)

    def _defaults(self, topk_recall: Any, topk_final: Any, lambda_mmr: Any) -> tuple[Any, Any, Any]:
        config = self.run.config
        return (
            config.funnel.topk_recall if topk_recall is None else topk_recall,
            config.funnel.topk_final if topk_final is None else topk_final,
            self.funnel["rerank"].config.lambda_mmr if lambda_mmr is None else lambda_mmr,
        )

    def _check(self, topk_recall: Any, topk_final: Any, lambda_mmr: Any) -> tuple[int, int, float]:
        topk_recall = _positive_int(topk_recall, "topk_recall")
        topk_final = _positive_int(topk_final, "topk_final")
        if topk_final > topk_recall:
            raise ConfigError(
                f"topk_final ({topk_final}) cannot exceed topk_recall ({topk_recall})"
            )
        if topk_recall > len(self.funnel.item_ids):
            raise ConfigError(
                f"topk_recall must be <= {len(self.funnel.item_ids)} (the catalogue size), "
                f"got {topk_recall}"
            )
        if (
            isinstance(lambda_mmr, bool)
            or not isinstance(lambda_mmr, numbers.Real)
            or math.isnan(lambda_mmr)
            or not 0 <= lambda_mmr <= 1
        ):
            raise ConfigError(f"lambda_mmr must be a number in [0, 1], got {lambda_mmr!r}")
        return topk_recall, topk_final, float(lambda_mmr)

    def requests(self, user_ids: np.ndarray) -> Requests:
        """Requests of known users (users.dat ids), with their known history, as of now."""
        rows = np.searchsorted(self.user_ids, user_ids)
        history = History(self._ratings[rows], self._times[rows])
        return Requests.after_history(np.asarray(user_ids), history, self.funnel.now)

    def recommend_batch(
        self,
        user_ids: np.ndarray | list[int],
        *,
        topk_recall: int | None = None,
        topk_final: int | None = None,
        lambda_mmr: float | None = None,
        chunk_size: int = BATCH_CHUNK,
    ) -> dict[str, Candidates]:
        """Every stage's lists (see `Funnel.run`) for up to MAX_BATCH known users, run
        `chunk_size` users at a time so that working memory stays bounded. Arguments left
        None take the run's config (by default 200, 20 and the lambda chosen on valid when
        the run was trained). For more users, iterate
        over `recommend_chunks`, which never holds more than one chunk's lists."""
        ids = _user_ids(user_ids)
        if len(ids) > MAX_BATCH:
            raise ConfigError(
                f"recommend_batch takes at most {MAX_BATCH:,} user ids at once, got "
                f"{len(ids):,}; iterate over recommend_chunks(...) for more"
            )
        parts = [
            lists
            for _, lists in self.recommend_chunks(
                ids,
                topk_recall=topk_recall,
                topk_final=topk_final,
                lambda_mmr=lambda_mmr,
                chunk_size=chunk_size,
            )
        ]
        if len(parts) == 1:  # one chunk (every single-user call): nothing to stack
            return parts[0]
        return {stage: Candidates.concat([p[stage] for p in parts]) for stage in parts[0]}

    def recommend_chunks(
        self,
        user_ids: np.ndarray | list[int],
        *,
        topk_recall: int | None = None,
        topk_final: int | None = None,
        lambda_mmr: float | None = None,
        chunk_size: int = BATCH_CHUNK,
    ) -> Iterator[tuple[np.ndarray, dict[str, Candidates]]]:
        """(user ids (b,), every stage's lists) for consecutive chunks of `user_ids`: any
        number of users in memory bounded by `chunk_size`, time linear in their number.
        Every id is checked before the first chunk runs."""
        topk_recall, topk_final, lam = self._check(
            *self._defaults(topk_recall, topk_final, lambda_mmr)
        )
        chunk_size = _positive_int(chunk_size, "chunk_size")
        ids = _user_ids(user_ids)
        unknown = ids[~np.isin(ids, self.user_ids)]
        if unknown.size:
            raise ConfigError(f"unknown user ids (not in users.dat): {unknown[:5].tolist()}")
        keep = min(max(self.funnel.keep, topk_final), topk_recall)
        # An empty batch still makes one (empty) pass, so its lists have the usual widths.
        for start in range(0, max(len(ids), 1), chunk_size):
            chunk = ids[start : start + chunk_size]
            yield (
                chunk,
                self.funnel.run(
                    self.requests(chunk),
                    topk_recall=topk_recall,
                    keep=keep,
                    topk_final=topk_final,
                    lambda_mmr=lam,
                ),
            )

    def recommend_for_user(
        self,
        user_id: int,
        topk_recall: int | None = None,
        topk_final: int | None = None,
        lambda_mmr: float | None = None,
    ) -> Recommendation:
        """The final list for one user with titles, genres and each stage's score and place.
        Arguments left None take the run's config: with the default config, topk_recall=200,
        topk_final=20 and the lambda_mmr training chose on valid."""
        if isinstance(user_id, bool) or not isinstance(user_id, numbers.Integral):
            raise ConfigError(f"user_id must be an integer, got {user_id!r}")
        user_id = int(user_id)
        if user_id <= 0:
            raise ConfigError(
                f"user_id must be a positive id (users.dat ids start at 1), got {user_id}"
            )
        topk_recall, topk_final, lam = self._check(
            *self._defaults(topk_recall, topk_final, lambda_mmr)
        )
        if not self.has_user(user_id):
            return self._popular_list(user_id, topk_final)
        request = self.user_request(user_id)
        rows, _ = self.funnel.serve_rows(
            request,
            topk_recall=topk_recall,
            keep=min(max(self.funnel.keep, topk_final), topk_recall),
            topk_final=topk_final,
            lambda_mmr=lam,
        )
        cold = len(request.items) == 0
        final = rows["rerank"].items
        final = final[final >= 0]  # padding is always last
        # Each earlier stage's place (1-based; 0: not in its list) and score of every final
        # item: the stage's places scattered over the catalogue, then read at the k items,
        # instead of a (k, N) comparison. The array has one slot more than the catalogue:
        # padding's -1 writes that last slot, which no final item reads. A list holds an
        # item at most once, so each item has one place.
        n_items = len(self.funnel.item_ids)
        found = []
        for stage in ("recall", "prerank", "rank"):
            row = rows[stage]
            place_of = np.zeros(n_items + 1, dtype=np.int64)
            place_of[row.items] = np.arange(1, len(row.items) + 1)
            places = place_of[final]
            # (places - 1 is -1 for an item not in the list: a value that is never read.)
            found.append((stage, places.tolist(), row.scores[stage][places - 1].tolist()))
        items = []
        for index, position in enumerate(final.tolist()):
            scores, positions = {}, {}
            for stage, places, values in found:
                if places[index]:
                    positions[stage] = places[index]
                    scores[stage] = values[index]
            positions["rerank"] = index + 1
            items.append(self._item(index + 1, position, scores, positions))
        return Recommendation(
            user_id=user_id,
            path="cold" if cold else "funnel",
            items=items,
            ild=self._ild(final),
            candidates={stage: int(np.count_nonzero(rows[stage].valid)) for stage in STAGES},
        )

    def _item(
        self, rank: int, position: int, scores: dict[str, float], positions: dict[str, int]
    ) -> RecommendedItem:
        movie_ids, titles, genres = self._item_text
        return RecommendedItem(
            rank=rank,
            movie_id=movie_ids[position],
            title=titles[position],
            genres=genres[position],
            scores=scores,
            positions=positions,
        )

    def _ild(self, positions: np.ndarray) -> float:
        """`metrics.ild_at_k` of one list, with the genre rows' unit vectors computed once
        (`_unit_genres`) instead of per call: the same float64 arithmetic in the same
        order (rows added one by one, then ild_at_k's pair-sum formula)."""
        positions = positions[positions >= 0]
        m = len(positions)
        if m < 2:
            return float("nan")
        unit, nonzero = self._unit_genres
        total = np.add.reduce(unit[positions], axis=0)[None, :]  # rows in list order
        cos_sum = 0.5 * (np.einsum("ud,ud->u", total, total) - nonzero[positions].sum())
        return float(1.0 - cos_sum[0] / (m * (m - 1) / 2))

    @cached_property
    def _unit_genres(self) -> tuple[np.ndarray, np.ndarray]:
        """The catalogue's genre rows as unit float64 vectors (zero rows stay zero) and
        whether each row is non-zero, as `ild_at_k` normalises them."""
        features = self._genres.astype(np.float64)
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        unit = np.divide(features, norms, out=np.zeros_like(features), where=norms > 0)
        return unit, (norms[:, 0] > 0).astype(np.float64)

    def _popular_list(self, user_id: int, k: int) -> Recommendation:
        # Stable sort: equal counts go to the smaller movie id, as everywhere else.
        order = np.argsort(-self._popular.counts_, kind="stable")[:k]
        items = [
            self._item(i + 1, int(p), {"popularity": float(self._popular.counts_[p])}, {})
            for i, p in enumerate(order)
        ]
        return Recommendation(user_id, "popularity", items, self._ild(order), {"popularity": k})

    # --- serving with an explicit history (the REST service, `serving/app.py`) ---

    def has_user(self, user_id: int) -> bool:
        """Whether `user_id` is a users.dat id (known history and demographics)."""
        if self._user_set is None:  # a set: np.isin costs 0.1 ms per call, twice a request
            self._user_set = frozenset(self.user_ids.tolist())
        return user_id in self._user_set

    def last_rating_time(self, user_id: int) -> int:
        """Unix time of the user's newest known rating (0 if none or not a users.dat id)."""
        if not self.has_user(user_id):
            return 0
        row = int(np.searchsorted(self.user_ids, user_id))
        times = self._times[row].data
        return int(times.max()) if times.size else 0

    def positions_of(self, movie_ids: Sequence[int]) -> np.ndarray:
        """Catalogue positions (n,) of raw movie ids; a ConfigError names any id that is not
        in the catalogue (every movie with at least one rating in ratings.dat)."""
        ids = np.asarray(movie_ids, dtype=np.int64)
        positions = np.clip(
            np.searchsorted(self.funnel.item_ids, ids), 0, len(self.funnel.item_ids) - 1
        )
        unknown = ids[self.funnel.item_ids[positions] != ids]
        if unknown.size:
            raise ConfigError(
                f"unknown movie ids (not in the catalogue of rated movies): "
                f"{sorted(set(unknown.tolist()))[:10]}"
            )
        return positions

    def history_of(
        self, user_id: int | None, extra: Sequence[tuple[int, int, int]] = ()
    ) -> History:
        """One row of history: the user's known ratings (none for a visitor, None, or an id
        outside users.dat) overlaid with `extra` (movie_id, rating, timestamp) ratings; a
        movie rated again takes its newest rating."""
        cols, vals, stamps = self._history_arrays(user_id, extra)
        indptr = np.array([0, len(cols)])
        shape = (1, len(self.funnel.item_ids))
        return History(
            sp.csr_matrix((vals, cols, indptr), shape=shape),
            sp.csr_matrix((stamps, cols, indptr), shape=shape),
        )

    def _history_arrays(
        self, user_id: int | None, extra: Sequence[tuple[int, int, int]] = ()
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`history_of` as arrays: positions (h,) int64 ascending, ratings (h,) float64 and
        timestamps (h,) int64, read from the known matrices' own arrays."""
        cols = np.empty(0, dtype=np.int64)
        vals = np.empty(0, dtype=np.float64)
        stamps = np.empty(0, dtype=np.int64)
        if user_id is not None and self.has_user(user_id):
            row = int(np.searchsorted(self.user_ids, user_id))
            lo, hi = self._ratings.indptr[row], self._ratings.indptr[row + 1]
            cols = self._ratings.indices[lo:hi].astype(np.int64)
            vals, stamps = self._ratings.data[lo:hi], self._times.data[lo:hi]
        if len(extra):
            live = np.asarray(extra, dtype=np.int64).reshape(-1, 3)
            live_cols = self.positions_of(live[:, 0])
            # Newest per movie among the live ones (stable sort: the later entry wins ties).
            order = np.lexsort((np.arange(len(live)), live[:, 2], live_cols))
            last = np.r_[live_cols[order][1:] != live_cols[order][:-1], True]
            pick = order[last]
            keep = ~np.isin(cols, live_cols[pick])
            cols = np.r_[cols[keep], live_cols[pick]]
            vals = np.r_[vals[keep], live[pick, 1].astype(np.float64)]
            stamps = np.r_[stamps[keep], live[pick, 2]]
        order = np.argsort(cols, kind="stable")
        return cols[order], vals[order], stamps[order].astype(np.int64)

    def user_request(
        self, user_id: int | None, extra: Sequence[tuple[int, int, int]] = ()
    ) -> UserRequest:
        """The fast path's request (`Funnel.serve`) of a users.dat id or a visitor (None)
        with the history of `history_of`, made after it and never before the funnel's
        serving moment (as `Requests.after_history`)."""
        raw = VISITOR if user_id is None else int(user_id)
        cols, vals, stamps = self._history_arrays(user_id, extra)
        return UserRequest.build(
            raw, cols, vals, stamps, len(self.funnel.item_ids), self.funnel.now
        )

    def search(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        """Catalogue movies whose title contains `query` (case-insensitive), the most rated
        in train first (an empty query: the most rated), each with its train rating count."""
        if self._search is None:  # built on first use: most servers never search
            order = np.argsort(-self._popular.counts_, kind="stable")
            self._search = (order, np.char.lower(self._titles[order].astype(str)))
        order, titles = self._search
        needle = query.strip().lower()
        if "\x00" in needle:  # numpy strings drop NULs, so "a\x00" would search for "a"
            return []  # no title holds one
        if needle:
            order = order[np.char.find(titles, needle) >= 0]
        return [
            {**self.catalogue.movies[p], "ratings": int(self._popular.counts_[p])}
            for p in order[:limit].tolist()
        ]

    def _funnel_for(self, method: str | None) -> tuple[str, Funnel]:
        """The run's funnel with re-rank `method` (one of METHODS; None: the run's own)."""
        method = method or self.run.config.rerank.method
        if method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if method == self.run.config.rerank.method:
            return method, self.funnel
        if method not in self._funnels:
            stages = {**self.funnel.stages, "rerank": self.funnel["rerank"].with_method(method)}
            self._funnels[method] = Funnel(
                stages, self.funnel.sizes, self.funnel.item_ids, self.funnel.now
            )
        return method, self._funnels[method]

    def recommend_trace(
        self,
        user_id: int | None,
        extra: Sequence[tuple[int, int, int]] = (),
        *,
        topk_recall: int | None = None,
        topk_final: int | None = None,
        lambda_mmr: float | None = None,
        method: str | None = None,
    ) -> Trace:
        """The final list and the whole funnel trace (`serving.trace.Trace`) for a users.dat
        id or a visitor (None), reading the known history overlaid with `extra` ratings
        (movie_id, rating, timestamp): new ratings count at once, with no retraining. An id
        outside users.dat gets the popularity list (`extra` is then ignored)."""
        clock = time.perf_counter()
        if user_id is not None and (
            isinstance(user_id, bool) or not isinstance(user_id, numbers.Integral) or user_id <= 0
        ):
            raise ConfigError(f"user_id must be a positive integer, got {user_id!r}")
        topk_recall, topk_final, lam = self._check(
            *self._defaults(topk_recall, topk_final, lambda_mmr)
        )
        method, funnel = self._funnel_for(method)
        keep = min(max(funnel.keep, topk_final), topk_recall)
        sizes = {"topk_recall": topk_recall, "keep": keep, "topk_final": topk_final}
        if user_id is not None and not self.has_user(int(user_id)):
            return self._popular_trace(int(user_id), topk_final, method, lam, clock)
        request = self.user_request(user_id, extra)
        rows, ms = funnel.serve_rows(
            request, topk_recall=topk_recall, keep=keep, topk_final=topk_final, lambda_mmr=lam
        )
        n_history = len(request.items)
        trace = build_trace(
            rows,
            ms,
            self.catalogue,
            user_id=None if user_id is None else int(user_id),
            path="funnel" if n_history else "cold",
            method=method,
            lambda_mmr=lam,
            sizes=sizes,
            history=n_history,
            live=len(extra),
            ild=self._ild(rows["rerank"].items),
        )
        trace.latency_ms["total"] = round((time.perf_counter() - clock) * 1000, 3)
        return trace

    def _popular_trace(self, user_id: int, k: int, method: str, lam: float, clock: float) -> Trace:
        rec = self._popular_list(user_id, k)
        final = [
            {
                "movie_id": item.movie_id,
                "title": item.title,
                "genres": item.genres.split("|"),
                "channels": {},
                "score": item.scores["popularity"],
                "positions": {"popularity": item.rank},
            }
            for item in rec.items
        ]
        return Trace(
            user_id=user_id,
            path="popularity",
            method=method,
            lambda_mmr=lam,
            sizes={"topk_final": k},
            history=0,
            live=0,
            stages={},
            movies={},
            final=final,
            ild=None if math.isnan(rec.ild) else rec.ild,
            latency_ms={"total": round((time.perf_counter() - clock) * 1000, 3)},
        )
