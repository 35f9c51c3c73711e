"""The recall stage: every configured channel retrieves, their lists are merged.

    recall = RecallStage(RecallConfig(), index=make_index("hnsw")).fit(data)
    cands = recall(requests, Candidates.empty(len(requests)), k=200)

scores["recall"] is the score the later stages read for every candidate: the `score_by`
channel's score (the two-tower logit by default), computed for candidates that another
channel proposed too. Adding a channel is one module with a `Channel` class plus its config
section here and its entry in `CHANNELS`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recfunnel.artifacts import RunFileError, read_json
from recfunnel.config import param, section
from recfunnel.errors import ConfigError
from recfunnel.evaluation.metrics import MOVE_Z, clearly_better, hit_matrix, ndcg_at_k
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
from recfunnel.recall.merge import WeightedFusion, merge_lists
from recfunnel.recall.sequence.channel import SequenceChannel, SequenceConfig
from recfunnel.recall.trending import TrendingChannel, TrendingConfig
from recfunnel.recall.two_tower.channel import TwoTowerChannel, TwoTowerConfig
from recfunnel.stage import FitData, Scorer, Stacked, Validate
from recfunnel.types import Candidates, Pairs, Requests

if TYPE_CHECKING:
    from recfunnel.recall.fast import RecallKernel

# The weights the fusion's coordinate ascent tries for each channel (`choose_weights`):
# 0 (left out) and a doubling scale symmetric about 1 (1/4 .. 4: a channel up to four times
# as trusted as another, or a quarter).
WEIGHT_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)

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
        "rrf: reciprocal-rank fusion, sum of w / (rrf_k + rank) over the channels (w: "
        "rrf_weights); quota: "
        "each channel places its best `quotas` items, the rest by fusion",
    )
    rrf_k: int = param(60, "rrf and quota: the rank offset (larger flattens the fusion)")
    rrf_weights: tuple[float, ...] | None = param(
        None,
        "rrf: each channel's weight w in the fusion, sum of w / (rrf_k + rank), one >= 0 per "
        "channel in `channels` order (0: the channel's list is not fused in; its scores "
        "still reach the later stages); empty: 1 each; none: chosen in training on valid's "
        "warm users, with the serving channels, by coordinate ascent over 0, 0.25, 0.5, 1, 2, 4 "
        "from 1 each, by the NDCG@20 of the fused list, a move only when it wins by 3 "
        "standard errors (RecallStage.choose_weights)",
        saved_without=(),  # runs saved before the field fused every channel with weight 1
    )
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
        weights = self.rrf_weights
        if weights and (
            len(weights) != len(self.channels)
            or not all(math.isfinite(w) and w >= 0 for w in weights)
            or not any(weights)
        ):
            raise ConfigError(
                f"recall.rrf_weights needs one finite weight >= 0 per channel "
                f"({len(self.channels)}), not all 0, got {list(weights)}"
            )
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
        """Fit every channel; the fusion weights are the config's (1 each when it leaves
        them to `choose_weights`)."""
        for channel in self.channels.values():
            channel.fit(data)
        self.weights_ = self._configured_weights()
        self._fitted()
        return self

    def _configured_weights(self) -> tuple[float, ...]:
        weights = self.config.rrf_weights
        return tuple(float(w) for w in weights) if weights else (1.0,) * len(self.channels)

    def choose_weights(
        self, requests: Requests, liked: sp.csr_matrix, *, k: int, cutoff: int = 20
    ) -> dict[str, Any]:
        """Set `weights_`, the fusion weights, by a cautious coordinate ascent on labelled
        requests. From 1 each, each channel in turn may take another value of WEIGHT_GRID,
        judged by the per-request NDCG@cutoff of the fused list against the requests' liked
        targets; until a pass changes nothing (at most three passes).

        A move must win by MOVE_Z standard errors of the paired per-request difference. A few
        hundred requests are a noisy judge: a first version without the margin, choosing on
        the 281 replayed requests of ML-1M's backtest, dropped two channels and lost on the
        backtest's own valid and test parts. The margin keeps 1 each unless the requests
        clearly disagree (with ~16 trials a pass, a move by chance stays rare: about 2 %).

        `liked` (B, n_items): a nonzero for each request's relevant movies (valid's truth);
        requests without one are left out. The channels' lists (B, k) are computed once; a
        trial is a merge. Returns what was tried, for the run's manifest."""
        self.check_fitted()
        liked = sp.csr_matrix(liked)
        n_liked = np.diff(liked.indptr)
        rows = np.flatnonzero(n_liked > 0)
        self.weights_ = (1.0,) * len(self.channels)
        self.forget_kernel()
        if len(rows) < 2:  # no spread to judge a move by: 1 each
            return {"weights": dict.fromkeys(self.channels, 1.0), "requests": len(rows)}
        lists = {name: channel(requests[rows], k=k) for name, channel in self.channels.items()}
        truth, n_relevant = liked[rows], n_liked[rows]
        fuse = WeightedFusion(lists, self.config.rrf_k)

        def ndcg(weights: list[float]) -> np.ndarray:
            """(n,) each request's NDCG@cutoff of the list fused with `weights`."""
            return ndcg_at_k(hit_matrix(fuse.top(weights, cutoff), truth), n_relevant, cutoff)

        weights = [1.0] * len(self.channels)
        current = start = ndcg(weights)
        moves = []
        for _ in range(3):
            moved = False
            for c in range(len(weights)):
                best, best_scores = None, current
                for value in WEIGHT_GRID:
                    trial = [*weights[:c], value, *weights[c + 1 :]]
                    if value == weights[c] or not any(trial):
                        continue
                    scores = ndcg(trial)
                    if clearly_better(scores, current) and scores.mean() > best_scores.mean():
                        best, best_scores = trial, scores
                if best is not None:
                    moves.append({"weights": best, "ndcg": float(best_scores.mean())})
                    weights, current, moved = best, best_scores, True
            if not moved:
                break
        self.weights_ = tuple(weights)
        self.forget_kernel()
        return {
            "weights": dict(zip(self.channels, self.weights_, strict=True)),
            "metric": f"ndcg@{cutoff}",
            "requests": len(rows),
            "equal_weights": float(start.mean()),
            "chosen": float(current.mean()),
            "moves": moves,
            "move_z": MOVE_Z,
        }

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
        merged = merge_lists(
            lists, k, how=cfg.merge, rrf_k=cfg.rrf_k, quotas=cfg.quotas, weights=self.weights_
        )
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
        fusion = {"weights": dict(zip(self.channels, self.weights_, strict=True))}
        (directory / "fusion.json").write_text(json.dumps(fusion, indent=2))

    def _load(self, directory: Path, data: FitData) -> None:
        self.channels = {
            name: CHANNELS[name].load(directory / name, data) for name in self.config.channels
        }
        # Runs saved before the weights fused every channel with weight 1.
        self.weights_ = self._configured_weights()
        path = directory / "fusion.json"
        if path.exists():
            weights = read_json(path).get("weights")
            if not isinstance(weights, dict) or list(weights) != list(self.channels):
                raise RunFileError(f"{path}: expected a weight for each of {list(self.channels)}")
            try:
                self.weights_ = tuple(float(w) for w in weights.values())
            except (TypeError, ValueError):
                raise RunFileError(f"{path}: the weights must be numbers") from None


def _build(name: str, config: Any, index: ItemIndex | None) -> Channel:
    cls = CHANNELS[name]
    return cls(config, index=index) if cls is TwoTowerChannel else cls(config)
