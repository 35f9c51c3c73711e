"""CLI smoke tests on synthetic data: tables, JSON keys, help, and clear errors."""

import json
import shutil
import subprocess
import sys

import pytest

from recfunnel.cli import main


@pytest.fixture
def data_args(synthetic_dir, tmp_path):
    return [
        "--data-dir",
        str(synthetic_dir),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--no-progress",
    ]


def test_data_prints_statistics(data_args, capsys):
    assert main(["data", *data_args]) == 0
    out = capsys.readouterr().out
    assert "n_ratings" in out and "sha256" in out
    assert main(["data", *data_args, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["n_ratings"] > 0 and len(stats["sha256"]) == 64


def test_evaluate_json_has_readable_metric_keys(data_args, capsys):
    code = main(
        [
            "evaluate",
            *data_args,
            "--model",
            "pop,ease",
            "--lambda",
            "50",
            "--split",
            "valid",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split"] == "valid" and out["protocol"] == "global"
    warm = out["models"]["ease"]["warm"]
    for key in ("ndcg@20", "recall@200", "hit_rate@10", "precision@50", "coverage@100", "ild@20"):
        assert 0.0 <= warm[key] <= 1.0, key
    assert out["models"]["pop"]["cold"]["users"] > 0


def test_evaluate_table(data_args, capsys):
    assert main(["evaluate", *data_args, "--model", "pop", "--ks", "20,200"]) == 0
    out = capsys.readouterr().out
    assert "recall@200" in out and "warm" in out and "cold" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "--model", "bpr"], "unknown model"),
        (["evaluate", "--ks", "20,x"], "--ks"),
        (["evaluate", "--ks", "0"], "--ks"),
        (["evaluate", "--lambda", "-1"], "--lambda"),
    ],
)
def test_bad_options_give_one_clear_line(argv, message, data_args, capsys):
    assert main([*argv, *data_args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_data_dir_is_a_clear_error(tmp_path, capsys):
    code = main(["data", "--data-dir", str(tmp_path / "nope"), "--cache-dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err


def test_help_everywhere():
    exe = shutil.which("recfunnel")
    base = [exe] if exe else [sys.executable, "-m", "recfunnel.cli"]
    for argv in ([], ["data"], ["evaluate"]):
        done = subprocess.run([*base, *argv, "--help"], capture_output=True, text=True)
        assert done.returncode == 0 and "usage:" in done.stdout


def test_seed_override_is_not_read_as_seeds():
    # `--seed=1` is a config override of `train`; with argparse's prefix matching it would
    # silently become `--seeds 1` and train into OUT/seed-1 instead of OUT.
    from recfunnel.cli import build_parser

    args, extra = build_parser().parse_known_args(["train", "--out", "x", "--seed=1"])
    assert args.seeds is None and extra == ["--seed=1"]
    args, extra = build_parser().parse_known_args(["train", "--out", "x", "--seeds", "1,2"])
    assert args.seeds == "1,2" and extra == []
