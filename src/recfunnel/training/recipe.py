"""The training recipe: every stage of the funnel, trained without stacking leakage.

Reading `train_funnel` top to bottom is the recipe:
  1. cut train in time: the recall channels and the item-to-item model learn on the early
     80 %, the later stages on the latest 20 % (see `stacking`), so the scores they read are
     out of sample;
  2. replay the slice users' requests through recall and item-to-item, and label the
     candidates with what the users did next; with `stacking.cuts` > 1, do steps 1 and 2
     again at earlier cuts (models fitted on less, then dropped) for more rank examples;
  3. refit the channels that allow it and the item-to-item model on all of train for
     serving (`stacking.refit`), and move recall's serving state (popularity inputs, the
     index) to the end of train; then choose the fusion's channel weights on valid
     (`recall.rrf_weights = none`, 1 each unless valid clearly disagrees);
  4. train pre-rank (early stopping on valid), choose on valid how far its kept list is
     shrunk towards recall's order (`prerank.prior_weight = none`, by the kept list's
     `prerank.prior_metric`, NDCG@20), then cross-fit it to get out-of-fold logits;
  5. train rank on the same examples with those logits, plus the earlier cuts' examples
     with logits cross-fitted on each cut alone (early stopping on valid), then
     calibrate its like head on valid's rated pairs (`rank.calibrate`: Platt's scale and shift);
  6. choose the re-ranker's operating point (lambda) on valid (`rerank.lambda_mmr = none`,
     the default): the most varied list within 2 % of the rank order's NDCG@20.
Validation runs the funnel's own chain (`Funnel.run`) on the valid users.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from recfunnel.data.dataset import MovieLens
from recfunnel.data.split import Split
from recfunnel.device import resolve_device
from recfunnel.errors import ConfigError
from recfunnel.evaluation.bootstrap import per_user_metric
from recfunnel.evaluation.protocol import Evaluator, catalogue, metric_cutoff, rated_pairs
from recfunnel.features import serving_time
from recfunnel.funnel import Funnel
from recfunnel.item_to_item import ItemToItem
from recfunnel.prerank import PreRankConfig, PreRankStage
from recfunnel.rank import RankStage
from recfunnel.recall import RecallStage
from recfunnel.rerank import MMRReranker
from recfunnel.rerank.report import operating_point
from recfunnel.stage import Component, FitData, Stacked
from recfunnel.training import distributed
from recfunnel.training.stacking import (
    add_like_pairs,
    build_examples,
    sample_slice_users,
    slice_requests,
    time_slice,
)
from recfunnel.types import Candidates, Embeddings, Pairs

if TYPE_CHECKING:  # run.py builds on this module; the config class lives there
    from recfunnel.run import PipelineConfig


@dataclass
class TrainReport:
    """What training measured, for the run directory and the report."""

    seconds: dict[str, float] = field(default_factory=dict)
    examples: dict[str, Any] = field(default_factory=dict)
    choices: dict[str, Any] = field(default_factory=dict)  # settings chosen on a holdout
    trained_on: dict[str, Any] = field(default_factory=dict)  # device and process count


def train_funnel(
    ml: MovieLens, split: Split, config: PipelineConfig, *, progress: bool = True
) -> tuple[Funnel, TrainReport]:
    """Train all stages of `config` (see the module docstring) on `split`."""
    config = config.seeded()  # a top-level seed, when set, feeds every stage
    recall_config, stacking = config.recall, config.stacking
    item_to_item_config, prerank_config = config.item_to_item, config.prerank
    rank_config, rerank_config, funnel_config = config.rank, config.rerank, config.funnel
    for cfg in (stacking, item_to_item_config, prerank_config, rank_config, rerank_config):
        cfg.validate()
    funnel_config.validate()
    report = TrainReport()
    item_ids = catalogue(ml.ratings)
    if funnel_config.topk_recall > len(item_ids):  # the run could never serve its own size
        raise ConfigError(
            f"funnel.topk_recall must be <= {len(item_ids):,} (the catalogue size), "
            f"got {funnel_config.topk_recall:,}"
        )
    # Unbuilt: recall searches exactly until step 3. "auto" picks by the catalogue's size.
    index = config.index.build(len(item_ids))
    device = str(resolve_device(config.device))
    data = FitData(ml, split, item_ids, progress, device=device, scale=config.scale)
    report.trained_on = {"device": device, "processes": distributed.world().size}
    rng = np.random.default_rng(prerank_config.seed)

    # 1. Recall and item-to-item on the early part of train.
    # 2. Replayed slice requests through the early models, candidates labelled.
    recall_split, late = time_slice(split, stacking.slice_fraction)
    latest = replay_cut(data, recall_split, late, config, index, rng, seconds=report.seconds)
    recall, item_to_item, stacked = latest.recall, latest.item_to_item, latest.stacked
    report.examples = dict(latest.counts)
    del latest  # step 3 refits item-to-item: nothing else may keep the early fit alive
    # Earlier cuts (stacking.cuts > 1): steps 1 and 2 again at earlier moments, for more
    # rank examples; their models are dropped once they have replayed their slices.
    start = time.perf_counter()
    skipped: list[str] = []
    cuts = earlier_cuts(data, recall_split, config, skipped=skipped)
    earlier = [c.stacked for c in cuts]  # their examples; the models go with `cuts`
    if cuts:
        report.examples["earlier_cuts"] = [c.counts for c in cuts]
        report.seconds["earlier_cuts"] = time.perf_counter() - start
    del cuts
    if skipped:
        report.examples["earlier_cuts_skipped"] = skipped

    # 3. Serving state: the channels that allow it, and the item-to-item score, refitted on
    # all of train (they then know the slice's ratings too); every channel's serving inputs
    # (popularity, the index) as of the end of train.
    if stacking.refit:
        start_refit = time.perf_counter()
        report.examples["refitted"] = recall.refit(data)
        item_to_item = ItemToItem(item_to_item_config).fit(data)
        report.seconds["refit"] = time.perf_counter() - start_refit
    recall.refresh(split.train)
    stages: dict[str, Component] = {
        "recall": recall,
        "item_to_item": item_to_item,
        "prerank": PreRankStage(prerank_config),
        "rank": RankStage(rank_config),
        "rerank": MMRReranker(rerank_config).fit(data),
    }
    funnel = Funnel(stages, funnel_config, item_ids, now=serving_time(split.train))

    # Valid: warm users, history = train, through the funnel's own chain.
    ks = {
        20,
        prerank_config.keep,
        funnel_config.topk_recall,
        metric_cutoff(prerank_config.valid_metric, "prerank.valid_metric"),
        metric_cutoff(prerank_config.prior_metric, "prerank.prior_metric"),
        metric_cutoff(rank_config.valid_metric, "rank.valid_metric"),
    }
    evaluator = Evaluator(split, item_ids, ks=sorted(ks))
    valid_users = evaluator.users("valid", "warm")
    valid_requests = funnel.requests(valid_users)
    # The fusion's channel weights, with the serving channels. The replayed candidates above
    # were fused 1 each; the later stages read per-channel scores and ranks, which the
    # weights do not change, so only which candidates reach the top k can differ.
    fused = recall_config.merge == "rrf" and len(recall.channels) > 1
    if recall_config.rrf_weights is None and fused:
        start = time.perf_counter()
        report.choices["recall.rrf_weights"] = {
            **recall.choose_weights(valid_requests, valid_users.truth, k=funnel_config.topk_recall),
            "holdout": "valid, warm users",
        }
        report.seconds["fusion_weights"] = time.perf_counter() - start
    valid_lists = funnel.run(valid_requests, upto="item_to_item")

    def valid_metric(
        stage_name: str, metric: str, *, per_user: bool = False
    ) -> Callable[[Component], Any]:
        """`metric` of the valid users' list after `stage_name`, the stages before it fixed:
        the mean, or with `per_user` each user's value (n_users,), for a paired judgement."""
        before = list(funnel.stages)[list(funnel.stages).index(stage_name) - 1]

        def validate(stage: Component) -> Any:
            out = funnel.run(valid_requests, upto=stage_name, resume=(before, valid_lists[before]))
            if per_user:
                return per_user_metric(out[stage_name].items, valid_users, metric)
            return evaluator.list_metrics(out[stage_name].items, valid_users)[metric]

        return validate

    # 4. Pre-rank on the candidates (at serving it sees nothing else), then cross-fitted
    # out-of-fold logits for the rank stage's input.
    start = time.perf_counter()
    funnel["prerank"].fit(
        data,
        stacked.subset(stacked.pairs.candidate),
        valid_metric("prerank", prerank_config.valid_metric),
        choose=valid_metric("prerank", prerank_config.prior_metric, per_user=True),
    )
    if funnel["prerank"].prior_choice_ is not None:  # w chosen on valid (prior_weight none)
        report.choices["prerank.prior_weight"] = {
            **funnel["prerank"].prior_choice_,
            "users": len(valid_users.user_ids),
        }
    oof = cross_fit_prerank(
        prerank_config,
        stacked,
        folds=stacking.folds,
        epochs=max(funnel["prerank"].log_.best_epoch, 1),
        seed=prerank_config.seed,
        device=device,
    )
    report.seconds["prerank"] = time.perf_counter() - start

    # 5. Rank on the same examples, with early stopping on the funnel's valid list.
    start = time.perf_counter()
    valid_lists.update(
        funnel.run(
            valid_requests, upto="prerank", resume=("item_to_item", valid_lists["item_to_item"])
        )
    )
    rank_stacked = Stacked(stacked.requests, stacked.pairs.with_scores("prerank", oof))
    if earlier:
        rank_stacked = with_earlier_cuts(
            rank_stacked,
            earlier,
            prerank_config,
            folds=stacking.folds,
            epochs=max(funnel["prerank"].log_.best_epoch, 1),
            device=device,
        )
    # Valid's rated pairs (history: train): the like head's own holdout, for when it stops
    # learning (rank.like_stopping) and for its temperature.
    pairs = rated_pairs(split.valid, valid_users.user_ids, item_ids)
    scored = funnel.score_pairs(valid_requests, pairs, upto="prerank")
    funnel["rank"].fit(
        data,
        rank_stacked,
        valid_metric("rank", rank_config.valid_metric),
        like_holdout=(valid_requests, scored) if len(pairs.rows) else None,
    )
    if funnel["rank"].like_stopped_after_ is not None:
        report.choices["rank.like_stopping"] = {
            "stopped_after_epoch": funnel["rank"].like_stopped_after_,
            "holdout": "valid, rated pairs of warm users",
            "pairs": len(pairs.rows),
        }
    # Rank's blend weight may rise (never fall) where valid clearly says its own order hurts.
    raised = funnel["rank"].raise_prior(
        valid_metric("rank", rank_config.valid_metric, per_user=True)
    )
    if raised is not None:
        report.choices["rank.prior_weight"] = {
            **raised,
            "holdout": "valid, warm users",
            "users": len(valid_users.user_ids),
        }
    if rank_config.calibrate:
        report.choices["rank.calibration"] = funnel["rank"].calibrate(valid_requests, scored)
    report.seconds["rank"] = time.perf_counter() - start

    # 6. The re-ranker's lambda, unless the config fixes it.
    if rerank_config.lambda_mmr is None:
        start = time.perf_counter()
        report.choices["rerank.lambda_mmr"] = choose_operating_point(funnel, data)
        report.seconds["operating_point"] = time.perf_counter() - start
    return funnel, report


