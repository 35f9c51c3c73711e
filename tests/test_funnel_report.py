"""Funnel report: markdown tables from a hand-made report dict, and the three PNG plots."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from recfunnel.evaluation.report import render_markdown, write_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _stage(candidates: int, ndcg: float, retention: float, latency: float) -> dict:
    # A 20-item list has recall@K == recall@20, so write recall@K first and let
    # recall@20 overwrite it, as the evaluation's dict would hold one key.
    return {
        "candidates": candidates,
        f"recall@{candidates}": retention * 0.6,
        "ndcg@20": ndcg,
        "recall@20": ndcg / 2,
        "precision@20": ndcg / 4,
        "hit_rate@20": ndcg * 2,
        "retention": retention,
        "latency_ms_per_user": latency,
    }


def _report() -> dict:
    # Stages deliberately out of funnel order: the report must put them back in order.
    stages = {
        "rank": _stage(20, 0.12345, 0.5, 0.456),
        "recall": _stage(500, 0.05, 1.0, 1.234),
        "rerank": {**_stage(20, 0.11, 0.5, 0.9), "ild@20": 0.6789},
        "prerank": _stage(100, 0.08, 0.8, 0.1),
    }
    return {
        "title": "Test funnel",
        "part": "test",
        "history": "known",
        "users": {"warm": 1200, "cold": 30},
        "stages": stages,
        "cold": {"recall": _stage(500, 0.01, 1.0, 1.0), "rank": _stage(20, 0.02, 0.4, 0.5)},
        "pointwise": {
            "rank": {
                "auc": 0.81234,
                "gauc": 0.7,
                "logloss": 0.5,
                "ece": 0.04321,
                # An empty bin's means are None in the JSON: skipped, not plotted as 0.
                "reliability": {
                    "count": [10.0, 0.0, 30.0],
                    "mean_prob": [0.2, None, 0.8],
                    "positive_rate": [0.1, None, 0.9],
                },
            }
        },
        "baselines": {
            "pop": {
                "ndcg@20": 0.04321,
                "recall@20": 0.02,
                "precision@20": 0.01,
                "hit_rate@20": 0.2,
                "ild@20": 0.5,
            },
        },
        "lambda_sweep": [
            {"lambda": 1.0, "ndcg@20": 0.123, "ild@20": 0.5, "precision@20": 0.03},
            {"lambda": 0.5, "ndcg@20": 0.11, "ild@20": 0.68, "precision@20": 0.028},
            {"lambda": 0.0, "ndcg@20": 0.07, "ild@20": 0.9, "precision@20": 0.02},
        ],
        "rerank": {"lambda_mmr": 0.5, "similarity": "genre"},
        "training": {
            "rank": {
                "metric": "auc",
                "best_epoch": 2,
                "best_metric": 0.8,
                "seconds": 12.345,
                "epochs": [
                    {"epoch": 1, "loss": 0.6, "auc": 0.75, "seconds": 6.0},
                    {"epoch": 2, "loss": 0.5, "auc": 0.8, "seconds": 6.3},
                ],
            },
            "recall": {
                "metric": "recall@200",
                "best_epoch": 1,
                "best_metric": 0.3,
                "seconds": 3.0,
                "epochs": [{"epoch": 1, "loss": 2.0, "recall@200": 0.3, "seconds": 3.0}],
            },
        },
        "timing": {"evaluate": 4.5},
    }


def _row(markdown: str, name: str, section: str = "## End to end") -> list[str]:
    """The cells of the first table row named `name` after the `section` heading."""
    after = markdown.split(section, 1)[1]
    for line in after.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == name:
            return cells
    raise AssertionError(f"no row {name!r} under {section!r}")


def test_end_to_end_rows_are_formatted() -> None:
    md = render_markdown(_report())
    assert md.startswith("# Test funnel\n")
    # list, candidates, Recall@K, NDCG@20, Recall@20, Precision@20, HitRate@20, ILD@20,
    # retention, latency: 0.12345 -> 0.1235 (4 decimals), 0.456 -> 0.46 (2 decimals),
    # recall@20 = 0.12345 / 2 = 0.061725 -> 0.0617, and K = 20 so Recall@K is the same.
    assert _row(md, "rank") == [
        "rank",
        "20",
        "0.0617",
        "0.1235",
        "0.0617",
        "0.0309",
        "0.2469",
        "",
        "0.5000",
        "0.46",
    ]
    assert _row(md, "rerank")[7] == "0.6789"  # ILD only where measured
    assert _row(md, "recall")[1:3] == ["500", "0.6000"]  # recall@500 = 1.0 * 0.6
    pop = _row(md, "pop")
    assert pop[1] == "" and pop[3] == "0.0432" and pop[-1] == ""  # no candidates or latency
    assert "1,200 warm users" in md


def test_stages_follow_funnel_order() -> None:
    md = render_markdown(_report())
    table = md.split("## End to end", 1)[1].split("##", 1)[0]
    names = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("|")]
    assert names[2:] == ["recall", "prerank", "rank", "rerank", "pop"]  # after header, rule


def test_optional_sections() -> None:
    md = render_markdown(_report())
    assert _row(md, "rank", "## Cold users")[3] == "0.0200"
    assert _row(md, "rank", "## Pointwise scores")[1:] == ["0.8123", "0.7000", "0.5000", "0.0432"]
    assert _row(md, "0.5 (default)", "## MMR lambda sweep")[1:] == ["0.1100", "0.6800", "0.0280"]
    assert _row(md, "1", "## MMR lambda sweep")[1] == "0.1230"
    assert _row(md, "rank", "## Training") == ["rank", "auc", "2", "0.8000", "12.35"]
    for png in ("funnel", "lambda_sweep", "training_curves", "reliability"):
        assert f"({png}.png)" in md


def test_absent_sections_are_skipped() -> None:
    report = {"stages": {"recall": {"candidates": 200, "ndcg@20": 0.1}}, "cold": {}}
    md = render_markdown(report)
    for heading in ("Cold users", "Pointwise", "lambda sweep", "Training", "Timing"):
        assert heading not in md
    assert "![funnel](funnel.png)" in md
    assert "lambda_sweep.png" not in md and "training_curves.png" not in md
    assert "reliability.png" not in md
    # Missing metrics are blank cells, not errors.
    assert _row(md, "recall")[1:4] == ["200", "", "0.1000"]


@pytest.mark.parametrize("stages", ["absent", None, {}])
def test_missing_stages_raise(stages: object, tmp_path: Path) -> None:
    report = _report()
    if stages == "absent":
        del report["stages"]
    else:
        report["stages"] = stages
    with pytest.raises(ValueError, match="stages"):
        render_markdown(report)
    with pytest.raises(ValueError, match="stages"):
        write_plots(report, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_write_plots(tmp_path: Path) -> None:
    report = _report()
    before = copy.deepcopy(report)
    paths = write_plots(report, tmp_path / "plots")
    assert [p.name for p in paths] == [
        "funnel.png",
        "lambda_sweep.png",
        "training_curves.png",
        "reliability.png",
    ]
    for p in paths:
        data = p.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC)
    # Atomic writes leave no temp files behind, and the input is not touched.
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in paths)
    assert report == before


def test_write_plots_skips_missing_sections(tmp_path: Path) -> None:
    report = {"stages": {"recall": {"candidates": 200, "retention": 1.0}, "rank": {}}}
    assert [p.name for p in write_plots(report, tmp_path)] == ["funnel.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["funnel.png"]
