"""The funnel: one chain of components, recall -> item-to-item -> pre-rank -> rank -> re-rank.

    lists = funnel.run(requests)                    # every stage's output list
    lists = funnel.run(requests, upto="prerank")    # stop after a stage
    pairs = funnel.score_pairs(requests, pairs)     # every scorer's score of given pairs
    lists, ms = funnel.serve(request)               # one UserRequest: the serving fast path
    rows, ms = funnel.serve_rows(request)           # the same lists as plain `kernel.Row`s

Validation during training, evaluation, the pointwise AUC, batch serving and the benchmark
call the first two methods; serving one user calls `serve`, which chains each component's
one-request kernel (`recfunnel.kernel`) in one `FusedKernel` and gives the same lists as
`run`. None of them
chains the stages again. Each component is a `stage.Component`: it takes the requests and
the incoming lists and returns new ones.
`training.recipe.train_funnel` builds and trains a Funnel.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recfunnel.config import param
from recfunnel.errors import ConfigError
from recfunnel.evaluation.protocol import EvalUsers
from recfunnel.item_to_item import ItemToItem
from recfunnel.kernel import Kernel, Row, UserRequest
from recfunnel.prerank import PreRankStage
from recfunnel.rank import RankStage
from recfunnel.recall import RecallStage
from recfunnel.rerank import MMRReranker
from recfunnel.stage import Component, FitData, Scorer
from recfunnel.types import Candidates, Pairs, Requests

# The lists a report shows, in funnel order (the item-to-item step adds a score, no list).
STAGES = ("recall", "prerank", "rank", "rerank")
# Every component, in chain order, with its class (a run directory has one folder each).
COMPONENTS: dict[str, type[Component]] = {
    "recall": RecallStage,
    "item_to_item": ItemToItem,
    "prerank": PreRankStage,
    "rank": RankStage,
    "rerank": MMRReranker,
}


@dataclass(frozen=True)
class FunnelConfig:
    """Sizes of the lists each stage hands on."""

    topk_recall: int = param(200, "candidates retrieved by the recall stage")
    topk_final: int = param(20, "items in the final list")

    def validate(self) -> None:
        if self.topk_final <= 0 or self.topk_recall <= 0:
            raise ConfigError("funnel.topk_recall and funnel.topk_final must be > 0")
        if self.topk_final > self.topk_recall:
            raise ConfigError("funnel.topk_final cannot exceed funnel.topk_recall")


class FusedKernel:
    """The whole funnel for ONE request as one object: every component's kernel, chained on
    plain `Row`s (1-D arrays), built once from the fitted funnel (`Funnel.fused`).

        rows, ms = fused(request, options)   # {component: Row}, {component: milliseconds}

    A kernel with a `row` method (`kernel.RowKernel`: every numpy kernel) reads and returns
    Rows; any other kernel (`BatchKernel`, a component's own) gets the one-row `Candidates`
    it expects, converted at its boundary. Nothing else happens between two stages, so the
    lists are the components' own (the batch path's, tests/test_fastpath.py) and a
    `Candidates` value is built only when a caller asks for one (`Funnel.serve`).
    """

    def __init__(self, kernels: dict[str, Kernel]) -> None:
        self.kernels = dict(kernels)
        self.steps = [(name, _row_step(kernel)) for name, kernel in kernels.items()]

    def built_from(self, kernels: dict[str, Kernel]) -> bool:
        """Whether these are the kernels this object chains (the same objects, in order)."""
        return len(kernels) == len(self.kernels) and all(
            kernels.get(name) is kernel for name, kernel in self.kernels.items()
        )

    def __call__(
        self, request: UserRequest, options: dict[str, dict[str, Any]]
    ) -> tuple[dict[str, Row], dict[str, float]]:
        """Every component's output Row and wall time (ms); `options` by component name
        (`Funnel._options`)."""
        row = Row(np.full(0, -1, dtype=np.int64), {}, {})  # the recall stage's empty input
        rows: dict[str, Row] = {}
        ms: dict[str, float] = {}
        clock = time.perf_counter()
        for name, step in self.steps:
            row = step(request, row, **options.get(name, {}))
            now = time.perf_counter()
            ms[name] = (now - clock) * 1000
            clock = now
            rows[name] = row
        return rows, ms


def _row_step(kernel: Kernel) -> Any:
    """(request, Row, **options) -> Row for any kernel: its own `row`, or its `Candidates`
    call with the Row converted on the way in and out."""
    row_method = getattr(kernel, "row", None)
    if row_method is not None:
        return row_method

    def step(request: UserRequest, row: Row, **options: Any) -> Row:
        return Row.of(kernel(request, row.candidates(), **options))

    return step


@dataclass
class Funnel:
    """The trained components in chain order, the list sizes and the serving moment."""

    stages: dict[str, Component]
    sizes: FunnelConfig
    item_ids: np.ndarray  # (n_items,) the catalogue: raw movie id of each position
    now: int  # the serving moment: the day after the end of train (see `requests`)
    # Seconds per component summed over `run` calls; the server runs requests in threads,
    # so every update holds `_lock` (read it with `timings_snapshot`).
    timings: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _fused: FusedKernel | None = field(default=None, repr=False, compare=False)

    def __getitem__(self, name: str) -> Any:
        return self.stages[name]

    @property
    def keep(self) -> int:
        """How many candidates pre-rank hands on by default."""
        return self.stages["prerank"].config.keep

    def requests(self, users: EvalUsers) -> Requests:
        """Requests of evaluated users, made after their whole input history."""
        return Requests.after_history(users.user_ids, users.history, self.now)

    def run(
        self,
        requests: Requests,
        *,
        upto: str | None = None,
        resume: tuple[str, Candidates] | None = None,
        topk_recall: int | None = None,
        keep: int | None = None,
        topk_final: int | None = None,
        lambda_mmr: float | None = None,
    ) -> dict[str, Candidates]:
        """Each component's output list for a batch of requests, in chain order, stopping
        after `upto`: "recall" (B, topk_recall), "item_to_item" (the same, with its score),
        "prerank" (B, keep), "rank" (B, keep) re-sorted, "rerank" (B, topk_final).
        `resume=(name, lists)` starts after component `name` from its output `lists`."""
        options = self._options(topk_recall, keep, topk_final, lambda_mmr)
        names = list(self.stages)
        if upto is not None and upto not in names:
            raise ConfigError(f"unknown stage {upto!r}; the funnel runs {', '.join(names)}")
        start = names.index(resume[0]) + 1 if resume is not None else 0
        cands = resume[1] if resume is not None else Candidates.empty(len(requests))
        out: dict[str, Candidates] = {}
        for name in names[start:]:
            clock = time.perf_counter()
            cands = self.stages[name](requests, cands, **options.get(name, {}))
            elapsed = time.perf_counter() - clock
            with self._lock:
                self.timings[name] = self.timings.get(name, 0.0) + elapsed
            out[name] = cands
            if name == upto:
                break
        return out

    def timings_snapshot(self) -> dict[str, float]:
        """A copy of `timings`, taken under the lock."""
        with self._lock:
            return dict(self.timings)

    def clear_timings(self) -> None:
        with self._lock:
            self.timings.clear()

    def serve(
        self,
        request: UserRequest,
        *,
        topk_recall: int | None = None,
        keep: int | None = None,
        topk_final: int | None = None,
        lambda_mmr: float | None = None,
    ) -> tuple[dict[str, Candidates], dict[str, float]]:
        """The serving fast path for ONE request: every component's output list (one row
        each, the lists `run` gives for the same request) and each component's wall time in
        milliseconds, through the fused kernel (`FusedKernel`, `serve_rows`); the lists are
        made `Candidates` once, at the end. The times are this call's own, so concurrent
        calls never share state; `timings` is not touched."""
        rows, ms = self.serve_rows(
            request,
            topk_recall=topk_recall,
            keep=keep,
            topk_final=topk_final,
            lambda_mmr=lambda_mmr,
        )
        return {name: row.candidates() for name, row in rows.items()}, ms

    def serve_rows(
        self,
        request: UserRequest,
        *,
        topk_recall: int | None = None,
        keep: int | None = None,
        topk_final: int | None = None,
        lambda_mmr: float | None = None,
    ) -> tuple[dict[str, Row], dict[str, float]]:
        """`serve` with the lists as plain `Row`s (1-D arrays): what `recommend_for_user`
        reads, with no frozen value built at all."""
        options = self._options(topk_recall, keep, topk_final, lambda_mmr)
        return self.fused()(request, options)

    def fused(self) -> FusedKernel:
        """The funnel's fused kernel, built once from the components' kernels (and again
        when a component dropped its kernel, e.g. after a refresh or a new index)."""
        kernels = self.kernels()
        fused = self._fused
        if fused is None or not fused.built_from(kernels):
            fused = self._fused = FusedKernel(kernels)
        return fused

    def kernels(self) -> dict[str, Kernel]:
        """Each component's kernel in chain order, built once (under the lock, so two
        first requests in two threads do not build them twice)."""
        with self._lock:
            return {name: stage.kernel() for name, stage in self.stages.items()}

    def _options(
        self,
        topk_recall: int | None,
        keep: int | None,
        topk_final: int | None,
        lambda_mmr: float | None,
    ) -> dict[str, dict[str, Any]]:
        """Each component's call options from the list sizes (None: the funnel's own)."""
        recall_k = topk_recall or self.sizes.topk_recall
        return {
            "recall": {"k": recall_k},
            "prerank": {"keep": min(keep or self.keep, recall_k)},
            "rerank": {"k": topk_final or self.sizes.topk_final, "lambda_mmr": lambda_mmr},
        }

    def score_pairs(self, requests: Requests, pairs: Pairs, upto: str | None = None) -> Pairs:
        """The pairs with every scorer's score, in chain order (the same inputs each stage
        reads in `run`), e.g. the rated pairs of test for AUC / GAUC / LogLoss."""
        for name, stage in self.stages.items():
            if isinstance(stage, Scorer):
                pairs = stage.score_pairs(requests, pairs)
            if name == upto:
                break
        return pairs

    def save(self, directory: Path) -> None:
        """Each component in its own folder."""
        for name, stage in self.stages.items():
            stage.save(Path(directory) / name)

    @classmethod
    def load(cls, directory: Path, data: FitData, sizes: FunnelConfig, now: int) -> Funnel:
        """Rebuild from `save`'s folders; side tables come from `data` (see Component.load)."""
        stages = {name: c.load(Path(directory) / name, data) for name, c in COMPONENTS.items()}
        return cls(stages=stages, sizes=sizes, item_ids=data.item_ids, now=now)


__all__ = ["COMPONENTS", "STAGES", "Funnel", "FunnelConfig", "FusedKernel"]
