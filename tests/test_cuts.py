"""Earlier cut points (`stacking.cuts`): each cut's models never see its slice, the rank
stage learns from every cut's requests, pre-rank from the latest only."""

from __future__ import annotations

import numpy as np

from recfunnel.config import load_config
from recfunnel.data.split import Split, make_split
from recfunnel.prerank import PreRankStage
from recfunnel.rank import RankStage
from recfunnel.recall import RecallStage
from recfunnel.run import SMOKE_OVERRIDES, PipelineConfig
from recfunnel.training.recipe import train_funnel


def test_an_earlier_cut_adds_out_of_sample_requests_for_rank_only(synthetic_ml, monkeypatch):
    split = make_split(synthetic_ml.ratings)
    config = load_config(PipelineConfig, None, (*SMOKE_OVERRIDES, "--stacking.cuts=2"))
    recall_fits, prerank_fits, rank_fits = [], [], []
    recall_fit, prerank_fit, rank_fit = RecallStage.fit, PreRankStage.fit, RankStage.fit

    def spy_recall(self, data, *args, **kwargs):
        recall_fits.append(int(data.split.train["timestamp"].max()))
        return recall_fit(self, data, *args, **kwargs)

    def spy_prerank(self, data, stacked, *args, **kwargs):
        prerank_fits.append(len(stacked.requests))
        return prerank_fit(self, data, stacked, *args, **kwargs)

    def spy_rank(self, data, stacked, *args, **kwargs):
        rank_fits.append(stacked)
        return rank_fit(self, data, stacked, *args, **kwargs)

    monkeypatch.setattr(RecallStage, "fit", spy_recall)
    monkeypatch.setattr(PreRankStage, "fit", spy_prerank)
    monkeypatch.setattr(RankStage, "fit", spy_rank)
    _, report = train_funnel(synthetic_ml, split, config, progress=False)

    latest, (earlier,) = report.examples, report.examples["earlier_cuts"]
    # The latest cut's recall, then the earlier cut's: each fitted only before its slice.
    assert len(recall_fits) == 2
    assert recall_fits[0] < latest["slice_start"] and recall_fits[1] < earlier["slice_start"]
    assert earlier["slice_start"] < latest["slice_start"]
    # Pre-rank (and its cross-fitted copies) learn from the latest cut's requests only; rank
    # from both cuts', every pair labelled and carrying a pre-rank logit.
    n_latest = latest["requests"] + latest["like_pair_requests"]
    n_earlier = earlier["requests"] + earlier["like_pair_requests"]
    assert earlier["requests"] > 0
    assert set(prerank_fits) <= {n_latest, n_earlier} and prerank_fits[0] == n_latest
    (stacked,) = rank_fits
    assert len(stacked.requests) == n_latest + n_earlier
    assert len(stacked.pairs) == latest["examples"] + earlier["examples"]
    assert np.isfinite(stacked.pairs.scores["prerank"]).all()
    assert stacked.pairs.rows.max() < len(stacked.requests)
    # Pairs of the earlier cut belong to its requests, which come after the latest's.
    assert (stacked.pairs.rows[latest["examples"] :] >= n_latest).all()


def test_data_too_short_for_an_earlier_cut_leaves_it_out_instead_of_failing(synthetic_ml):
    split = make_split(synthetic_ml.ratings)
    # A bulk import: the first 70 % of train rows share one timestamp, so nothing lies
    # before the earlier cut (at 60 %; a timestamp is never cut in two), while the latest
    # cut (80 %) is as usual.
    train = split.train.sort_values("timestamp", kind="stable").reset_index(drop=True)
    bulk = int(0.7 * len(train))
    train.loc[: bulk - 1, "timestamp"] = train["timestamp"].iloc[bulk - 1]
    split = Split(train, split.valid, split.test, split.kind)
    config = load_config(PipelineConfig, None, SMOKE_OVERRIDES)  # the default two cuts
    _, report = train_funnel(synthetic_ml, split, config, progress=False)
    assert "earlier_cuts" not in report.examples and report.examples["requests"] > 0
    (note,) = report.examples["earlier_cuts_skipped"]
    assert note.startswith("cut 1 of 1 and any before it: ") and "empty part of train" in note