def choose_operating_point(funnel: Funnel, data: FitData) -> dict[str, Any]:
    """Set the re-ranker's lambda to `choose_lambda` of its sweep on valid's warm users
    (history = train), and say what was chosen and on what.

    Why all of valid and not only its users who come back after a pause (the "return"
    group, closer to test in kind): on ML-1M the returning users ordered the report's lists
    less like test did (bench/holdout.py: Kendall's tau 0.55 against 0.67), and they are
    fewer (282 of 492), so the choice would be noisier."""
    rerank = funnel["rerank"]
    evaluator = Evaluator(
        data.split,
        data.item_ids,
        ks=(20,),
        item_features=data.ml.genre_matrix(data.item_ids),
        ild_ks=(20,),
    )
    holdout, users = "valid, warm users", evaluator.users("valid", "warm")
    requests = funnel.requests(users)
    ranked = funnel.run(requests, upto="rank")["rank"]
    lam, rows = operating_point(
        rerank,
        requests,
        ranked,
        evaluator,
        users,
        k=funnel.sizes.topk_final,
        max_ndcg_loss=rerank.config.max_ndcg_loss,
    )
    funnel.stages["rerank"] = rerank.with_config(lambda_mmr=lam)
    return {
        "lambda": lam,
        "holdout": holdout,
        "users": len(users.user_ids),
        "max_ndcg_loss": rerank.config.max_ndcg_loss,
        "ndcg@20": rows[lam]["ndcg@20"],
        "ild@20": rows[lam]["ild@20"],
        "ndcg@20 at lambda 1": rows[1.0]["ndcg@20"],
        "ild@20 at lambda 1": rows[1.0]["ild@20"],
    }


