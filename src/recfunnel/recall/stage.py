"""The recall stage: every configured channel retrieves, their lists are merged.

    recall = RecallStage(RecallConfig(), index=make_index("hnsw")).fit(data)
    cands = recall(requests, Candidates.empty(len(requests)), k=200)

scores["recall"] is the score the later stages read for every candidate: the `score_by`
channel's score (the two-tower logit by default), computed for candidates that another
channel proposed too. Adding a channel is one module with a `Channel` class plus its config
section here and its entry in `CHANNELS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from recfunnel.config import param, section
from recfunnel.errors import ConfigError
from recfunnel.recall.channel import Channel
from recfunnel.recall.content import ContentChannel, ContentConfig
from recfunnel.recall.graph.channel import LightGCNChannel, LightGCNConfig
from recfunnel.recall.index import ItemIndex
from recfunnel.recall.item_to_item import (
    EASEChannel,
    EASEChannelConfig,
    RP3betaChannel,
    RP3betaConfig,
)
from recfunnel.recall.merge import merge_lists
from recfunnel.recall.sequence.channel import SequenceChannel, SequenceConfig
from recfunnel.recall.trending import TrendingChannel, TrendingConfig
from recfunnel.recall.two_tower.channel import TwoTowerChannel, TwoTowerConfig
from recfunnel.stage import FitData, Scorer, Stacked, Validate
from recfunnel.types import Candidates, Pairs, Requests

if TYPE_CHECKING:
    from recfunnel.recall.fast import RecallKernel

# name -> channel class; the name is also the channel's config section in RecallConfig.
CHANNELS: dict[str, type[Channel]] = {
    "two_tower": TwoTowerChannel,
    "ease": EASEChannel,
    "rp3beta": RP3betaChannel,
    "trending": TrendingChannel,
    "content": ContentChannel,
    "lightgcn": LightGCNChannel,
    "sequence": SequenceChannel,
}


@dataclass(frozen=True)
class RecallConfig:
    """The recall channels and how their lists are merged."""

    channels: tuple[str, ...] = param(
        ("two_tower", "ease", "rp3beta", "trending"),
        f"channels to run, in merge priority order ({', '.join(CHANNELS)}); the default set "
        "was chosen on valid (the README's channel table)",
    )
    merge: Literal["round_robin", "rrf", "quota"] = param(
        "rrf",
        "round_robin: each channel's 1st item, then each one's 2nd, ... (repeats dropped); "
        "rrf: reciprocal-rank fusion, sum of 1 / (rrf_k + rank) over the channels; quota: "
        "each channel places its best `quotas` items, the rest by fusion",
    )
    rrf_k: int = param(60, "rrf and quota: the rank offset (larger flattens the fusion)")
    quotas: tuple[int, ...] = param(
        (), "quota: the slots each channel may fill, one per channel in `channels` order"
    )
    score_by: str = param(
        "two_tower", "the channel whose score of every candidate is the recall score"
    )
    features: bool = param(
        True,
        "with several channels: hand the later stages every channel's score of every "
        "candidate (recall.<channel>) and the reciprocal rank at which it proposed it "
        "(recall.<channel>.rrf, 0 when it did not)",
    )
    two_tower: TwoTowerConfig = section(TwoTowerConfig, "two-tower embedding retrieval")
    ease: EASEChannelConfig = section(EASEChannelConfig, "EASE item-to-item retrieval")
    rp3beta: RP3betaConfig = section(RP3betaConfig, "RP3beta random-walk retrieval")
    trending: TrendingConfig = section(TrendingConfig, "the most liked movies of late")
    content: ContentConfig = section(ContentConfig, "TF-IDF of title, genres and decade")
    lightgcn: LightGCNConfig = section(LightGCNConfig, "LightGCN over the liked train graph")
    sequence: SequenceConfig = section(SequenceConfig, "SASRec / BERT4Rec next-item recall")

    def validate(self) -> None:
        unknown = [c for c in self.channels if c not in CHANNELS]
        if not self.channels or unknown or len(set(self.channels)) < len(self.channels):
            raise ConfigError(
                f"recall.channels must name distinct channels of {', '.join(CHANNELS)}, "
                f"got {list(self.channels)}"
            )
        if self.score_by not in self.channels:
            raise ConfigError(f"recall.score_by {self.score_by!r} is not in recall.channels")
        if self.rrf_k <= 0:
            raise ConfigError(f"recall.rrf_k must be > 0, got {self.rrf_k}")
        if self.merge == "quota" and (
            len(self.quotas) != len(self.channels) or min(self.quotas, default=0) < 0
        ):
            raise ConfigError(
                f"recall.merge=quota needs one quota >= 0 per channel ({len(self.channels)}), "
                f"got recall.quotas={list(self.quotas)}"
            )


class RecallStage(Scorer):
    """The configured channels, fitted on the same data, merged into one list per request."""

    name = "recall"
    config_class = RecallConfig
    fitted_attribute = "config_"

    def __init__(self, config: RecallConfig | None = None, index: ItemIndex | None = None):
        super().__init__(config)
        self.config.validate()
        self.channels: dict[str, Channel] = {
            name: _build(name, getattr(self.config, name), index) for name in self.config.channels
        }

    @property
    def scorer(self) -> Channel:
        return self.channels[self.config.score_by]

    def fit(
        self, data: FitData, stacked: Stacked | None = None, validate: Validate | None = None
    ) -> RecallStage:
        for channel in self.channels.values():
            channel.fit(data)
        self._fitted()
        return self

    def refit(self, data: FitData) -> list[str]:
        """Refit on `data` every channel that allows it (`Channel.refit_for_serving`); the
        names of the refitted ones."""
        self.check_fitted()
        refitted = [name for name, c in self.channels.items() if c.refit_for_serving]
        for name in refitted:
            self.channels[name] = _build(name, getattr(self.config, name), None).fit(data)
        self.forget_kernel()
        return refitted

    def refresh(self, train: pd.DataFrame) -> None:
        """Every channel's serving state as of the end of `train` (see `Channel.refresh`)."""
        for channel in self.channels.values():
            channel.refresh(train)
        self.forget_kernel()

    def __call__(
        self, requests: Requests, candidates: Candidates | None = None, *, k: int | None = None
    ) -> Candidates:
        """Merged top-k lists (B, k) of the requests; incoming candidates are not read."""
        self.check_fitted()
        k = k or Channel.default_k
        lists = {name: channel(requests, k=k) for name, channel in self.channels.items()}
        cfg = self.config
        merged = merge_lists(lists, k, how=cfg.merge, rrf_k=cfg.rrf_k, quotas=cfg.quotas)
        # A channel's score is NaN where only other channels proposed the item: ask it.
        pairs = merged.pairs()
        for name, channel in self.channels.items():
            if np.isnan(pairs.scores[name]).any():
                pairs = channel.score_pairs(requests, pairs)
        merged = Candidates(
            merged.items,
            {n: merged.unflatten(v) for n, v in pairs.scores.items()},
            merged.channels,
            pairs.embeddings if pairs.embeddings is not None else merged.embeddings,
        )
        merged = merged.with_scores(self.name, merged.scores[self.config.score_by])
        for name in self.channels:
            if f"recall.{name}" in self.feature_names:
                merged = merged.with_scores(f"recall.{name}", merged.scores[name])
            if f"recall.{name}.rrf" in self.feature_names:
                rank = merged.channels[name]
                rrf = np.where(rank > 0, 1.0 / (self.config.rrf_k + rank), 0.0)
                merged = merged.with_scores(
                    f"recall.{name}.rrf", np.where(merged.valid, rrf, np.nan)
                )
        return merged

    def serving_kernel(self) -> RecallKernel:
        """The one-request fast path (`recall.fast`)."""
        from recfunnel.recall.fast import RecallKernel

        return RecallKernel(self)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The per-channel scores every candidate carries for the later stages (none with one
        channel: its score is already the recall score)."""
        if not self.config.features or len(self.channels) < 2:
            return ()
        # The scoring channel's own score is already scores["recall"]: only its rank is new.
        return tuple(
            f"recall.{name}{suffix}"
            for name in self.channels
            for suffix in ("", ".rrf")
            if not (name == self.config.score_by and suffix == "")
        )

    def score_pairs(self, requests: Requests, pairs: Pairs) -> Pairs:
        """The recall score (and embeddings) of arbitrary pairs, and the channel features:
        every channel's score, and a reciprocal rank of 0 (the pairs were not proposed)."""
        self.check_fitted()
        scored = self.scorer.score_pairs(requests, pairs)
        scored = scored.with_scores(self.name, scored.scores[self.config.score_by])
        if not self.feature_names:
            return scored
        scored = self._channel_scores(requests, scored)
        for name in self.channels:
            scored = scored.with_scores(f"recall.{name}.rrf", np.zeros(len(scored)))
        return scored

    def _channel_scores(self, requests: Requests, pairs: Pairs) -> Pairs:
        """`pairs` with scores["recall.<channel>"] (n,) of every channel but the scoring one."""
        for name, channel in self.channels.items():
            if name == self.config.score_by:
                continue
            own = pairs.scores.get(name)
            if own is None or np.isnan(own).any():
                own = channel.score_pairs(requests, pairs).scores[name]
            pairs = pairs.with_scores(f"recall.{name}", np.asarray(own, dtype=np.float64))
        return pairs

    def _save(self, directory: Path) -> None:
        for name, channel in self.channels.items():
            channel.save(directory / name)

    def _load(self, directory: Path, data: FitData) -> None:
        self.channels = {
            name: CHANNELS[name].load(directory / name, data) for name in self.config.channels
        }


def _build(name: str, config: Any, index: ItemIndex | None) -> Channel:
    cls = CHANNELS[name]
    return cls(config, index=index) if cls is TwoTowerChannel else cls(config)
