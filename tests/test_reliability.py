"""Reliability of run directories: `--overwrite` never deletes what is not a run, the swap is
atomic under an interrupt at every step, damaged runs fail with one clear line, and batches
are chunked and strictly typed. (Data-file damage is covered in tests/test_movielens.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recfunnel.artifacts import RunFileError, digest_files, verify_files
from recfunnel.cli import main
from recfunnel.config import load_config
from recfunnel.errors import ConfigError, RecfunnelError
from recfunnel.run import (
    MANIFEST,
    SMOKE_OVERRIDES,
    PipelineConfig,
    load_run,
    read_manifest,
    write_run,
)
from recfunnel.serving import recommender
from recfunnel.serving.recommender import Pipeline
from recfunnel.training.recipe import TrainReport


@pytest.fixture(scope="module")
def trained(smoke_run):
    return smoke_run


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def _redigest(run: Path) -> None:
    """Rewrite the manifest's file list as a hostile edit would, so that only the readers'
    own type and shape checks stand between the damage and the model."""
    manifest = json.loads((run / MANIFEST).read_text())
    manifest["files"] = digest_files(run, skip=(MANIFEST,))
    (run / MANIFEST).write_text(json.dumps(manifest))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("recfunnel: error:")]
    assert len(lines) == 1, err
    return lines[0]


# --- 1. --overwrite only replaces a run -------------------------------------------------------


def test_overwrite_refuses_a_folder_that_is_not_a_run(trained, tmp_path, capsys):
    _, data = trained
    precious = tmp_path / "thesis"
    (precious / "sub").mkdir(parents=True)
    (precious / "thesis.txt").write_text("years of work")
    (precious / "sub" / "notes.md").write_text("notes")
    assert main(["train", *data, "--out", str(precious), "--overwrite"]) == 2
    line = _one_error_line(capsys)
    assert str(precious) in line and "not a recfunnel run" in line
    assert (precious / "thesis.txt").read_text() == "years of work"
    assert (precious / "sub" / "notes.md").read_text() == "notes"


def test_overwrite_refuses_a_run_holding_a_users_file(trained, tmp_path, capsys):
    out, data = trained
    run = _copy(out, tmp_path / "run")
    (run / "rank" / "my-notes.txt").write_text("mine")
    assert main(["train", *data, "--out", str(run), "--overwrite"]) == 2
    assert "rank/my-notes.txt" in _one_error_line(capsys)
    assert (run / "rank" / "my-notes.txt").exists()


@pytest.mark.parametrize("where", ["cwd", "parent", "home", "file"])
def test_out_may_not_be_the_cwd_an_ancestor_home_or_a_file(
    trained, tmp_path, monkeypatch, capsys, where
):
    _, data = trained
    work = tmp_path / "home" / "work"
    work.mkdir(parents=True)
    (work / "keep.txt").write_text("keep")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = {"cwd": ".", "parent": "..", "home": "~", "file": "keep.txt"}[where]
    assert main(["train", *data, "--out", out, "--overwrite"]) == 2
    _one_error_line(capsys)
    assert (work / "keep.txt").read_text() == "keep"


def test_overwrite_replaces_a_run_with_its_reports(trained, synthetic_ml, tmp_path):
    out, data = trained
    run = _copy(out, tmp_path / "run")
    (run / "report-valid").mkdir(exist_ok=True)
    (run / "report-valid" / "report.md").write_text("# old valid report")
    (run / "bench.json").write_text("{}")
    before = read_manifest(run)["created"]
    assert main(["train", *data, "--out", str(run), "--overwrite", *SMOKE_OVERRIDES]) == 0
    assert not (run / "bench.json").exists() and not (run / "report-valid").exists()
    load_run(run, synthetic_ml)
    assert read_manifest(run)["created"] >= before
    assert not list(tmp_path.glob(".run.*"))


# --- 2. the swap is atomic ------------------------------------------------------------------


class _FakeFunnel:
    """Writes a tiny run body whose content says which run it is."""

    def __init__(self, label: str) -> None:
        self.label = label

    def save(self, directory: Path) -> None:
        (directory / "recall").mkdir()
        (directory / "recall" / "model.pt").write_text(self.label)

    stages = {"recall": None}


class _FakeData:
    checksum = "0" * 64
    dataset = "ml-1m"  # the manifest records the data set and its catalogue's scale plan
    ratings = pd.DataFrame({"item_id": [1, 2, 3]})


def _write(out: Path, label: str, **kwargs) -> Path:
    config = load_config(PipelineConfig)
    return write_run(out, config, _FakeData(), _FakeFunnel(label), TrainReport(), **kwargs)


def _label(out: Path) -> str:
    manifest = read_manifest(out)
    verify_files(out, manifest["files"], where="manifest")
    return (out / "recall" / "model.pt").read_text()


def _interrupt_at(monkeypatch, target: str, call: int) -> None:
    """Make the `call`-th (1-based) call of `target` raise KeyboardInterrupt, as a signal
    arriving at that moment would."""
    module, name = target.rsplit(".", 1)
    obj = {"os": os, "shutil": shutil}.get(module) or sys.modules[module]
    real = getattr(obj, name)
    count = {"n": 0}

    def fake(*args, **kwargs):
        count["n"] += 1
        if count["n"] == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, fake)


@pytest.mark.parametrize(
    "target, call",
    [
        ("recfunnel.run.digest_files", 1),  # while the new run is being built
        ("recfunnel.run._exchange", 1),  # just before the swap
        ("shutil.rmtree", 1),  # after the swap, while the old run is deleted
    ],
)
def test_overwrite_is_atomic_when_interrupted(tmp_path, monkeypatch, target, call):
    out = _write(tmp_path / "run", "old")
    with monkeypatch.context() as patch:
        _interrupt_at(patch, target, call)
        with pytest.raises(KeyboardInterrupt):
            _write(out, "new", overwrite=True)
    assert _label(out) in ("old", "new")  # a complete run, one or the other
    _write(out, "newer", overwrite=True)  # the next write cleans up what was left
    assert _label(out) == "newer"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


@pytest.mark.parametrize("call", [1, 2, 3])
def test_fallback_without_exchange_keeps_a_recoverable_run(tmp_path, monkeypatch, call):
    """Without renameat2 the old run is renamed aside first. Interrupted anywhere, the old
    or new run is complete at the path, or the old one waits aside, named in the error."""
    out = _write(tmp_path / "run", "old")
    monkeypatch.setattr("recfunnel.run._exchange", lambda a, b: False)
    with monkeypatch.context() as patch:
        if call < 3:
            _interrupt_at(patch, "os.rename", call)
        else:
            _interrupt_at(patch, "shutil.rmtree", 1)
        with pytest.raises(KeyboardInterrupt):
            _write(out, "new", overwrite=True)
    if out.exists():
        assert _label(out) in ("old", "new")
    else:
        with pytest.raises(RecfunnelError, match="interrupted overwrite left the previous run"):
            read_manifest(out)
    _write(out, "newer", overwrite=True)
    assert _label(out) == "newer" and [p.name for p in tmp_path.iterdir()] == ["run"]


def test_exchange_swaps_folders_on_linux(tmp_path):
    from recfunnel.run import _exchange

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b").mkdir()
    if not _exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not supported here")
    assert (tmp_path / "b" / "x").read_text() == "a" and not list((tmp_path / "a").iterdir())


def test_stale_folders_of_others_are_left_alone(tmp_path):
    out = _write(tmp_path / "run", "old")
    stranger = tmp_path / ".run.partial-mine"
    stranger.mkdir()
    (stranger / "data.txt").write_text("not recfunnel's")
    _write(out, "new", overwrite=True)
    assert (stranger / "data.txt").read_text() == "not recfunnel's"


def test_sigterm_runs_the_cleanup(tmp_path):
    """sigterm_raises turns SIGTERM into an exception, so `except BaseException`
    removes the temp folder instead of the process dying with it in place."""
    script = textwrap.dedent(
        f"""
        import os, shutil, signal, sys, tempfile, time
        from pathlib import Path
        from recfunnel.atomic import Terminated, sigterm_raises
        with sigterm_raises():
            tmp = Path(tempfile.mkdtemp(prefix=".x.partial-", dir={str(tmp_path)!r}))
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            except BaseException as error:
                shutil.rmtree(tmp)
                sys.exit(143 if isinstance(error, Terminated) else 1)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], timeout=30)
    assert done.returncode == 143
    assert not list(tmp_path.iterdir())


