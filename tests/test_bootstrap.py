"""Paired bootstrap intervals over users: hand-checkable cases and the normal approximation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recfunnel.evaluation.bootstrap import (
    difference,
    interval,
    intervals_report,
    per_user_metric,
    per_user_scores,
)
from recfunnel.evaluation.protocol import EvalUsers
from recfunnel.evaluation.report import render_markdown
from recfunnel.types import History


def test_a_constant_has_a_zero_width_interval_and_a_list_equals_itself():
    assert interval(np.full(50, 0.25)) == {"mean": 0.25, "low": 0.25, "high": 0.25}
    a = np.random.default_rng(1).random(200)
    assert difference(a, a) == {"mean": 0.0, "low": 0.0, "high": 0.0}


def test_the_interval_matches_the_normal_approximation_and_is_seeded():
    values = np.random.default_rng(2).normal(0.3, 0.2, size=2000)
    out = interval(values, draws=2000)
    half = 1.96 * values.std() / np.sqrt(len(values))
    assert out["low"] < values.mean() < out["high"]
    assert (out["high"] - out["low"]) / 2 == pytest.approx(half, rel=0.1)
    assert interval(values, draws=2000) == out  # same seed, same draws
    assert interval(values, draws=2000, seed=1) != out


def test_pairing_cancels_the_spread_the_two_lists_share():
    rng = np.random.default_rng(3)
    users = rng.random(1000)  # most of the spread is the users'
    a, b = users + 0.01 + rng.normal(0, 0.01, 1000), users
    paired = difference(a, b)
    width_paired = paired["high"] - paired["low"]
    width_alone = interval(a)["high"] - interval(a)["low"]
    assert paired["low"] > 0  # a real +0.01 the users' spread would hide
    assert width_paired < width_alone / 10
    with pytest.raises(ValueError, match="same users"):
        difference(a, b[:10])


def _users(truth_rows: list[list[int]], n_items: int) -> EvalUsers:
    rows = [r for r, items in enumerate(truth_rows) for _ in items]
    cols = [i for items in truth_rows for i in items]
    truth = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(truth_rows), n_items))
    empty = sp.csr_matrix((len(truth_rows), n_items))
    return EvalUsers(np.arange(1, len(truth_rows) + 1), truth, empty, History(empty, empty))


def test_per_user_scores_are_the_protocols_gains():
    users = _users([[0], [1, 2]], n_items=25)
    topk = np.array([[0, *range(3, 22)], [5, 2, *range(6, 24)]])
    scores = per_user_scores(topk, users)
    # User 1: the hit at rank 1, NDCG 1. User 2: one of two hits at rank 2.
    ideal = 1 + 1 / np.log2(3)
    np.testing.assert_allclose(scores["ndcg@20"], [1.0, (1 / np.log2(3)) / ideal])
    np.testing.assert_allclose(scores["recall@20"], [1.0, 0.5])


def test_per_user_metric_means_are_the_evaluators_numbers():
    """What pre-rank's blend weight is chosen by (one value per valid user): each metric's
    mean is `Evaluator.list_metrics`'s, for cut-offs inside and beyond the list."""
    from recfunnel.evaluation.metrics import clearly_better
    from recfunnel.evaluation.protocol import Evaluator

    rng = np.random.default_rng(4)
    users = _users([list(rng.choice(30, rng.integers(1, 6), replace=False)) for _ in range(40)], 30)
    topk = np.stack([rng.permutation(30)[:12] for _ in range(40)])
    evaluator = Evaluator.__new__(Evaluator)  # list_metrics reads only ks, ild_ks, item_ids
    evaluator.ks, evaluator.ild_ks, evaluator.item_ids = (5, 12, 20), (), np.arange(30)
    expected = evaluator.list_metrics(topk, users)
    for name in ("ndcg@5", "recall@12", "hit_rate@20", "precision@5", "ndcg@20"):
        values = per_user_metric(topk, users, name)
        assert values.shape == (40,) and values.mean() == pytest.approx(expected[name], abs=1e-12)
    # The holdout's verdict: a paired gain of 3 standard errors, not a higher mean alone.
    base = rng.random(400)
    assert clearly_better(base + 0.05, base) and not clearly_better(base, base)
    noisy = base + rng.normal(0.01, 0.3, 400)  # mean +0.01, standard error 0.015
    assert noisy.mean() > base.mean() and not clearly_better(noisy, base)
    assert not clearly_better(base[:1] + 1, base[:1])  # one user: no spread to judge by


def test_the_report_section_and_its_markdown():
    rng = np.random.default_rng(4)
    lists = {
        name: {"ndcg@20": rng.random(100), "recall@20": rng.random(100)} for name in ("a", "b")
    }
    section = intervals_report(lists, [("a", "b")], draws=200)
    assert set(section["lists"]) == {"a", "b"}
    diff = section["differences"]["a - b"]["ndcg@20"]
    assert diff["mean"] == pytest.approx(
        lists["a"]["ndcg@20"].mean() - lists["b"]["ndcg@20"].mean()
    )
    report = {
        "stages": {"recall": {"candidates": 200, "ndcg@20": 0.2}},
        "intervals": {"draws": 200, "seed": 0, **section},
    }
    text = render_markdown(report)
    assert "## Confidence intervals" in text and "| a - b | " in text


def test_the_verdicts_read_each_stage_against_the_list_it_was_handed():
    """ "What each stage adds": an interval above 0 earns the stage its place, one below 0
    loses, one across 0 is a tie, an exact 0 is the handed order kept; re-rank's line gives
    the ILD it buys, and the final list is judged against the best single model."""

    def diff(mean, low, high):
        return {"ndcg@20": {"mean": mean, "low": low, "high": high}}

    report = {
        "stages": {
            "recall": {"candidates": 200, "ndcg@20": 0.24},
            "prerank": {"candidates": 100, "ndcg@20": 0.24},
            "rank": {"candidates": 100, "ndcg@20": 0.25, "ild@20": 0.70},
            "rerank": {"candidates": 20, "ndcg@20": 0.248, "ild@20": 0.77},
        },
        "intervals": {
            "draws": 1000,
            "seed": 0,
            "best_baseline": "EASE",
            "lists": {"recall": {"ndcg@20": {"mean": 0.24, "low": 0.23, "high": 0.25}}},
            "differences": {
                "prerank - recall": diff(0.0, 0.0, 0.0),
                "rank - prerank": diff(0.0066, 0.0045, 0.0086),
                "rerank - rank": diff(-0.0019, -0.0035, -0.0001),
                "rerank - EASE": diff(0.001, -0.002, 0.004),
            },
        },
    }
    text = render_markdown(report)
    section = text.split("## What each stage adds")[1].split("## Confidence intervals")[0]
    assert "**pre-rank over recall**: 0 for every user: it hands on the top 20" in section
    assert "**rank over pre-rank**: gains +0.0066 [+0.0045, +0.0086]: it earns its place" in section
    assert "**re-rank over rank**: loses -0.0019 [-0.0035, -0.0001], for genre ILD@20" in section
    assert "0.7000 -> 0.7700 (+10.0 %)" in section
    assert "**the final list over EASE**, the best single model here: a tie, +0.0010" in section
    report["intervals"]["differences"]["rerank - EASE"] = diff(0.01, 0.005, 0.02)
    assert "beats it by +0.0100 [+0.0050, +0.0200]." in render_markdown(report)
    del report["intervals"]
    assert "## What each stage adds" not in render_markdown(report)  # nothing to read
