"""The funnel: one chain of components, recall -> item-to-item -> pre-rank -> rank -> re-rank.

    lists = funnel.run(requests)                    # every stage's output list
    lists = funnel.run(requests, upto="prerank")    # stop after a stage
    pairs = funnel.score_pairs(requests, pairs)     # every scorer's score of given pairs

Serving, validation during training, evaluation, the pointwise AUC and the benchmark all
call these two methods; none of them chains the stages again. Each component is a
`stage.Component`: it takes the requests and the incoming lists and returns new ones.
`training.recipe.train_funnel` builds and trains a Funnel.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recfunnel.config import param
from recfunnel.errors import ConfigError
from recfunnel.evaluation.protocol import EvalUsers
from recfunnel.item_to_item import ItemToItem
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


@dataclass
class Funnel:
    """The trained components in chain order, the list sizes and the serving moment."""

    stages: dict[str, Component]
    sizes: FunnelConfig
    item_ids: np.ndarray  # (n_items,) the catalogue: raw movie id of each position
    now: int  # the serving moment: the day after the end of train (see `requests`)
    timings: dict[str, float] = field(default_factory=dict)

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
        options = {
            "recall": {"k": topk_recall or self.sizes.topk_recall},
            "prerank": {"keep": min(keep or self.keep, topk_recall or self.sizes.topk_recall)},
            "rerank": {"k": topk_final or self.sizes.topk_final, "lambda_mmr": lambda_mmr},
        }
        names = list(self.stages)
        if upto is not None and upto not in names:
            raise ConfigError(f"unknown stage {upto!r}; the funnel runs {', '.join(names)}")
        start = names.index(resume[0]) + 1 if resume is not None else 0
        cands = resume[1] if resume is not None else Candidates.empty(len(requests))
        out: dict[str, Candidates] = {}
        for name in names[start:]:
            clock = time.perf_counter()
            cands = self.stages[name](requests, cands, **options.get(name, {}))
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - clock
            out[name] = cands
            if name == upto:
                break
        return out

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


__all__ = ["COMPONENTS", "STAGES", "Funnel", "FunnelConfig"]
