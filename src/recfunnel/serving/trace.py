"""The funnel trace of one request: every stage's list, what moved, and what each stage cost.

    rows, ms = funnel.serve_rows(request, topk_recall=200, keep=100, topk_final=20, ...)
    trace = build_trace(rows, ms, catalogue, ...)      # -> Trace, .to_dict() for JSON

`Funnel.serve_rows` (the fast path) times each component of this one request on its own clock;
`Funnel.timings` only sums over `run` calls, which says nothing about one request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from recfunnel.funnel import STAGES
from recfunnel.kernel import Row


@dataclass(frozen=True)
class Catalogue:
    """What the trace shows of each catalogue position: raw id, title and genre list."""

    item_ids: np.ndarray  # (n_items,) raw movie id of each position
    titles: np.ndarray  # (n_items,) str
    genres: list[list[str]]  # per position, e.g. ["Action", "Comedy"]

    @cached_property
    def movies(self) -> list[dict[str, Any]]:
        """{"movie_id", "title", "genres"} per position: shared, copy before changing."""
        # Built once: a trace describes ~200 movies, and numpy scalar reads per item would
        # cost more than the pre-rank stage.
        return [
            {"movie_id": int(m), "title": str(t), "genres": g}
            for m, t, g in zip(
                self.item_ids.tolist(), self.titles.tolist(), self.genres, strict=True
            )
        ]


@dataclass(frozen=True)
class Trace:
    """One answer with its funnel trace (JSON-ready through `to_dict`).

    path: "funnel" (a history), "cold" (none: demographics and item features only) or
    "popularity" (an id not in users.dat). stages[name]: that stage's list, best first, as
    {"movie_id", "position" (1-based), "score"}. movies[movie_id]: title, genres and the
    recall channels that proposed it ({channel: its 1-based rank there}). final: the final
    list with every stage's place of each item. latency_ms: per component and in total.
    sizes: the list lengths asked for (topk_recall, keep, topk_final); a list is shorter
    when fewer unrated movies are left, so a stage's length is that of its list."""

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
    lists: dict[str, Row],
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
    """The trace of one request from each component's list (`Funnel.serve_rows`' Rows):
    each stage's list with scores and places, each item's channels, and the final list with
    every stage's place of its items.

    Plain Python lists and comprehensions throughout: a trace is ~600 small dicts, and at
    this size a numpy read or a function call per item costs more than building them."""
    recall = lists["recall"]
    positions = recall.items.tolist()
    # Each candidate's {channel: 1-based rank} (channels that did not propose it left out),
    # filled channel by channel, so each dict's keys come in the channels' order: one pass
    # per channel costs half of a comprehension per candidate.
    channels: list[dict[str, int]] = [{} for _ in positions]
    for name, ranks in recall.channels.items():
        for proposed, rank in zip(channels, ranks.tolist(), strict=True):
            if rank > 0:
                proposed[name] = rank
    base = catalogue.movies
    movies: dict[int, dict[str, Any]] = {}
    for position, proposed in zip(positions, channels, strict=True):
        if position >= 0:
            movie = base[position]
            movies[movie["movie_id"]] = {**movie, "channels": proposed}
    stages: dict[str, list[dict[str, Any]]] = {}
    places: dict[str, dict[int, int]] = {}
    for stage in STAGES:
        row = lists[stage]
        # The final list carries no score of its own: it re-orders the rank stage's.
        values, items = row.scores["rank" if stage == "rerank" else stage], row.items
        if (items < 0).any():  # padding: left out (its place is not counted)
            values, items = values[items >= 0], items[items >= 0]
        scores = values.tolist()
        if not np.isfinite(values).all():  # a stray NaN or infinity: null in JSON
            scores = [finite(v) for v in scores]
        ids = catalogue.item_ids[items].tolist()
        numbered = range(1, len(ids) + 1)  # each item's 1-based place in this list
        stages[stage] = [
            {"movie_id": m, "position": place, "score": v}
            for m, place, v in zip(ids, numbered, scores, strict=True)
        ]
        places[stage] = dict(zip(ids, numbered, strict=True))
    final = [
        {
            **movies[entry["movie_id"]],
            "score": entry["score"],
            "positions": {stage: places[stage].get(entry["movie_id"]) for stage in STAGES},
        }
        for entry in stages["rerank"]
    ]
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
