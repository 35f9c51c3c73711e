"""Which holdout predicts test? The 27-day valid part, valid's returning users, a backtest.

Every list a run's report scores (the four stages, the baselines, each recall channel
alone, every point of the MMR and DPP lambda sweeps) is a "system". A holdout is good for
choosing defaults when it orders the systems the way test does. For each holdout this prints
Kendall's tau between its NDCG@20 and test's over the systems, the share of system pairs it
orders as test does, and the funnel's yes/no questions (does a stage beat the one before it,
does it beat EASE) answered by each. It writes bench/holdout_results.json.

The backtest is another run of the same config, trained with `split = "backtest"`
(configs/backtest.toml): a global temporal split of train + valid alone, whose test part is
scored here and compared with the real test of the first run.

Nothing here chooses anything: it measures how far each holdout can be trusted. The
returning-users holdout's one parameter (a pause of two weeks, protocol.RETURN_GAP_DAYS) and
the backtest's cut (data.split.BACKTEST_FRACS) were fixed before this was run.

    .venv/bin/python bench/holdout.py runs/bench [--backtest runs/backtest] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau

from recfunnel.atomic import write_atomic
from recfunnel.errors import ConfigError, run_script
from recfunnel.evaluation.funnel import evaluate_funnel
from recfunnel.evaluation.tables import format_table
from recfunnel.funnel import STAGES
from recfunnel.run import load_run, load_run_data

HOLDOUTS = {"valid": ("valid", "warm"), "valid, returning users": ("valid", "return")}
METRIC = "ndcg@20"


def systems(report: dict[str, Any]) -> dict[str, float]:
    """name -> NDCG@20 of every list the report scores."""
    out = {stage: report["stages"][stage][METRIC] for stage in STAGES}
    out |= {name: row[METRIC] for name, row in report["baselines"].items()}
    for method, sweep in report["rerank_sweeps"].items():
        out |= {f"{method} lambda {row['lambda']:g}": row[METRIC] for row in sweep}
    return out


def questions(report: dict[str, Any]) -> dict[str, bool]:
    """The funnel's yes/no questions: each stage against the one before it and EASE."""
    ndcg = {s: report["stages"][s][METRIC] for s in STAGES}
    ease = report["baselines"]["EASE"][METRIC]
    out = {f"{b} beats {a}": ndcg[b] > ndcg[a] for a, b in zip(STAGES, STAGES[1:], strict=False)}
    out |= {f"{s} beats EASE": ndcg[s] > ease for s in STAGES}
    return out


def agreement(holdout: dict[str, float], test: dict[str, float]) -> dict[str, float]:
    """Kendall's tau and the share of concordant pairs over the systems both have."""
    names = sorted(set(holdout) & set(test))
    h, t = np.array([holdout[n] for n in names]), np.array([test[n] for n in names])
    pairs = [(i, j) for i, j in combinations(range(len(names)), 2) if t[i] != t[j]]
    same = [np.sign(h[i] - h[j]) == np.sign(t[i] - t[j]) for i, j in pairs]
    return {
        "systems": len(names),
        "kendall_tau": float(kendalltau(h, t).statistic),
        "pairs_ordered_as_test": float(np.mean(same)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--backtest", type=Path, default=None, help="a run of split backtest")
    parser.add_argument("--data-dir", default=os.environ.get("RECFUNNEL_DATA_DIR"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "holdout_results.json")
    args = parser.parse_args()
    runs = [args.run_dir] + ([args.backtest] if args.backtest is not None else [])
    ml = load_run_data(*runs, data_dir=args.data_dir)
    run = load_run(args.run_dir, ml)
    genres = ml.genre_matrix(run.funnel.item_ids)
    reports = {
        name: evaluate_funnel(run.funnel, run.split, genres, part=part, users=users)
        for name, (part, users) in {**HOLDOUTS, "test": ("test", "warm")}.items()
    }
    holdouts = list(HOLDOUTS)
    if args.backtest is not None:
        back = load_run(args.backtest, ml)
        if back.split.kind != "backtest":
            raise ConfigError(f"{args.backtest} was trained on the {back.split.kind} split")
        reports["backtest"] = evaluate_funnel(back.funnel, back.split, genres, part="test")
        holdouts.append("backtest")
    test = systems(reports["test"])
    answers = {name: questions(report) for name, report in reports.items()}
    result: dict[str, Any] = {"run": str(args.run_dir), "metric": METRIC, "holdouts": {}}
    rows = []
    for name in holdouts:
        report = reports[name]
        users = report["users"].get("warm", report["users"].get("return"))
        stats = agreement(systems(report), test)
        right = [q for q, yes in answers[name].items() if yes == answers["test"][q]]
        stats |= {
            "users": users,
            "questions_answered_as_test": len(right),
            "questions": len(answers["test"]),
        }
        result["holdouts"][name] = {**stats, "systems_ndcg": systems(report)}
        rows.append({"holdout": name, **stats})
    result["test"] = {"users": reports["test"]["users"]["warm"], "systems_ndcg": test}
    result["questions"] = answers
    print(f"How well each holdout orders {rows[0]['systems']} lists as test does ({METRIC})")
    print(
        format_table(
            rows,
            [
                "holdout",
                "users",
                "systems",
                "kendall_tau",
                "pairs_ordered_as_test",
                "questions_answered_as_test",
                "questions",
            ],
        )
    )
    print()
    table = [{"question": q, **{n: answers[n][q] for n in answers}} for q in answers["test"]]
    print(format_table(table, ["question", *answers]))
    write_atomic(args.out, json.dumps(result, indent=2).encode())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_script(main)
