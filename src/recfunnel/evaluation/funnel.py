"""The funnel measured end to end on one held-out part, exactly under the protocol.

Every stage's output list is scored with the protocol's top-N metrics against the same liked
items, so the table shows what each stage adds (or costs): recall's top-20 by its own score,
pre-rank's and rank's top-20, and the re-ranked final list. Retention is the share of the
recall stage's hits (liked items among its 200) that survive a stage's cut. Pointwise metrics
(AUC, GAUC, LogLoss) are computed over the part's rated pairs. Popularity and EASE are scored
on the same users with the same input history.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from recfunnel.data.split import Split, SplitName
from recfunnel.errors import ConfigError
from recfunnel.evaluation import metrics
from recfunnel.evaluation.baselines import EASE, Popularity
from recfunnel.evaluation.bootstrap import (
    DRAWS,
    SEED,
    difference,
    intervals_report,
    per_user_scores,
)
from recfunnel.evaluation.protocol import RETURN_GAP_DAYS, Evaluator, EvalUsers, rated_pairs
from recfunnel.funnel import STAGES, Funnel
from recfunnel.rank.report import pointwise_scores
from recfunnel.rerank.report import lambda_sweep
from recfunnel.rerank.stage import METHODS
from recfunnel.types import Candidates

LAMBDAS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
LIST_KEYS = ("ndcg@20", "recall@20", "precision@20", "hit_rate@20", "ild@20")


def _list_row(
    evaluator: Evaluator, users: EvalUsers, cands: Candidates, recall_hits: float
) -> dict[str, float]:
    k = cands.items.shape[1]
    row = evaluator.list_metrics(cands.items, users)
    out = {key: row[key] for key in LIST_KEYS if key in row}
    out["candidates"] = k
    out[f"recall@{k}"] = row.get(f"recall@{k}", np.nan)
    hits = metrics.hit_matrix(cands.items, users.truth).sum()
    out["retention"] = float(hits / recall_hits) if recall_hits else float("nan")
    return out


def evaluate_funnel(
    funnel: Funnel,
    split: Split,
    genres: np.ndarray,
    *,
    part: SplitName = "test",
    lambdas: Sequence[float] = LAMBDAS,
    users: Literal["warm", "return"] = "warm",
) -> dict[str, Any]:
    """The report dict of `recfunnel.evaluation.report` (its docstring gives the schema).

    `users`: the evaluated warm users, all of them ("warm", the protocol's) or only those
    who come back after a pause ("return", see `protocol.RETURN_GAP_DAYS`): on valid, the
    holdout that resembles the test task. The report's "users" then says "return"."""
    if users not in ("warm", "return"):
        raise ConfigError(f"users must be 'warm' or 'return', got {users!r}")
    history = "known" if part == "test" else "train"
    ks = sorted({10, 20, funnel.keep, funnel.sizes.topk_recall})
    evaluator = Evaluator(
        split, funnel.item_ids, ks=ks, history=history, item_features=genres, ild_ks=(20,)
    )
    report: dict[str, Any] = {
        "title": f"Funnel report ({part}, {split.kind} temporal split)",
        "part": part,
        "history": history,
        "users": {},
        "user_group": users,
        "stages": {},
        "cold": {},
        "rerank": {
            "method": funnel["rerank"].config.method,
            "lambda_mmr": funnel["rerank"].config.lambda_mmr,
            "similarity": funnel["rerank"].config.similarity,
        },
    }
    if users == "return":
        report["title"] += f", users back after >= {RETURN_GAP_DAYS:g} days"
    main_group = users
    for group in (main_group, "cold"):
        users = evaluator.users(part, group)
        report["users"][group] = len(users.user_ids)
        if not len(users.user_ids) and group == main_group:
            raise ConfigError(f"no {main_group} user to evaluate on the {part} part")
        if not len(users.user_ids):
            continue
        requests = funnel.requests(users)
        funnel.timings.clear()
        start = time.perf_counter()
        lists = funnel.run(requests)
        seconds = time.perf_counter() - start
        recall_hits = metrics.hit_matrix(lists["recall"].items, users.truth).sum()
        rows = {}
        for stage in STAGES:
            # @20 metrics read each list's first 20 columns: for recall, its own top-20.
            row = _list_row(evaluator, users, lists[stage], recall_hits)
            # The item-to-item score is a pre-rank input: its time counts with pre-rank.
            own = funnel.timings.get(stage, 0.0)
            if stage == "prerank":
                own += funnel.timings.get("item_to_item", 0.0)
            row["latency_ms_per_user"] = 1000 * own / len(users.user_ids)
            rows[stage] = row
        report["stages" if group == main_group else "cold"] = rows
        if group == main_group:
            report["timing"] = {"funnel_seconds_all_warm_users": seconds}
            # The configured re-ranker's sweep, and both methods' for the Pareto plot.
            rerank = funnel["rerank"]
            # The configured lambda among the swept ones, so its point is on the curve.
            lambdas = sorted({*lambdas, float(rerank.config.lambda_mmr)})
            report["rerank_sweeps"] = {
                method: lambda_sweep(
                    rerank.with_method(method),
                    requests,
                    lists["rank"],
                    evaluator,
                    users,
                    k=funnel.sizes.topk_final,
                    lambdas=lambdas,
                    keys=LIST_KEYS,
                )
                for method in METHODS
            }
            report["lambda_sweep"] = report["rerank_sweeps"][rerank.config.method]
            report["pointwise"] = _pointwise_report(funnel, split, part, users, requests)
            report["prerank_target"] = _prerank_target(funnel, requests, lists, users)
            baselines = _baselines(split, funnel.item_ids, evaluator, users)
            baselines |= _channel_baselines(funnel, requests, evaluator, users)
            report["baselines"] = {name: row for name, (row, _) in baselines.items()}
            per_user = {stage: per_user_scores(lists[stage].items, users) for stage in STAGES}
            per_user |= {name: per_user_scores(top, users) for name, (_, top) in baselines.items()}
            # Each stage against the one before it and against EASE, the final list against
            # recall's own top 20: the questions "does this stage earn its place?".
            comparisons = [(b, a) for a, b in zip(STAGES, STAGES[1:], strict=False)]
            comparisons += [(stage, "EASE") for stage in STAGES]
            comparisons.append((STAGES[-1], STAGES[0]))
            # And the final list against the best single model of the report (by mean
            # NDCG@20; the first listed on a tie: EASE before a channel equal to it).
            best = max(baselines, key=lambda name: baselines[name][0].get("ndcg@20", -1.0))
            if best != "EASE":
                comparisons.append((STAGES[-1], best))
            report["intervals"] = {
                "draws": DRAWS,
                "seed": SEED,
                "best_baseline": best,
                **intervals_report(per_user, comparisons),
            }
    report["training"] = {
        "recall": funnel["recall"].scorer.log_.to_dict(),
        "prerank": funnel["prerank"].log_.to_dict(),
        "rank": funnel["rank"].log_.to_dict(),
    }
    return report


def _pointwise_report(
    funnel: Funnel, split: Split, part: SplitName, users: EvalUsers, requests: Any
) -> dict[str, dict[str, Any]]:
    pairs = rated_pairs(split.part(part), users.user_ids, funnel.item_ids)
    labels = np.asarray(pairs.labels, dtype=np.float64)
    scores = funnel.score_pairs(requests, pairs).scores
    # For rank, the logit of its P(liked | rated) head: the classic CTR quantity.
    logits = {"recall": scores["recall"], "prerank": scores["prerank"], "rank": scores["rank.like"]}
    return {
        stage: pointwise_scores(labels, pairs.rows, logit, calibrated=stage == "rank")
        for stage, logit in logits.items()
    }


def _prerank_target(
    funnel: Funnel, requests: Any, lists: dict[str, Candidates], users: EvalUsers
) -> dict[str, Any]:
    """Pre-rank on the pairs its probability is about: every recall candidate of the
    evaluated users (pre-rank trains on candidates, label "liked later"), labelled 1 when
    the movie is a liked movie of the part. AUC, GAUC, LogLoss, ECE and the reliability bins
    of sigmoid(logit)."""
    pairs = lists["item_to_item"].pairs()
    logits = funnel["prerank"].score_pairs(requests, pairs).scores["prerank"]
    labels = np.asarray(users.truth[pairs.rows, pairs.items]).ravel().astype(np.float64)
    out = pointwise_scores(labels, pairs.rows, np.asarray(logits), calibrated=True)
    return {
        **out,
        "pairs": float(len(labels)),
        "positive_share": float(labels.mean()) if len(labels) else float("nan"),
    }


def _channel_baselines(
    funnel: Funnel, requests: Any, evaluator: Evaluator, users: EvalUsers
) -> dict[str, tuple[dict[str, float], np.ndarray]]:
    """With several recall channels, each one alone as a full ranker: its own top 20 of
    the catalogue (the recall list is their fusion). name "channel <name>" -> (its list
    metrics, its top-20 lists (n_users, 20))."""
    channels = funnel["recall"].channels
    if len(channels) < 2:
        return {}
    out = {}
    for name, channel in channels.items():
        top = channel(requests, k=20).items
        row = evaluator.list_metrics(top, users)
        out[f"channel {name}"] = ({k: row[k] for k in LIST_KEYS if k in row}, top)
    return out


def _baselines(
    split: Split, item_ids: np.ndarray, evaluator: Evaluator, users: EvalUsers
) -> dict[str, tuple[dict[str, float], np.ndarray]]:
    """name -> (its list metrics, its top-20 lists (n_users, 20))."""
    out = {}
    for name, model in (("popularity", Popularity()), ("EASE", EASE())):
        model.fit(split.train, item_ids)
        top = evaluator.rank(model, users, 20)
        row = evaluator.list_metrics(top, users)
        out[name] = ({k: row[k] for k in LIST_KEYS if k in row}, top)
    return out


def compare_funnels(
    a: Funnel,
    b: Funnel,
    split: Split,
    *,
    part: SplitName = "test",
    users: Literal["warm", "return"] = "warm",
) -> list[dict[str, Any]]:
    """Every stage's list of funnel `a` against the same stage of `b`, on the same warm users
    of `part` (or its returning users, `users="return"`): one row per (stage, metric) with
    both means and the paired bootstrap interval of a - b."""
    if not np.array_equal(a.item_ids, b.item_ids):
        raise ConfigError("the two runs were trained on different catalogues")
    history = "known" if part == "test" else "train"
    evaluator = Evaluator(split, a.item_ids, ks=(20,), history=history)
    group = evaluator.users(part, users)
    scores = {}
    for name, funnel in (("a", a), ("b", b)):
        lists = funnel.run(funnel.requests(group))
        scores[name] = {stage: per_user_scores(lists[stage].items, group) for stage in STAGES}
    rows = []
    for stage in STAGES:
        for metric in ("ndcg@20", "recall@20"):
            first, second = scores["a"][stage][metric], scores["b"][stage][metric]
            diff = difference(first, second)
            rows.append(
                {
                    "stage": stage,
                    "metric": metric,
                    "users": len(group.user_ids),
                    "a": float(first.mean()),
                    "b": float(second.mean()),
                    "a - b": diff["mean"],
                    "low": diff["low"],
                    "high": diff["high"],
                }
            )
    return rows
