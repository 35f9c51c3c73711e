"""The funnel trace of one request: every stage's list, what moved, and what each stage cost.

    lists, ms = funnel.serve(request, topk_recall=200, keep=100, topk_final=20, ...)
    trace = build_trace(lists, ms, catalogue, ...)     # -> Trace, .to_dict() for JSON

`Funnel.serve` (the fast path) times each component of this one request on its own clock;
`Funnel.timings` only sums over `run` calls, which says nothing about one request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from recfunnel.funnel import STAGES
from recfunnel.types import Candidates


@dataclass(frozen=True)
class Catalogue:
    """What the trace shows of each catalogue position: raw id, title and genre list."""

    item_ids: np.ndarray  # (n_items,) raw movie id of each position
    titles: np.ndarray  # (n_items,) str
    genres: list[list[str]]  # per position, e.g. ["Action", "Comedy"]

    def movie(self, position: int) -> dict[str, Any]:
        return dict(self._movies[position])

    @cached_property
    def _movies(self) -> list[dict[str, Any]]:
        # Built once: a trace describes ~200 movies, and numpy scalar reads per item would
        # cost more than the pre-rank stage.
        return [
            {"movie_id": int(m), "title": str(t), "genres": g}
            for m, t, g in zip(
                self.item_ids.tolist(), self.titles.tolist(), self.genres, strict=True
            )
        ]

    @cached_property
    def raw_ids(self) -> list[int]:
        return self.item_ids.tolist()


@dataclass(frozen=True)
class Trace:
    """One answer with its funnel trace (JSON-ready through `to_dict`).

    path: "funnel" (a history), "cold" (none: demographics and item features only) or
    "popularity" (an id not in users.dat). stages[name]: that stage's list, best first, as
    {"movie_id", "position" (1-based), "score"}. movies[movie_id]: title, genres and the
    recall channels that proposed it ({channel: its 1-based rank there}). final: the final
    list with every stage's place of each item. latency_ms: per component and in total."""

    user_id: int | None
    path: str
    method: str
    lambda_mmr: float
    sizes: dict[str, int]
    history: int  # ratings the request read (known + live)
    live: int  # of which live ones (posted to the service)
    stages: dict[str, list[dict[str, Any]]]
    movies: dict[int, dict[str, Any]]
    final: list[dict[str, Any]]
    ild: float | None
    latency_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self, full: bool = True) -> dict[str, Any]:
        """The JSON body; without `full`, the stage lists and the movies are left out."""
        out = {
            "user_id": self.user_id,
            "path": self.path,
            "method": self.method,
            "lambda": self.lambda_mmr,
            "sizes": self.sizes,
            "history": self.history,
            "live_ratings": self.live,
            "final": self.final,
            "ild": self.ild,
            "latency_ms": self.latency_ms,
        }
        if full:
            out["stages"] = self.stages
            # JSON object keys are strings; the movie id is also inside each value.
            out["movies"] = {str(k): v for k, v in self.movies.items()}
        return out


def finite(value: float) -> float | None:
    """`value` as a JSON-safe float: NaN and infinities (padding, a 1-item ILD) become None."""
    value = float(value)
    return value if math.isfinite(value) else None


def build_trace(
    lists: dict[str, Candidates],
    latency_ms: dict[str, float],
    catalogue: Catalogue,
    *,
    user_id: int | None,
    path: str,
    method: str,
    lambda_mmr: float,
    sizes: dict[str, int],
    history: int,
    live: int,
    ild: float,
) -> Trace:
    """The trace of row 0 of `lists` (one request): each stage's list with scores and places,
    each item's channels, and the final list with every stage's place of its items."""
    stages: dict[str, list[dict[str, Any]]] = {}
    places: dict[str, dict[int, int]] = {}
    movies: dict[int, dict[str, Any]] = {}
    raw = catalogue.raw_ids
    recall = lists["recall"]
    # Python lists first: per-item reads of numpy arrays are slow at this size.
    channel_ranks = {name: ranks[0].tolist() for name, ranks in recall.channels.items()}
    for column, position in enumerate(recall.items[0].tolist()):
        if position < 0:
            continue
        movie = catalogue.movie(position)
        movie["channels"] = {
            name: ranks[column] for name, ranks in channel_ranks.items() if ranks[column] > 0
        }
        movies[movie["movie_id"]] = movie
    for stage in STAGES:
        cands = lists[stage]
        # The final list carries no score of its own: it re-orders the rank stage's.
        score_name = "rank" if stage == "rerank" else stage
        entries, seen = [], {}
        for column, (position, score) in enumerate(
            zip(cands.items[0].tolist(), cands.scores[score_name][0].tolist(), strict=True)
        ):
            if position < 0:
                continue
            movie_id = raw[position]
            entries.append({"movie_id": movie_id, "position": column + 1, "score": finite(score)})
            seen[movie_id] = column + 1
        stages[stage] = entries
        places[stage] = seen
    final = []
    for entry in stages["rerank"]:
        movie_id = entry["movie_id"]
        positions = {stage: places[stage].get(movie_id) for stage in STAGES}
        final.append({**movies[movie_id], "score": entry["score"], "positions": positions})
    latency = {name: round(value, 3) for name, value in latency_ms.items()}
    return Trace(
        user_id=user_id,
        path=path,
        method=method,
        lambda_mmr=lambda_mmr,
        sizes=sizes,
        history=history,
        live=live,
        stages=stages,
        movies=movies,
        final=final,
        ild=finite(ild),
        latency_ms=latency,
    )
