"""The funnel: recall -> pre-rank -> rank -> re-rank, trained together and run together.

    train_funnel(ml, split, recall_config=..., ...)   trains every stage without stacking leakage
    Funnel.run(requests, ...)                         one batch of requests through every stage

Reading `train_funnel` top to bottom is the training recipe:
  1. cut train in time: the recall model (and the item-to-item model) learn on the early
     80 %, the later stages on the latest 20 % (see `stacking`), so the scores they read are
     out of sample;
  2. replay the slice users' requests and label the recall candidates with what they did next;
  3. refresh the recall model's popularity inputs to the end of train and index its items;
  4. train pre-rank (early stopping on valid), then cross-fit it to get out-of-fold logits;
  5. train rank on the same examples with those logits (early stopping on valid).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recfunnel.artifacts import RunFileError, load_array
from recfunnel.candidates import Candidates, Requests
from recfunnel.config import param
from recfunnel.data.dataset import MovieLens
from recfunnel.data.split import Split
from recfunnel.errors import ConfigError
from recfunnel.evaluate import Evaluator, EvalUsers, catalogue, metric_cutoff
from recfunnel.index import ItemIndex, load_index
from recfunnel.prerank import PairInputs, PreRankConfig, PreRankStage
from recfunnel.rank import RankConfig, RankFeatureSpace, RankStage
from recfunnel.rank.features import fit_cf
from recfunnel.rank.stage import RankPairs
from recfunnel.recall import RecallConfig, RecallStage
from recfunnel.rerank import RerankConfig, mmr, relevance_scale
from recfunnel.stacking import (
    StackingConfig,
    add_like_pairs,
    build_examples,
    slice_requests,
    time_slice,
)

STAGES = ("recall", "prerank", "rank", "rerank")


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
    """Every trained stage plus what serving needs (catalogue, item genre vectors)."""

    item_ids: np.ndarray
    recall: RecallStage
    index: ItemIndex | None
    prerank: PreRankStage
    rank: RankStage
    rerank: RerankConfig
    funnel: FunnelConfig
    features: RankFeatureSpace
    genres: np.ndarray  # (n_items, 18) float32 genre multi-hot of the catalogue
    now: int  # the serving moment: the day after the end of train
    timings: dict[str, float] = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        """Each stage in its own folder; the item-to-item weights beside the rank model."""
        self.recall.save(directory / "recall")
        if self.index is not None:
            self.index.save(directory / "index")
        self.prerank.save(directory / "prerank")
        self.rank.save(directory / "rank")
        np.save(directory / "rank" / "cf_weights.npy", self.features.cf_weights)

    @classmethod
    def load(
        cls,
        directory: Path,
        ml: MovieLens,
        split: Split,
        *,
        rank_config: RankConfig,
        rerank: RerankConfig,
        funnel: FunnelConfig,
    ) -> Funnel:
        """Rebuild from `save`'s files; the causal feature tables are recomputed from `split`'s
        train part (the data checksum in the manifest guarantees it is the same data)."""
        item_ids = catalogue(ml.ratings)
        n = len(item_ids)
        features = RankFeatureSpace(
            ml,
            split.train,
            item_ids,
            cf_weights=load_array(directory / "rank" / "cf_weights.npy", shape=(n, n), kind="f"),
            window_days=rank_config.popularity_window_days,
            max_sequence=rank_config.max_sequence,
        )
        index_dir = directory / "index"
        recall = RecallStage.load(directory / "recall", ml)
        if not np.array_equal(recall.item_ids_, item_ids):
            raise RunFileError(f"{directory / 'recall' / 'catalogue.npy'} is not this catalogue")
        index = load_index(index_dir) if index_dir.is_dir() else None
        if index is not None and not np.array_equal(index.item_ids_, item_ids):
            raise RunFileError(f"{index_dir} does not index this catalogue's items")
        return cls(
            item_ids=item_ids,
            recall=recall,
            index=index,
            prerank=PreRankStage.load(directory / "prerank"),
            rank=RankStage.load(directory / "rank", features),
            rerank=rerank,
            funnel=funnel,
            features=features,
            genres=ml.genre_matrix(item_ids).astype(np.float32),
            now=int(features.likes.end),
        )

    def requests(self, users: EvalUsers) -> Requests:
        """Requests of evaluated users, served as of the end of train."""
        return Requests(users.user_ids, users.history, np.full(len(users.user_ids), self.now))

    def run(
        self,
        requests: Requests,
        *,
        topk_recall: int | None = None,
        keep: int | None = None,
        topk_final: int | None = None,
        lambda_mmr: float | None = None,
    ) -> dict[str, Candidates]:
        """Each stage's output list for a batch of requests: "recall" (B, topk_recall),
        "prerank" (B, keep), "rank" (B, keep) re-sorted, "rerank" (B, topk_final)."""
        topk_recall = topk_recall or self.funnel.topk_recall
        keep = min(keep or self.prerank.config.keep, topk_recall)
        topk_final = topk_final or self.funnel.topk_final
        lam = self.rerank.lambda_mmr if lambda_mmr is None else lambda_mmr
        out: dict[str, Candidates] = {}
        clock = time.perf_counter()
        users = self.recall.user_embeddings(requests.user_ids, requests.history)
        out["recall"] = self.recall.candidates(requests, topk_recall, self.index, users)
        self._tick("recall", clock)
        clock = time.perf_counter()
        features = self.features.requests(requests)
        cands = out["recall"]
        rows, positions = cands.pairs()
        cands.scores["cf"] = cands.unflatten(self.features.cf_pairs(features, rows, positions))
        self._tick("features", clock)
        clock = time.perf_counter()
        inputs = self._prerank_inputs(users, cands)
        cands.scores["prerank"] = cands.unflatten(self.prerank.score_pairs(inputs))
        out["prerank"] = cands.top("prerank", keep)
        self._tick("prerank", clock)
        clock = time.perf_counter()
        cands = out["prerank"]
        cands.scores["rank"] = self.rank.score(features, cands)
        out["rank"] = cands.top("rank", keep)
        self._tick("rank", clock)
        clock = time.perf_counter()
        out["rerank"] = self.rerank_list(out["rank"], topk_final, lam)
        self._tick("rerank", clock)
        return out

    def _prerank_inputs(self, users: np.ndarray, cands: Candidates) -> PairInputs:
        """Pre-rank inputs of candidates that carry recall and cf scores; users (B, d)."""
        rows, positions = cands.pairs()
        items = self.recall.item_embeddings()
        recall, cf = cands.scores["recall"][cands.valid], cands.scores["cf"][cands.valid]
        return PairInputs(users, items, rows, positions, recall, cf)

    def _tick(self, stage: str, start: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start

    def rerank_list(self, ranked: Candidates, k: int, lambda_mmr: float) -> Candidates:
        """MMR over the ranked list: relevance is the rank logit min-max scaled per user."""
        valid = ranked.valid
        relevance = relevance_scale(
            np.where(valid, ranked.scores["rank"], 0.0), valid, self.rerank.relevance
        )
        safe = np.where(valid, ranked.items, 0)
        if self.rerank.similarity == "genre":
            vectors = self.genres[safe]
        else:
            vectors = self.recall.item_embeddings()[safe]
        order = mmr(relevance, vectors, k, lambda_mmr, valid)
        return ranked.reorder(order)

    def pair_logits(
        self, requests: Requests, rows: np.ndarray, positions: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Every stage's logit (n,) for arbitrary (request row, catalogue position) pairs,
        e.g. the rated pairs of test for AUC / GAUC / LogLoss; for the rank stage the logit of
        its P(liked | rated) head (the classic CTR quantity)."""
        users = self.recall.user_embeddings(requests.user_ids, requests.history)
        features = self.features.requests(requests)
        recall = self.recall.pair_logits(users, rows, positions)
        cf = self.features.cf_pairs(features, rows, positions)
        items = self.recall.item_embeddings()
        prerank = self.prerank.score_pairs(PairInputs(users, items, rows, positions, recall, cf))
        pairs = RankPairs(rows, positions, recall, prerank, cf)
        rank = self.rank.score_pairs(features, pairs, output="like")
        return {"recall": recall, "prerank": prerank, "rank": rank}


