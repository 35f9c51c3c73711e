"""The whole funnel on the synthetic data: train through the CLI into a run directory, load it,
evaluate it, recommend with it. One small training run is shared by the module."""

import json

import numpy as np
import pytest

from recfunnel.cli import main
from recfunnel.errors import ConfigError, RecfunnelError
from recfunnel.run import load_run
from recfunnel.serving.recommender import Pipeline


@pytest.fixture(scope="module")
def trained(smoke_run):
    return smoke_run


@pytest.fixture(scope="module")
def pipeline(trained, synthetic_ml):
    return Pipeline(load_run(trained[0], synthetic_ml), synthetic_ml)


def test_train_writes_every_stage_without_pickle(trained):
    out, _ = trained
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"] == ["recall", "item_to_item", "prerank", "rank", "rerank"]
    assert manifest["stacking_examples"]["requests"] > 0
    for name in (
        "config.json",
        "recall/config.json",
        "recall/two_tower/model.pt",
        "recall/two_tower/index/index.json",
        "item_to_item/weights.npy",
        "prerank/model.pt",
        "prerank/state.json",
        "rank/model.pt",
        "rank/dense_stats.json",
        "rerank/config.json",
    ):
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.pkl")) and not list(out.rglob("*.pickle"))
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]


def test_evaluate_writes_the_funnel_report(trained, capsys):
    out, data = trained
    assert main(["evaluate", str(out), *data]) == 0
    text = capsys.readouterr().out
    assert "| rerank" in text and "AUC" in text
    report = json.loads((out / "report.json").read_text())
    stages = report["stages"]
    assert [stages[s]["candidates"] for s in ("recall", "prerank", "rank", "rerank")] == [
        50,
        30,
        30,
        20,
    ]
    assert stages["recall"]["retention"] == 1.0
    assert 0 <= stages["rerank"]["retention"] <= stages["rank"]["retention"] <= 1
    # The rank stage learned the planted structure: better than chance on rated pairs.
    assert report["pointwise"]["rank"]["auc"] > 0.6
    assert stages["rank"]["ndcg@20"] > 0
    sweep = {row["lambda"]: row for row in report["lambda_sweep"]}
    assert sweep[1.0]["ndcg@20"] == pytest.approx(stages["rank"]["ndcg@20"])
    assert sweep[0.0]["ild@20"] >= sweep[1.0]["ild@20"]
    for png in ("funnel.png", "lambda_sweep.png", "training_curves.png", "reliability.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The like head's calibration: ECE in [0, 1] and bins that hold every rated pair.
    rank = report["pointwise"]["rank"]
    assert 0 <= rank["ece"] <= 1 and "ECE" in text
    assert report["pointwise"]["recall"]["ece"] is None  # a score, not a probability
    assert sum(rank["reliability"]["count"]) > 0
    # Both re-rankers are swept; at lambda 1 each keeps the rank order.
    dpp = {row["lambda"]: row for row in report["rerank_sweeps"]["dpp"]}
    assert dpp[1.0]["ndcg@20"] == pytest.approx(stages["rank"]["ndcg@20"])
    # Each default recall channel alone is a baseline, with its interval like every list.
    intervals = report["intervals"]
    for name in ("two_tower", "ease", "rp3beta", "trending"):
        row = report["baselines"][f"channel {name}"]
        ndcg = intervals["lists"][f"channel {name}"]["ndcg@20"]
        assert ndcg["mean"] == pytest.approx(row["ndcg@20"])
        assert ndcg["low"] <= ndcg["mean"] <= ndcg["high"]
    diff = intervals["differences"]["rank - prerank"]["ndcg@20"]
    mean_diff = stages["rank"]["ndcg@20"] - stages["prerank"]["ndcg@20"]
    assert diff["mean"] == pytest.approx(mean_diff)
    assert "## Confidence intervals" in text and "| channel ease |" in text
    # Pre-rank's LogLoss on its own target: all recall candidates, labelled liked-in-test.
    target = report["prerank_target"]
    assert target["pairs"] == 50 * report["users"]["warm"]
    assert 0 < target["positive_share"] < 1 and 0 < target["logloss"] < 1
    assert target["auc"] > 0.5 and "## Pre-rank on its own target" in text


def test_training_chose_lambda_on_valid(trained, pipeline):
    out, _ = trained
    manifest = json.loads((out / "manifest.json").read_text())
    chosen = manifest["chosen_on_holdout"]["rerank.lambda_mmr"]
    saved = json.loads((out / "config.json").read_text())["rerank"]["lambda_mmr"]
    assert saved == chosen["lambda"] == pipeline.funnel["rerank"].config.lambda_mmr
    assert chosen["holdout"] == "valid, warm users" and chosen["users"] > 0
    # The rule: within max_ndcg_loss of the rank order's NDCG@20, at least its diversity.
    loss = chosen["max_ndcg_loss"]
    assert chosen["ndcg@20"] >= (1 - loss) * chosen["ndcg@20 at lambda 1"] - 1e-12
    assert chosen["ild@20"] >= chosen["ild@20 at lambda 1"]
    # Served by default; a re-ranker whose lambda was never chosen says so.
    requests = pipeline.requests(pipeline.user_ids[:3])
    ranked = pipeline.funnel.run(requests, upto="rank")["rank"]
    with pytest.raises(ConfigError, match="not been chosen"):
        pipeline.funnel["rerank"].with_config(lambda_mmr=None)(requests, ranked, k=5)


def test_training_chose_the_prerank_prior_weight_on_valid(trained, pipeline):
    out, _ = trained
    manifest = json.loads((out / "manifest.json").read_text())
    chosen = manifest["chosen_on_holdout"]["prerank.prior_weight"]
    assert list(chosen["grid"]) == ["0", "0.25", "0.5", "1", "2", "4", "inf"]
    assert chosen["grid"][chosen["weight"]] == max(chosen["grid"].values())
    assert chosen["holdout"] == "valid, warm users" and chosen["users"] > 0
    saved = json.loads((out / "prerank" / "state.json").read_text())
    weight = pipeline.funnel["prerank"].prior_weight_
    assert saved["prior_weight"] == (chosen["weight"] if weight == float("inf") else weight)
    assert chosen["weight"] == ("inf" if weight == float("inf") else f"{weight:g}")


def test_training_calibrated_the_like_head(trained, pipeline):
    out, _ = trained
    manifest = json.loads((out / "manifest.json").read_text())
    chosen = manifest["chosen_on_holdout"]["rank.calibration"]
    saved = json.loads((out / "rank" / "calibration.json").read_text())
    assert saved["temperature"] == chosen["temperature"] == pipeline.funnel["rank"].temperature_ > 0
    assert saved["bias"] == chosen["bias"] == pipeline.funnel["rank"].bias_
    assert chosen["method"] == "platt"
    assert chosen["logloss_after"] <= chosen["logloss_before"]


def test_evaluate_on_returning_users(trained, synthetic_ml, capsys):
    out, data = trained
    run = load_run(out, synthetic_ml)
    split = run.split
    # Independently: warm valid users with a liked valid rating whose first valid rating
    # comes >= 14 days after their last train rating.
    last = split.train.groupby("user_id")["timestamp"].max()
    first = split.valid.groupby("user_id")["timestamp"].min()
    liked = set(split.valid.loc[split.valid["rating"] >= 4, "user_id"])
    expected = sorted(u for u in liked if u in last.index and first[u] - last[u] >= 14 * 86400)
    assert expected  # the synthetic data has users who pause (97 of 164 on valid)
    assert main(["evaluate", str(out), "--split", "valid", "--users", "return", *data]) == 0
    report = json.loads((out / "report-valid-return" / "report.json").read_text())
    assert report["users"]["return"] == len(expected) and report["user_group"] == "return"
    assert "returning users" in report["title"]


def test_users_return_needs_the_funnel_report(trained, capsys):
    _, data = trained
    assert main(["evaluate", "--users", "return", *data]) == 2
    assert "--users return" in capsys.readouterr().err


def test_recommend_for_user_warm(pipeline):
    warm = int(pipeline.run.split.train["user_id"].iloc[0])
    rec = pipeline.recommend_for_user(warm, topk_recall=50, topk_final=10, lambda_mmr=0.5)
    assert rec.path == "funnel" and not rec.cold and len(rec.items) == 10
    assert [item.rank for item in rec.items] == list(range(1, 11))
    ids = [item.movie_id for item in rec.items]
    assert len(set(ids)) == 10
    known = pipeline.run.split.known_history("test")
    assert not set(ids) & set(known.loc[known["user_id"] == warm, "item_id"])
    first = rec.items[0]
    assert first.title and first.genres and set(first.scores) == {"recall", "prerank", "rank"}
    assert 0 <= rec.ild <= 1
    assert rec.candidates == {"recall": 50, "prerank": 30, "rank": 30, "rerank": 10}
    # lambda = 1 keeps the rank order: positions in the rank list are 1..k.
    plain = pipeline.recommend_for_user(warm, topk_recall=50, topk_final=10, lambda_mmr=1.0)
    assert [item.positions["rank"] for item in plain.items] == list(range(1, 11))
    assert json.loads(json.dumps(rec.to_dict()))["user_id"] == warm


def test_cold_and_unknown_users_are_flagged(pipeline, synthetic_ml):
    known = set(pipeline.run.split.known_history("test")["user_id"])
    cold = [u for u in synthetic_ml.users["user_id"] if u not in known]
    if cold:
        rec = pipeline.recommend_for_user(int(cold[0]), topk_recall=50, topk_final=5)
        assert rec.path == "cold" and rec.cold and len(rec.items) == 5
    rec = pipeline.recommend_for_user(10**9, topk_recall=50, topk_final=5)
    assert rec.path == "popularity" and len(rec.items) == 5
    counts = [item.scores["popularity"] for item in rec.items]
    assert counts == sorted(counts, reverse=True)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"topk_final": 30, "topk_recall": 20}, "cannot exceed"),
        ({"lambda_mmr": 1.5}, "lambda_mmr"),
        ({"lambda_mmr": float("nan")}, "lambda_mmr"),
        ({"topk_final": 0}, "topk_final"),
        ({"topk_recall": -1}, "topk_recall"),
        ({"topk_recall": 10**6}, "catalogue"),
        ({"user_id": "42"}, "user_id"),
        ({"user_id": 4.5}, "user_id"),
    ],
)
def test_invalid_arguments_are_clear_errors(pipeline, kwargs, message):
    args = {"user_id": 1, **kwargs}
    with pytest.raises(ConfigError, match=message):
        pipeline.recommend_for_user(**args)