@dataclass(frozen=True)
class Cut:
    """Steps 1 and 2 at one cut in time: the recall stage and item-to-item model fitted on
    the ratings before it, and the slice's requests replayed through them, labelled
    (`stacked`, the pairs carrying their out-of-sample scores); counts for the report."""

    recall: RecallStage
    item_to_item: ItemToItem
    stacked: Stacked
    counts: dict[str, int]


def replay_cut(
    data: FitData,
    recall_split: Split,
    late: pd.DataFrame,
    config: PipelineConfig,
    index: Any,
    rng: np.random.Generator,
    *,
    seconds: dict[str, float] | None = None,
) -> Cut:
    """Fit recall and item-to-item on `recall_split.train` (everything before the cut),
    then replay the slice `late` (the ratings after it) through them (see `stacking`).
    `seconds`, when given, gets the time of the recall fit ("recall") and of the rest
    ("examples")."""
    stacking, k = config.stacking, config.funnel.topk_recall
    start = time.perf_counter()
    early = data.with_split(recall_split)
    recall = RecallStage(config.recall, index=index).fit(early)
    fitted = time.perf_counter()
    item_to_item = ItemToItem(config.item_to_item).fit(early)
    late = sample_slice_users(late, stacking.user_fraction, rng)
    replay = slice_requests(recall_split.train, late, data.item_ids, stacking)
    requests = replay.requests
    candidates = recall(requests, Candidates.empty(len(requests)), k=k)
    # Item vectors as of the slice start: a copy, since step 3 moves the serving ones.
    emb = candidates.embeddings
    assert emb is not None
    candidates = Candidates(
        candidates.items,
        candidates.scores,
        candidates.channels,
        Embeddings(emb.users, emb.items.copy()),
    )
    examples = build_examples(
        candidates,
        replay.targets,
        lambda pairs: recall.score_pairs(requests, pairs),
        unrated_negatives=stacking.unrated_negatives,
        rated_pairs=stacking.rated_pairs,
        rng=rng,
    )
    n_replayed = len(requests)
    if stacking.like_pairs:
        replay, examples = add_like_pairs(
            replay, examples, recall.score_pairs, recall_split.train, late, data.item_ids, stacking
        )
    stacked = Stacked(replay.requests, item_to_item.score_pairs(replay.requests, examples))
    counts = {
        "slice_start": int(late["timestamp"].min()),
        "slice_ratings": len(late),
        "requests": n_replayed,
        "like_pair_requests": len(replay.requests) - n_replayed,
        "examples": len(examples),
        "positives": int(np.asarray(examples.labels).sum()),
        "from_candidates": int(np.asarray(examples.candidate).sum()),
    }
    if seconds is not None:
        seconds["recall"] = fitted - start
        seconds["examples"] = time.perf_counter() - fitted
    return Cut(recall, item_to_item, stacked, counts)