# --- 3. damaged runs: one line, exit status 2 -----------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_dim(path: Path) -> None:
    state = json.loads(path.read_text())
    path.write_text(json.dumps({**state, "dim": state["dim"] + 8}))


def _wrong_shape(path: Path) -> None:
    np.save(path, np.zeros((3, 3), dtype=np.float32))


DAMAGE = {
    "truncated model.pt": ("recall/two_tower/model.pt", _truncate, "not a readable state dict"),
    "missing model.pt": ("rank/model.pt", Path.unlink, "is missing"),
    "edited dim": ("prerank/state.json", _edit_dim, "does not fit"),
    "missing state.json": ("prerank/state.json", Path.unlink, "is missing"),
    "item-to-item shape": ("item_to_item/weights.npy", _wrong_shape, "has shape (3, 3)"),
    "bad train log": ("rank/train_log.json", lambda p: p.write_text("[1, 2]"), "JSON list"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
@pytest.mark.parametrize("hostile", [False, True], ids=["checksum", "reader"])
def test_damaged_run_is_one_clear_error(trained, tmp_path, capsys, case, hostile):
    """Damage is caught by the manifest's checksums; with the manifest rewritten to match
    (`hostile`), by each reader's own checks. Either way: one line naming the file."""
    out, data = trained
    name, damage, reason = DAMAGE[case]
    run = _copy(out, tmp_path / "run")
    damage(run / name)
    if hostile:
        _redigest(run)
    assert main(["recommend", str(run), "--user", "1", *data]) == 2
    line = _one_error_line(capsys)
    assert name in line
    if hostile:
        assert reason in line
    else:
        assert "missing" in line or "damaged" in line


def test_manifest_that_is_a_list_or_lacks_fields(trained, tmp_path, capsys):
    out, data = trained
    run = _copy(out, tmp_path / "run")
    (run / MANIFEST).write_text("[1, 2, 3]")
    assert main(["recommend", str(run), "--user", "1", *data]) == 2
    assert "JSON list" in _one_error_line(capsys)
    (run / MANIFEST).write_text(json.dumps({"package": "recfunnel"}))
    assert main(["evaluate", str(run), *data]) == 2
    assert "manifest.json" in _one_error_line(capsys)


def test_split_edited_in_config_is_refused(trained, tmp_path, synthetic_ml):
    out, _ = trained
    run = _copy(out, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "split": "per_user"}))
    _redigest(run)
    with pytest.raises(RunFileError, match="split 'per_user'"):
        load_run(run, synthetic_ml)


