"""A funnel with several recall channels: what the later stages read of them, the serving
refit, and a run directory that reloads to the same lists."""

from __future__ import annotations

import numpy as np
import pytest

from recfunnel.config import load_config
from recfunnel.data.split import make_split
from recfunnel.evaluation.protocol import Evaluator
from recfunnel.run import SMOKE_OVERRIDES, PipelineConfig, load_run, write_run
from recfunnel.training.recipe import train_funnel
from recfunnel.types import Pairs

CHANNELS = ("--recall.channels=two_tower,ease,trending", "--recall.merge=rrf")


@pytest.fixture(scope="module")
def trained(synthetic_ml):
    split = make_split(synthetic_ml.ratings)
    config = load_config(PipelineConfig, None, (*SMOKE_OVERRIDES, *CHANNELS))
    funnel, report = train_funnel(synthetic_ml, split, config, progress=False)
    users = Evaluator(split, funnel.item_ids, ks=(10,)).users("test", "warm")
    return funnel, report, split, config, funnel.requests(users)[np.arange(20)]


def test_candidates_carry_every_channels_score_and_reciprocal_rank(trained):
    funnel, _, _, _, requests = trained
    cands = funnel.run(requests, upto="recall")["recall"]
    names = ("two_tower", "ease", "trending")
    # The two-tower scores the list (scores["recall"]): only its rank is a new feature.
    assert funnel["recall"].feature_names == (
        "recall.two_tower.rrf",
        "recall.ease",
        "recall.ease.rrf",
        "recall.trending",
        "recall.trending.rrf",
    )
    valid = cands.valid
    for name in names:
        rank = cands.channels[name]
        rrf = cands.scores[f"recall.{name}.rrf"]
        # 1 / (60 + rank) where the channel proposed the item, 0 where only others did.
        expected = np.where(rank > 0, 1.0 / (60 + rank), 0.0)
        np.testing.assert_allclose(rrf[valid], expected[valid])
        score = cands.scores["recall" if name == "two_tower" else f"recall.{name}"]
        assert np.isfinite(score[valid]).all()
    # A channel's score of a candidate it did not propose is its own score of that pair.
    pairs = cands.pairs()
    ease = funnel["recall"].channels["ease"].score_pairs(requests, Pairs(pairs.rows, pairs.items))
    np.testing.assert_allclose(pairs.scores["recall.ease"], ease.scores["ease"])


def test_later_stages_read_the_channel_features(trained):
    funnel, *_ = trained
    features = funnel["recall"].feature_names
    assert funnel["prerank"].scalars == ("recall", "item_to_item", *features)
    assert funnel["rank"].dense_[-len(features) :] == features


def test_pairs_recall_did_not_propose_get_a_zero_reciprocal_rank(trained):
    funnel, _, _, _, requests = trained
    scored = funnel["recall"].score_pairs(requests, Pairs(np.array([0, 1]), np.array([0, 1])))
    for name in funnel["recall"].channels:
        assert scored.scores[f"recall.{name}.rrf"].tolist() == [0.0, 0.0]
    for name in ("recall", "recall.ease", "recall.trending"):
        assert np.isfinite(scored.scores[name]).all()


def test_serving_refits_the_score_only_channels_on_all_of_train(trained, synthetic_ml):
    funnel, report, split, config, _ = trained
    # The two-tower keeps its early fit: pre-rank reads its vectors.
    assert report.examples["refitted"] == ["ease", "trending"]
    from recfunnel.recall.item_to_item import EASEChannel
    from recfunnel.stage import FitData

    full = EASEChannel(config.recall.ease).fit(FitData(synthetic_ml, split, funnel.item_ids))
    np.testing.assert_array_equal(funnel["recall"].channels["ease"].weights_, full.weights_)


def test_the_run_directory_reloads_to_the_same_lists(trained, synthetic_ml, tmp_path):
    funnel, report, split, config, requests = trained
    out = tmp_path / "run"
    write_run(out, config, synthetic_ml, funnel, report)
    again = load_run(out, synthetic_ml).funnel
    first, second = funnel.run(requests), again.run(requests)
    for stage in ("recall", "prerank", "rank", "rerank"):
        np.testing.assert_array_equal(first[stage].items, second[stage].items)
    np.testing.assert_allclose(first["rank"].scores["rank"], second["rank"].scores["rank"])
