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
        (["evaluate", "--ks", "10,,20"], "--ks"),
        (["evaluate", "--lambda", "-1"], "--lambda"),
        (["evaluate", "--lambda", "inf"], "--lambda"),
        (["evaluate", "--model", ""], "unknown model"),
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
    for argv in ([], ["data"], ["evaluate"], ["compare"]):
        done = subprocess.run([*base, *argv, "--help"], capture_output=True, text=True)
        assert done.returncode == 0 and "usage:" in done.stdout
        assert "%%" not in done.stdout  # argparse formats no description: "95 %%" stayed


def test_seed_override_is_not_read_as_seeds():
    # `--seed=1` is a config override of `train`; with argparse's prefix matching it would
    # silently become `--seeds 1` and train into OUT/seed-1 instead of OUT.
    from recfunnel.cli import build_parser

    args, extra = build_parser().parse_known_args(["train", "--out", "x", "--seed=1"])
    assert args.seeds is None and extra == ["--seed=1"]
    args, extra = build_parser().parse_known_args(["train", "--out", "x", "--seeds", "1,2"])
    assert args.seeds == "1,2" and extra == []


@pytest.fixture
def bare_run(tmp_path):
    """A folder `read_manifest` takes for a run (a manifest, no weights): enough for the
    checks that must come before any data is loaded or any work is done."""
    run = tmp_path / "run"
    run.mkdir()
    manifest = {
        "package": "recfunnel",
        "version": "0",
        "data_sha256": "0" * 64,
        "split": "global",
        "files": {},
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("recfunnel: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_out_files_that_cannot_be_written_are_refused_first(bare_run, data_args, tmp_path, capsys):
    # write_atomic needs an existing folder to put its temp file in: bench used to time the
    # whole run first, then end in a traceback (summarize too, after reading the reports).
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (tmp_path / "missing" / "b.json", afile / "b.json", bare_run):
        assert main(["bench", str(bare_run), "--out", str(out), *data_args]) == 2
        assert "--out" in _one_line(capsys)
        assert main(["summarize", str(bare_run), "--out", str(out)]) == 2
        assert "--out" in _one_line(capsys)
    assert afile.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == [
        "afile",
        "run",
    ]
    # A run's own manifest or report would be replaced, damaging the run.
    for name in ("manifest.json", "report.json"):
        assert main(["bench", str(bare_run), "--out", str(bare_run / name), *data_args]) == 2
        assert "run directory's own" in _one_line(capsys)
        assert main(["summarize", str(bare_run), "--out", str(bare_run / name)]) == 2
        assert "run directory's own" in _one_line(capsys)
    assert sorted(p.name for p in bare_run.iterdir()) == ["manifest.json"]


def test_summarize_refuses_a_run_given_twice(bare_run, capsys):
    # The same run twice would count twice in the mean and the standard deviation.
    assert main(["summarize", str(bare_run), f"{bare_run}/"]) == 2
    assert "twice" in _one_line(capsys)


@pytest.mark.parametrize(
    "option",
    [["--ks", "5"], ["--protocol", "per_user"], ["--lambda", "10"]],
)
def test_evaluate_run_refuses_options_it_would_ignore(option, bare_run, data_args, capsys):
    # A run directory is evaluated on its own split at its report's cut-offs, and the funnel
    # report's EASE row keeps its lambda: these options used to be silently ignored.
    assert main(["evaluate", str(bare_run), *option, *data_args]) == 2
    assert option[0] in _one_line(capsys)


def test_failed_serve_leaves_no_database_in_the_run(bare_run, monkeypatch, capsys):
    # The rating store was created (RUN_DIR/serving/ratings.sqlite3) before the port, the
    # data and the run were checked, so a serve that failed still wrote into the run.
    monkeypatch.setattr("recfunnel.cli._one_thread_per_process", lambda: None)
    before = sorted(p.name for p in bare_run.rglob("*"))
    assert main(["serve", str(bare_run), "--port", "0"]) == 2
    assert "--port" in _one_line(capsys)
    assert sorted(p.name for p in bare_run.rglob("*")) == before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seed=-1"], "seed"),
        (["--rank.seed=-1"], "rank.seed"),
        ([f"--seed={2**64}"], "seed"),
        (["--seeds", f"1,{2**64}"], "--seeds"),
        (["--funnel.topk_recall=100000"], "catalogue"),
    ],
)
def test_train_refuses_what_would_fail_mid_training(argv, message, data_args, tmp_path, capsys):
    # numpy and torch refuse a negative or too large seed, and replaying a slice with more
    # candidates than items broke, only once training reached them: tracebacks, late.
    from recfunnel.run import SMOKE_OVERRIDES

    out = tmp_path / "out"
    assert main(["train", *data_args, "--out", str(out), *SMOKE_OVERRIDES, *argv]) == 2
    assert message in _one_line(capsys)
    assert not out.exists()


def test_train_refuses_an_out_below_a_file_before_training(data_args, tmp_path, capsys):
    # write_run makes the missing folders above --out: below a file that failed after the
    # whole training, with a traceback.
    from recfunnel.run import SMOKE_OVERRIDES

    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile / "run", afile / "a" / "run"):
        assert main(["train", *data_args, "--out", str(out), *SMOKE_OVERRIDES]) == 2
        assert str(afile) in _one_line(capsys)
    assert afile.read_text() == "x"


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "{missing}"],
        ["recommend", "{missing}", "--user", "1"],
        ["compare", "{missing}", "{missing}"],
        ["bench", "{missing}"],
        ["serve", "{missing}"],
        ["summarize", "{missing}"],
    ],
)
def test_a_wrong_run_dir_is_refused_before_torch_is_imported(argv, tmp_path):
    # The manifest is read through recfunnel.manifest, before torch and the stages load
    # (~4 s on two cores): a mistyped path answers at once. Checked by what was imported.
    missing = str(tmp_path / "nope")
    code = (
        "import sys; from recfunnel.cli import main; "
        f"rc = main({[a.format(missing=missing) for a in argv]!r}); "
        "print(rc, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["2", "False"], done.stderr
    assert "not a complete run directory" in done.stderr


@pytest.mark.parametrize(
    ("argv", "prog"),
    [
        (["evaluate", "--split", "train"], "recfunnel evaluate"),
        (["evaluate", "--nope"], "recfunnel evaluate"),
        (["train", "--device", "gpu"], "recfunnel train"),
        (["train", "stray"], "recfunnel train"),
        (["bogus"], "recfunnel"),
    ],
)
def test_usage_mistakes_are_one_line_naming_the_command(argv, prog, capsys):
    # argparse would print its whole usage block before the error.
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: ")
    assert err.rstrip().endswith(f"(see `{prog} --help`)")


def test_a_spaced_train_override_names_the_form(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--split", "backtest"])  # an override is --key=value, one word
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--split backtest" in err and "--split=backtest" in err