def test_missing_index_falls_back_to_exact_with_a_warning(trained, tmp_path, capsys, caplog):
    out, data = trained
    run = _copy(out, tmp_path / "run")
    shutil.rmtree(run / "recall" / "two_tower" / "index")
    assert main(["recommend", str(run), "--user", "1", "--topk-recall", "50", *data]) == 0
    assert "exact search" in caplog.text
    assert main(["evaluate", str(run), *data]) == 0
    assert "index/ folder is missing" in (run / "report.md").read_text()


# --- 6. batches: chunked, bounded, strictly typed -------------------------------------------


@pytest.fixture(scope="module")
def pipeline(trained, synthetic_ml):
    return Pipeline(load_run(trained[0], synthetic_ml), synthetic_ml)


def test_chunked_batch_equals_one_pass(pipeline):
    users = np.sort(pipeline.run.split.train["user_id"].unique())[:23]
    one = pipeline.recommend_batch(users, topk_recall=50, topk_final=10, chunk_size=1024)
    chunked = pipeline.recommend_batch(users, topk_recall=50, topk_final=10, chunk_size=7)
    for stage in one:
        np.testing.assert_array_equal(one[stage].items, chunked[stage].items)
        for name, scores in one[stage].scores.items():
            np.testing.assert_allclose(scores, chunked[stage].scores[name], rtol=1e-6)
    sizes = [len(ids) for ids, _ in pipeline.recommend_chunks(users, chunk_size=10)]
    assert sizes == [10, 10, 3]


@pytest.mark.parametrize(
    "ids, message",
    [
        (["1", "2"], "must be integers"),
        ([1.7, 2.2], "must be integers"),
        ([True, False], "must be integers"),
        ([[1, 2]], "flat sequence"),
        ([1, 10**9], "unknown user ids"),
    ],
)
def test_batch_ids_are_checked_not_converted(pipeline, ids, message):
    with pytest.raises(ConfigError, match=message):
        pipeline.recommend_batch(ids)


def test_batch_is_capped(pipeline, monkeypatch):
    monkeypatch.setattr(recommender, "MAX_BATCH", 5)
    with pytest.raises(ConfigError, match="recommend_chunks"):
        pipeline.recommend_batch([1] * 6)
    assert len(pipeline.recommend_batch([1] * 5)["rerank"].items) == 5


@pytest.mark.parametrize("user", [0, -3])
def test_non_positive_user_ids_are_errors(pipeline, user):
    with pytest.raises(ConfigError, match="positive id"):
        pipeline.recommend_for_user(user)


# --- 7, 8. config and command-line checks ---------------------------------------------------


@pytest.mark.parametrize(
    "override", ["--recall.two_tower.lr=nan", "--rank.lr=inf", "--prerank.lr=-inf"]
)
def test_non_finite_floats_are_refused(override):
    with pytest.raises(ConfigError, match="finite"):
        load_config(PipelineConfig, None, [override])


def test_bench_repeats_and_evaluate_model_are_checked(trained, capsys):
    out, data = trained
    assert main(["bench", str(out), "--repeats", "0", *data]) == 2
    assert "--repeats" in _one_error_line(capsys)
    assert main(["evaluate", str(out), "--model", "x", *data]) == 2
    assert "--model" in _one_error_line(capsys)