def earlier_cuts(
    data: FitData, recall_split: Split, config: PipelineConfig, *, skipped: list[str] | None = None
) -> list[Cut]:
    """The `stacking.cuts - 1` cuts before the latest (whose early part is `recall_split`),
    latest first: cut i's slice is the slice_fraction of train just before cut i - 1, and
    its recall and item-to-item models learn on everything before it. Each cut draws its
    examples from its own generator, so the latest cut's stay those of a one-cut run.

    Data too short for a cut (nothing left before it, or no user returning in its slice)
    ends the list there instead of failing the run: the earlier cuts only add examples.
    Why goes to `skipped` (one line)."""
    stacking, cuts = config.stacking, []
    previous = recall_split
    for i in range(1, stacking.cuts):
        share = stacking.slice_fraction / (1 - i * stacking.slice_fraction)  # of what is left
        try:  # both checks are cheap; the fits below are not
            previous, late = time_slice(previous, share)
            slice_requests(previous.train, late, data.item_ids, stacking)
        except ConfigError as error:
            if skipped is not None:
                skipped.append(f"cut {i} of {stacking.cuts - 1} and any before it: {error}")
            break
        index = config.index.build(len(data.item_ids))  # unbuilt: exact search, as step 1
        rng = np.random.default_rng([config.prerank.seed, i])
        cuts.append(replay_cut(data, previous, late, config, index, rng))
    return cuts