def test_recommend_cli_table_and_json(trained, capsys):
    out, data = trained
    assert main(["recommend", str(out), "--user", "1", "--topk-recall", "50", *data]) == 0
    text = capsys.readouterr().out
    assert "user 1" in text and "ILD@20" in text
    assert main(["recommend", str(out), "--user", "1", "--json", "--topk-recall", "50", *data]) == 0
    assert json.loads(capsys.readouterr().out)["user_id"] == 1
    assert main(["recommend", str(out), "--user", "1", "--lambda", "2", *data]) == 2
    assert "lambda_mmr" in capsys.readouterr().err


def test_bench_writes_latencies(trained, capsys, tmp_path):
    out, data = trained
    target = tmp_path / "bench.json"
    assert main(["bench", str(out), "--out", str(target), *data]) == 0
    result = json.loads(target.read_text())
    assert result["recommend_for_user"]["p50_ms"] > 0 and result["batch"]["users"] > 0
    bands = result["fast_path_by_history"]
    assert sum(b["users"] for b in bands) == result["recommend_for_user"]["users"]
    for band in bands:  # the funnel's p50 is that of the stages' sum, so at least each one's
        stages = [v for k, v in band.items() if k.endswith("_p50_ms") and k != "funnel_p50_ms"]
        assert len(stages) == 5 and band["funnel_p50_ms"] >= max(stages) > 0


def test_foreign_or_partial_runs_are_refused(trained, synthetic_ml, tmp_path):
    out, _ = trained
    manifest = json.loads((out / "manifest.json").read_text())
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "manifest.json").write_text(json.dumps({**manifest, "version": "0.0.1"}))
    with pytest.raises(RecfunnelError, match="recfunnel 0.0.1"):
        load_run(copy, synthetic_ml)
    with pytest.raises(RecfunnelError, match="not a complete run directory"):
        load_run(tmp_path / "nothing", synthetic_ml)


def test_batch_form_matches_single_calls(pipeline):
    users = np.sort(pipeline.run.split.train["user_id"].unique())[:5]
    lists = pipeline.recommend_batch(users, topk_recall=50, topk_final=10)
    for row, user in enumerate(users):
        single = pipeline.recommend_for_user(int(user), topk_recall=50, topk_final=10)
        ids = pipeline.funnel.item_ids[lists["rerank"].items[row]]
        assert [item.movie_id for item in single.items] == ids.tolist()


def test_run_directory_and_report_are_readable_like_any_file(trained):
    import os
    import stat

    out, _ = trained
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
    for name in ("config.json", "manifest.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~mask, name