@dataclass
class TrainReport:
    """What training measured, for the run directory and the report."""

    seconds: dict[str, float] = field(default_factory=dict)
    examples: dict[str, Any] = field(default_factory=dict)


def train_funnel(
    ml: MovieLens,
    split: Split,
    *,
    recall_config: RecallConfig,
    stacking: StackingConfig,
    prerank_config: PreRankConfig,
    rank_config: RankConfig,
    rerank_config: RerankConfig,
    funnel_config: FunnelConfig,
    index: ItemIndex | None = None,
    progress: bool = True,
) -> tuple[Funnel, TrainReport]:
    """Train all stages (see the module docstring); `index` is an unbuilt ItemIndex."""
    for cfg in (stacking, prerank_config, rank_config, rerank_config, funnel_config):
        cfg.validate()
    report = TrainReport()
    item_ids = catalogue(ml.ratings)
    rng = np.random.default_rng(prerank_config.seed)

    # 1. Recall on the early part of train.
    start = time.perf_counter()
    recall_split, late = time_slice(split, stacking.slice_fraction)
    recall = RecallStage(recall_config).fit(ml, recall_split, item_ids, progress=progress)
    report.seconds["recall"] = time.perf_counter() - start

    # 2. Replayed slice requests, labelled candidates. Item vectors as of the slice start.
    start = time.perf_counter()
    features = RankFeatureSpace(
        ml,
        split.train,
        item_ids,
        cf_weights=fit_cf(recall_split.train, item_ids),
        window_days=rank_config.popularity_window_days,
        max_sequence=rank_config.max_sequence,
    )
    replay = slice_requests(recall_split.train, late, item_ids, stacking)
    slice_cands = recall.candidates(replay.requests, funnel_config.topk_recall)
    slice_users = recall.user_embeddings(replay.requests.user_ids, replay.requests.history)
    examples = build_examples(
        slice_cands,
        replay.targets,
        lambda rows, items: recall.pair_logits(slice_users, rows, items),
        unrated_negatives=stacking.unrated_negatives,
        rated_pairs=stacking.rated_pairs,
        rng=rng,
    )
    n_replayed = len(replay.requests)
    if stacking.like_pairs:
        replay, slice_users, examples = add_like_pairs(
            replay, slice_users, examples, recall, recall_split.train, late, item_ids, stacking
        )
    slice_cf = features.cf_pairs(features.requests(replay.requests), examples.rows, examples.items)
    slice_inputs = PairInputs(
        slice_users,
        recall.item_embeddings().copy(),
        examples.rows,
        examples.items,
        examples.recall,
        slice_cf,
    )
    report.examples = {
        "slice_start": int(late["timestamp"].min()),
        "slice_ratings": len(late),
        "requests": n_replayed,
        "like_pair_requests": len(replay.requests) - n_replayed,
        "examples": len(examples),
        "positives": int(examples.labels.sum()),
        "from_candidates": int(examples.candidate.sum()),
    }

    # 3. Serving state of recall: popularity as of the end of train, items in the index.
    recall.refresh_popularity(split.train)
    if index is not None:
        index.build(recall.item_embeddings(), item_ids)
    funnel = Funnel(
        item_ids=item_ids,
        recall=recall,
        index=index,
        prerank=PreRankStage(prerank_config),
        rank=RankStage(rank_config),
        rerank=rerank_config,
        funnel=funnel_config,
        features=features,
        genres=ml.genre_matrix(item_ids).astype(np.float32),
        now=int(features.likes.end),
    )
    report.seconds["examples"] = time.perf_counter() - start

    # Valid: warm users, history = train, through the trained recall (and its index).
    ks = {
        20,
        prerank_config.keep,
        funnel_config.topk_recall,
        metric_cutoff(prerank_config.valid_metric, "prerank.valid_metric"),
        metric_cutoff(rank_config.valid_metric, "rank.valid_metric"),
    }
    evaluator = Evaluator(split, item_ids, ks=sorted(ks))
    valid_users = evaluator.users("valid", "warm")
    valid_requests = funnel.requests(valid_users)
    valid_vectors = recall.user_embeddings(valid_users.user_ids, valid_users.history)
    valid_recall = recall.candidates(
        valid_requests, funnel_config.topk_recall, index, valid_vectors
    )
    valid_features = features.requests(valid_requests)
    rows, positions = valid_recall.pairs()
    valid_recall.scores["cf"] = valid_recall.unflatten(
        features.cf_pairs(valid_features, rows, positions)
    )
    valid_inputs = funnel._prerank_inputs(valid_vectors, valid_recall)

    def prerank_valid(stage: PreRankStage) -> float:
        cands = Candidates(valid_recall.items, dict(valid_recall.scores))
        cands.scores["prerank"] = cands.unflatten(stage.score_pairs(valid_inputs))
        top = cands.top("prerank", prerank_config.keep)
        return evaluator.list_metrics(top.items, valid_users)[prerank_config.valid_metric]

    # 4. Pre-rank, then cross-fitted out-of-fold logits for the rank stage's input.
    start = time.perf_counter()
    # Pre-rank learns on candidates only: at serving it sees nothing else.
    cand = examples.candidate
    funnel.prerank.fit(
        slice_inputs.subset(cand), examples.labels[cand], prerank_valid, progress=progress
    )
    oof = cross_fit_prerank(
        prerank_config,
        slice_inputs,
        examples.labels,
        cand,
        folds=stacking.folds,
        epochs=max(funnel.prerank.log_.best_epoch, 1),
        seed=prerank_config.seed,
    )
    report.seconds["prerank"] = time.perf_counter() - start

    # 5. Rank on the same examples, with early stopping on the funnel's valid list.
    valid_prerank = Candidates(valid_recall.items, dict(valid_recall.scores))
    valid_prerank.scores["prerank"] = valid_prerank.unflatten(
        funnel.prerank.score_pairs(valid_inputs)
    )
    valid_prerank = valid_prerank.top("prerank", prerank_config.keep)

    def rank_valid(stage: RankStage) -> float:
        cands = Candidates(valid_prerank.items, dict(valid_prerank.scores))
        cands.scores["rank"] = stage.score(valid_features, cands)
        top = cands.top("rank", prerank_config.keep)
        return evaluator.list_metrics(top.items, valid_users)[rank_config.valid_metric]

    start = time.perf_counter()
    funnel.rank.fit(
        features, replay.requests, examples, oof, slice_cf, rank_valid, progress=progress
    )
    report.seconds["rank"] = time.perf_counter() - start
    return funnel, report


def cross_fit_prerank(
    config: PreRankConfig,
    inputs: PairInputs,
    labels: np.ndarray,
    trainable: np.ndarray,
    *,
    folds: int,
    epochs: int,
    seed: int,
) -> np.ndarray:
    """Out-of-fold pre-rank logits (n,): requests are split into `folds` groups; each group's
    pairs are scored by a model trained on the other groups' `trainable` (n,) pairs only."""
    n_requests = len(inputs.users)
    fold_of = np.random.default_rng(seed).permutation(n_requests) % folds
    out = np.empty(len(labels), dtype=np.float64)
    for fold in range(folds):
        held = fold_of[inputs.rows] == fold
        learn = ~held & trainable
        model = PreRankStage(config).fit(
            inputs.subset(learn), labels[learn], epochs=epochs, progress=False
        )
        out[held] = model.score_pairs(inputs.subset(held))
    return out


__all__ = ["STAGES", "Funnel", "FunnelConfig", "TrainReport", "cross_fit_prerank", "train_funnel"]
