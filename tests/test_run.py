"""Run directories: the recall report of a run, overwrite refusal, bad overrides, foreign runs,
the example config. (tests/test_funnel.py covers the funnel's train -> evaluate -> recommend.)"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from recfunnel.cli import main
from recfunnel.errors import RecfunnelError
from recfunnel.run import SMOKE_OVERRIDES, load_run, load_run_data

# The smoke config, with a one-epoch recall and the HNSW index this file's checks read.
FAST = [*SMOKE_OVERRIDES, "--recall.two_tower.epochs=1", "--index.backend=hnsw"]


@pytest.fixture(scope="module")
def trained(synthetic_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cache = root / "cache"
    data = ["--data-dir", str(synthetic_dir), "--cache-dir", str(cache), "--no-progress"]
    out = root / "run"
    assert main(["train", *data, "--out", str(out), *FAST]) == 0
    return out, data


def test_evaluate_run_dir_json(trained, capsys):
    out, data = trained
    assert main(["evaluate", str(out), "--stage", "recall", *data, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    models = {(r["part"], r["group"], r["model"]) for r in report["rows"]}
    assert ("test", "warm", "two-tower") in models and ("valid", "cold", "ease") in models
    assert ("test", "warm", "two-tower (hnsw)") in models
    ann = {r["backend"]: r for r in report["ann"]}
    assert set(ann) == {"exact", "hnsw", "ivf"}
    assert ann["exact"]["recall@200_vs_exact"] == 1.0
    assert ann["hnsw"]["recall@200_vs_exact"] >= 0.95
    assert (out / "recall_metrics.json").is_file()


def test_recall_channels_report(trained, capsys):
    out, data = trained
    args = ["evaluate", str(out), "--stage", "recall", "--channels", *data]
    assert main([*args, "--json"]) == 0
    channels = json.loads(capsys.readouterr().out)["channels"]
    models = {(r["part"], r["model"]) for r in channels["rows"]}
    assert {("test", "two_tower"), ("test", "ease"), ("valid", "all (rrf)")} <= models
    # The run's merge, without each of its channels and with each other one.
    assert {
        ("test", "run (rrf)"),
        ("test", "run without trending"),
        ("test", "run with lightgcn"),
    } <= models
    assert channels["overlap"]["ease"]["ease"] == 1.0
    assert 0 <= channels["overlap"]["two_tower"]["ease"] <= 1
    # Fitted for the report: the channels the run lacks; the run's own carry no fit time.
    cost = channels["cost"]
    assert cost["content"]["fit_s"] >= 0 and "fit_s" not in cost["ease"]
    assert main(args) == 0
    assert "Overlap of the channels" in capsys.readouterr().out
    assert (out / "recall_channels.png").read_bytes().startswith(b"\x89PNG")
    assert main(["evaluate", str(out), "--channels", *data]) == 2


def _bench_script(script: str, *args: object, cache: Path) -> subprocess.CompletedProcess:
    """`python bench/<script> ARGS...` from the repository root, its cache in `cache`."""
    return subprocess.run(
        [sys.executable, f"bench/{script}", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "RECFUNNEL_CACHE_DIR": str(cache)},
        cwd=Path(__file__).resolve().parents[1],
    )


def test_bench_merges_prints_every_way_of_merging(smoke_run, synthetic_dir, tmp_path):
    out, _ = smoke_run
    done = _bench_script("merges.py", out, "--data-dir", synthetic_dir, cache=tmp_path)
    assert done.returncode == 0, done.stderr
    for way in ("rrf", "round_robin", "quota"):
        assert f"\n{way}" in done.stdout
    bad = _bench_script(
        "merges.py", tmp_path / "absent", "--data-dir", synthetic_dir, cache=tmp_path
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("merges.py: error:")


def test_bench_scripts_read_the_run_directory_before_the_data(smoke_run, tmp_path):
    """A wrong RUN_DIR is the error a script reports, even where no data could be loaded
    (`load_run_data` reads every manifest first); runs of two data sets are refused."""
    missing = tmp_path / "no-data"
    for script in ("merges.py", "rerank_transfer.py", "calibration.py", "holdout.py"):
        bad = _bench_script(script, tmp_path / "absent", "--data-dir", missing, cache=tmp_path)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, (script, bad.stderr)
        assert "absent is not a complete run directory" in bad.stderr, (script, bad.stderr)
    out, _ = smoke_run
    other = tmp_path / "other"
    other.mkdir()
    manifest = json.loads((out / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "dataset": "ml-10m"}))
    with pytest.raises(RecfunnelError, match="trained on different data sets"):
        load_run_data(out, other, data_dir=missing)


@pytest.mark.parametrize(
    ("script", "row"),
    [
        ("rank_blend.py", "inf"),
        ("rerank_choice.py", "dpp"),
        ("rerank_relevance.py", "P(like), raw"),
    ],
)
def test_holdout_choice_scripts_run_on_valid_and_refuse_the_real_test(
    smoke_run, synthetic_dir, tmp_path, script, row
):
    """The scripts that compare settings on a holdout (bench/holdout_choice.py) print their
    table on valid, and stop with one line, status 2, on the real test part."""
    out, _ = smoke_run

    def call(*extra: str) -> subprocess.CompletedProcess:
        return _bench_script(script, out, "--data-dir", synthetic_dir, *extra, cache=tmp_path)

    done = call("--split", "valid")
    assert done.returncode == 0, done.stderr
    assert f"\n{row} " in done.stdout or f"\n {row} " in done.stdout
    refused = call("--split", "test")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "choosing on the real test part leaks" in refused.stderr


def test_bench_rerank_relevance_applies_valids_choice_to_a_backtests_test(
    smoke_run, synthetic_dir, tmp_path
):
    """On a backtest run, bench/rerank_relevance.py chooses lambda on the backtest's valid
    and applies it to the backtest's test: one row per relevance scale, with both parts'
    own choices and the transferred one; the default scale's valid choice is the one
    training made and saved (the same rule on the same lists)."""
    _, data = smoke_run
    out = tmp_path / "bt"
    assert main(["train", *data, "--out", str(out), *SMOKE_OVERRIDES, "--split=backtest"]) == 0
    done = _bench_script(
        "rerank_relevance.py", out, "--split", "test", "--data-dir", synthetic_dir, cache=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "valid's lambda on test" in done.stdout and "test: lambda" in done.stdout
    rows = {line.split("  ")[0]: line for line in done.stdout.splitlines()}
    assert {"rank score, min-max", "P(like), raw", "P(like), min-max"} <= set(rows)
    chosen = json.loads((out / "rerank" / "config.json").read_text())["lambda_mmr"]
    default = "rank score, min-max"
    assert float(rows[default][len(default) :].split()[0]) == pytest.approx(chosen)


def test_bench_prerank_keep_scores_and_times_each_keep(smoke_run, synthetic_dir, tmp_path):
    """bench/prerank_keep.py: one row per keep on valid (the final list's lambda chosen by
    training's rule, so the run's own keep reproduces the lambda training saved), a timing
    table with --time, and one line, status 2, for a keep shorter than the final list."""
    out, _ = smoke_run

    def call(*extra: object) -> subprocess.CompletedProcess:
        return _bench_script(
            "prerank_keep.py", out, "--data-dir", synthetic_dir, *extra, cache=tmp_path
        )

    config = json.loads((out / "config.json").read_text())
    keep = config["prerank"]["keep"]
    done = call("--split", "valid", "--keeps", f"{keep},20")
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[3:]]
    assert [int(row[0]) for row in rows] == [keep, 20]
    chosen = json.loads((out / "rerank" / "config.json").read_text())["lambda_mmr"]
    assert float(rows[0][2]) == pytest.approx(chosen)
    timed = call("--time", "5", "--keeps", f"{keep},20")
    assert timed.returncode == 0, timed.stderr
    assert "p99_ms" in timed.stdout and "rank_p50" in timed.stdout
    bad = call("--keeps", "10")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "every keep must be >= 20" in bad.stderr


def test_bench_fast_path_ab_times_runs_in_turn(smoke_run, synthetic_dir, tmp_path):
    """bench/fast_path_ab.py answers each sampled user with every run in turn and prints
    one row per run, the first run's ratios 1; one run alone, or a run directory that is
    not there, stops with one line, status 2."""
    out, _ = smoke_run

    def call(*args: object) -> subprocess.CompletedProcess:
        return _bench_script("fast_path_ab.py", *args, "--data-dir", synthetic_dir, cache=tmp_path)

    done = call(out, out, "--users", "5")
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[3:]]
    assert len(rows) == 2 and all(row[1] == "5" for row in rows)
    assert float(rows[0][-2]) == 1.0 and float(rows[0][-1]) == 1.0
    for bad, message in [
        ((out,), "two or more run directories"),
        ((out, tmp_path / "absent"), "absent is not a complete run directory"),
    ]:
        refused = call(*bad)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert message in refused.stderr, refused.stderr


def test_bench_rerank_transfer_reports_both_parts(smoke_run, synthetic_dir, tmp_path):
    """bench/rerank_transfer.py re-ranks at the sweep's lambdas on valid and on test (a
    report, no choice), with the chosen lambda's paired interval and the bands by targets;
    a run directory that is not there stops with one line, status 2."""
    out, _ = smoke_run

    def call(run: Path) -> subprocess.CompletedProcess:
        return _bench_script("rerank_transfer.py", run, "--data-dir", synthetic_dir, cache=tmp_path)

    done = call(out)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("valid: ") and "\ntest: " in done.stdout
    assert "(paired 95 %)" in done.stdout and "liked targets" in done.stdout
    # lambda 1 is the reference of each part: a change of exactly 0.
    assert len(re.findall(r"\n(valid|test) +1 +[0-9.]+ +0(\.0+)? +0(\.0+)?\n", done.stdout)) == 2
    bad = call(tmp_path / "absent")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("rerank_transfer.py: error:")


def test_bench_calibration_refits_both_calibrations(smoke_run, synthetic_dir, tmp_path):
    """bench/calibration.py refits the like head's temperature and Platt calibrations on
    valid and reports both parts: Platt's fit matches valid's liked share (its shift is
    fitted there), and its valid LogLoss is no worse than the temperature's."""
    out, _ = smoke_run
    done = _bench_script("calibration.py", out, "--data-dir", synthetic_dir, cache=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {
        (cells[1], cells[4]): [float(c) for c in cells[5:]]
        for cells in (line.split() for line in done.stdout.splitlines()[2:])
    }
    assert set(rows) == {(m, p) for m in ("temperature", "platt") for p in ("valid", "test")}
    _, share, mean_p, _, platt_loss = rows["platt", "valid"]
    assert mean_p == pytest.approx(share, abs=2e-3)
    assert platt_loss <= rows["temperature", "valid"][4] + 1e-4


def test_compare_two_runs_with_paired_intervals(trained, smoke_run, capsys, tmp_path):
    out, data = trained
    # A run against itself: every difference, and its interval, is exactly 0.
    assert main(["compare", str(out), str(out), *data, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert {r["stage"] for r in rows} == {"recall", "prerank", "rank", "rerank"}
    assert all(r["a - b"] == r["low"] == r["high"] == 0 for r in rows)
    # Two different runs (one-epoch recall and HNSW here, the smoke config there).
    other, _ = smoke_run
    assert main(["compare", str(out), str(other), *data, "--split", "valid"]) == 0
    text = capsys.readouterr().out
    assert "paired bootstrap 95 % interval" in text and "rerank" in text
    assert main(["compare", str(out), str(tmp_path / "absent"), *data]) == 2
    assert "absent" in capsys.readouterr().err


def test_train_refuses_to_overwrite_and_rejects_bad_overrides(trained, capsys):
    out, data = trained
    assert main(["train", *data, "--out", str(out), *FAST]) == 2
    assert "already exists" in capsys.readouterr().err
    new = out.parent / "other"
    assert main(["train", *data, "--out", str(new), "--recall.two_tower.objectiv=bpr"]) == 2
    err = capsys.readouterr().err
    assert "recall.two_tower.objectiv" in err and "objective" in err and "Traceback" not in err
    assert main(["train", *data, "--out", str(new), "--recall.two_tower.lr=-1"]) == 2
    # Top-level fields take --field=value too; an unknown one is named.
    assert main(["train", *data, "--out", str(new), "--split=sideways"]) == 2
    assert "split" in capsys.readouterr().err
    assert main(["train", *data, "--out", str(new), "--sede=1"]) == 2
    assert "sede" in capsys.readouterr().err
    assert not new.exists()


def test_foreign_runs_are_refused(trained, synthetic_ml, tmp_path, capsys):
    out, data = trained
    manifest = json.loads((out / "manifest.json").read_text())
    for key, value, message in (
        ("data_sha256", "0" * 64, "other data"),
        ("version", "0.0.1", "recfunnel 0.0.1"),
    ):
        copy = tmp_path / key
        copy.mkdir()
        for path in out.rglob("*"):
            target = copy / path.relative_to(out)
            if path.is_dir():
                target.mkdir(exist_ok=True)
            else:
                target.write_bytes(path.read_bytes())
        (copy / "manifest.json").write_text(json.dumps({**manifest, key: value}))
        with pytest.raises(RecfunnelError, match=message):
            load_run(copy, synthetic_ml)
    assert main(["evaluate", str(tmp_path / "missing"), *data]) == 2
    assert "not a complete run directory" in capsys.readouterr().err


def test_example_config_file_and_config_listing(synthetic_dir, tmp_path, capsys):
    from pathlib import Path

    from recfunnel.config import load_config
    from recfunnel.run import PipelineConfig

    example = Path(__file__).resolve().parents[1] / "configs" / "recall-softmax.toml"
    config = load_config(PipelineConfig, example, ["--recall.two_tower.epochs=1"])
    assert config.recall.two_tower.objective == "softmax" and config.index.backend == "exact"
    assert config.recall.two_tower.epochs == 1  # the command line wins over the file
    assert main(["config"]) == 0
    listing = capsys.readouterr().out
    assert "recall.two_tower.objective" in listing and "index.backend" in listing


def test_one_seed_feeds_every_stage():
    from recfunnel.run import PipelineConfig

    assert PipelineConfig().seeded() == PipelineConfig()  # no top-level seed: untouched
    config = PipelineConfig(seed=7).seeded()
    seeds = [
        config.recall.two_tower.seed,
        config.recall.lightgcn.seed,
        config.recall.sequence.seed,
        config.prerank.seed,
        config.rank.seed,
    ]
    assert seeds == [7] * 5
    # Seed 0 is the default run: every part's own default is 0.
    assert PipelineConfig(seed=0).seeded() == PipelineConfig(seed=0)


def test_train_several_seeds_then_summarize(synthetic_dir, tmp_path, capsys):
    data = ["--data-dir", str(synthetic_dir), "--cache-dir", str(tmp_path / "c"), "--no-progress"]
    out = tmp_path / "seeds"
    assert main(["train", *data, "--out", str(out), "--seeds", "1,2", *FAST]) == 0
    runs = [out / "seed-1", out / "seed-2"]
    for seed, run in zip((1, 2), runs, strict=True):
        config = json.loads((run / "config.json").read_text())
        assert config["seed"] == seed
        assert config["rank"]["seed"] == config["recall"]["two_tower"]["seed"] == seed
    capsys.readouterr()
    # Summaries read evaluated runs only: a clear error first, then mean and spread.
    assert main(["summarize", *map(str, runs)]) == 2
    assert "recfunnel evaluate" in capsys.readouterr().err
    for run in runs:
        assert main(["evaluate", str(run), *data, "--json"]) == 0
    capsys.readouterr()
    assert main(["summarize", *map(str, runs), "--json", "--out", str(out / "s.json")]) == 0
    summary = json.loads(capsys.readouterr().out)
    reports = [json.loads((run / "report.json").read_text()) for run in runs]
    values = [r["stages"]["rank"]["ndcg@20"] for r in reports]
    rank = summary["lists"]["rank"]["ndcg@20"]
    assert rank["values"] == values and rank["mean"] == pytest.approx(sum(values) / 2)
    assert rank["sd"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    assert json.loads((out / "s.json").read_text()) == summary
    # The paired differences too: one mean over users per run, then their spread.
    gaps = [r["intervals"]["differences"]["rank - EASE"]["ndcg@20"] for r in reports]
    summed = summary["differences"]["rank - EASE"]["ndcg@20"]
    assert summed["values"] == [g["mean"] for g in gaps]
    # ... and how many runs' intervals lie above 0, below 0, or are exactly 0.
    assert summed["above_zero"] == sum(g["low"] > 0 for g in gaps)
    assert summed["below_zero"] == sum(g["high"] < 0 for g in gaps)
    assert main(["summarize", *map(str, runs)]) == 0
    printed = capsys.readouterr().out
    assert "± " in printed and "| rank - EASE | " in printed
    # Bad seed lists are refused before any training.
    for bad in ("a,b", "1,1", "-1"):
        assert main(["train", *data, "--out", str(tmp_path / "x"), "--seeds", bad]) == 2
    assert not (tmp_path / "x").exists()


def test_summaries_refuse_reports_that_do_not_match():
    from recfunnel.errors import ConfigError
    from recfunnel.evaluation.seeds import summarize_reports

    one = {"part": "test", "stages": {"rank": {"ndcg@20": 0.2}}, "baselines": {}}
    with pytest.raises(ConfigError, match="different parts"):
        summarize_reports({"a": one, "b": {**one, "part": "valid"}})
    with pytest.raises(ConfigError, match="other lists"):
        summarize_reports({"a": one, "b": {**one, "stages": {"recall": {"ndcg@20": 0.2}}}})
    single = summarize_reports({"a": one})["lists"]["rank"]["ndcg@20"]
    assert single["mean"] == 0.2 and single["sd"] == 0.0


def test_auto_index_is_exact_up_to_its_catalogue_size():
    """`index.backend = "auto"` (the default) searches exactly for a catalogue of at most
    `index.exact_max_items` items and builds HNSW beyond; a named backend is kept as it is."""
    from recfunnel.recall.index import ExactIndex, HNSWIndex, IVFIndex
    from recfunnel.run import AUTO_EXACT_MAX_ITEMS, IndexConfig, PipelineConfig

    auto = PipelineConfig().index
    assert auto.backend == "auto" and auto.exact_max_items == AUTO_EXACT_MAX_ITEMS
    assert isinstance(auto.build(3_706), ExactIndex)  # ML-1M
    assert isinstance(auto.build(AUTO_EXACT_MAX_ITEMS), ExactIndex)
    assert isinstance(auto.build(AUTO_EXACT_MAX_ITEMS + 1), HNSWIndex)
    assert isinstance(auto.build(None), HNSWIndex)  # size unknown: the ANN index
    small = IndexConfig(exact_max_items=10)
    assert small.resolved(10) == "exact" and small.resolved(11) == "hnsw"
    assert isinstance(IndexConfig(backend="hnsw").build(3_706), HNSWIndex)
    assert isinstance(IndexConfig(backend="ivf").build(3_706), IVFIndex)
    assert isinstance(IndexConfig(backend="exact").build(10**7), ExactIndex)
    with pytest.raises(RecfunnelError, match="exact_max_items"):
        IndexConfig(exact_max_items=-1).build(5)
    from recfunnel.config import load_config

    with pytest.raises(RecfunnelError, match="exact_max_items"):  # when the config is read
        load_config(PipelineConfig, None, ["--index.exact_max_items=-1"])


def test_default_config_trains_an_exact_index(synthetic_dir, synthetic_ml, tmp_path):
    """The smoke config with the default (auto) backend: the run's index is exact, the
    one the batch and the serving paths both search."""
    from recfunnel.recall.index import ExactIndex

    smoke = [arg for arg in SMOKE_OVERRIDES if not arg.startswith("--index.backend")]
    data = ["--data-dir", str(synthetic_dir), "--cache-dir", str(tmp_path / "c"), "--no-progress"]
    out = tmp_path / "run"
    assert main(["train", *data, "--out", str(out), *smoke, "--recall.two_tower.epochs=1"]) == 0
    meta = json.loads((out / "recall/two_tower/index/index.json").read_text())
    assert meta["backend"] == "exact"
    assert json.loads((out / "config.json").read_text())["index"]["backend"] == "auto"
    run = load_run(out, synthetic_ml)
    assert isinstance(run.funnel["recall"].channels["two_tower"].index, ExactIndex)


def test_summaries_count_where_each_runs_interval_falls():
    """`recfunnel summarize`: each paired difference says how many runs' 95 % intervals lie
    above 0, below 0, across it, or are exactly 0 (the same lists)."""
    from recfunnel.evaluation.seeds import render_summary, summarize_reports

    def report(gain: tuple[float, float, float], same: bool) -> dict:
        mean, low, high = gain
        zero = {"mean": 0.0, "low": 0.0, "high": 0.0}
        return {
            "part": "test",
            "stages": {"rank": {"ndcg@20": 0.2}},
            "baselines": {},
            "intervals": {
                "differences": {
                    "rank - prerank": {"ndcg@20": {"mean": mean, "low": low, "high": high}},
                    "prerank - recall": {"ndcg@20": zero if same else {**zero, "high": 0.01}},
                }
            },
        }

    reports = {
        "a": report((0.006, 0.004, 0.008), True),
        "b": report((0.005, 0.003, 0.007), True),
        "c": report((0.001, -0.002, 0.004), False),
        "d": report((-0.004, -0.006, -0.001), True),
    }
    summary = summarize_reports(reports)
    gain = summary["differences"]["rank - prerank"]["ndcg@20"]
    assert (gain["above_zero"], gain["below_zero"], gain["exactly_zero"]) == (2, 1, 0)
    text = render_summary(summary)
    assert "| rank - prerank | +0.0020 ± " in text and "2 above 0, 1 below 0, 1 across 0 |" in text
    assert "3 exactly 0, 1 across 0 |" in text