def with_earlier_cuts(
    latest: Stacked,
    earlier: list[Stacked],
    config: PreRankConfig,
    *,
    folds: int,
    epochs: int,
    device: str = "cpu",
) -> Stacked:
    """The rank stage's examples: the latest cut's (carrying its out-of-fold pre-rank
    logits), then each earlier cut's (`Cut.stacked`) with logits cross-fitted on that cut
    alone. Pre-rank reads the recall vectors, and every cut has a recall fit of its own, so
    a pre-rank model of one cut cannot score another's pairs."""
    parts = [latest]
    for part in earlier:
        oof = cross_fit_prerank(
            config, part, folds=folds, epochs=epochs, seed=config.seed, device=device
        )
        parts.append(Stacked(part.requests, part.pairs.with_scores("prerank", oof)))
    return stack_examples(parts)


def stack_examples(parts: list[Stacked]) -> Stacked:
    """The examples of several cuts as one: requests one after another, each part's pair
    rows shifted by the requests before it; the scores every part carries. No embeddings:
    each cut's recall vectors live in their own space (only pre-rank reads them)."""
    requests, pairs = parts[0].requests, parts[0].pairs.with_embeddings(None)
    for part in parts[1:]:
        p = part.pairs
        rows = p.rows + len(requests)
        shifted = Pairs(rows, p.items, p.scores, None, p.labels, p.rated, p.candidate)
        requests, pairs = requests.concat(part.requests), pairs.concat(shifted)
    return Stacked(requests, pairs)


def cross_fit_prerank(
    config: PreRankConfig,
    stacked: Stacked,
    *,
    folds: int,
    epochs: int,
    seed: int,
    device: str = "cpu",
) -> np.ndarray:
    """Out-of-fold pre-rank logits (n,): the requests are split into `folds` groups; each
    group's pairs are scored by a model trained on the other groups' candidate pairs only."""
    pairs = stacked.pairs
    fold_of = np.random.default_rng(seed).permutation(len(stacked.requests)) % folds
    out = np.empty(len(pairs), dtype=np.float64)
    for fold in range(folds):
        held = fold_of[pairs.rows] == fold
        learn = ~held & np.asarray(pairs.candidate)
        model = PreRankStage(config).fit(None, stacked.subset(learn), epochs=epochs, device=device)
        out[held] = model.score_pairs(stacked.requests, pairs.subset(held)).scores["prerank"]
    return out


__all__ = [
    "Cut",
    "TrainReport",
    "choose_operating_point",
    "cross_fit_prerank",
    "earlier_cuts",
    "replay_cut",
    "stack_examples",
    "train_funnel",
    "with_earlier_cuts",
]
