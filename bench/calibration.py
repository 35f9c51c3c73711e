"""The rank stage's like head under each calibration, on trained runs: a report.

Training calibrates the like head on valid's rated pairs (`rank.calibrate`, by
`rank.calibration`). This script refits both calibrations on the same valid pairs of each
run (the same fit training makes; the model and every list are unchanged) and prints each
one's mean probability, ECE and LogLoss on valid and on the run's test part, warm users
(for a backtest run, its test part lies inside train + valid). Nothing is chosen here.

    .venv/bin/python bench/calibration.py runs/seeds/seed-0 runs/seeds/seed-1 runs/backtest
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from recfunnel.errors import run_script
from recfunnel.evaluation import metrics
from recfunnel.evaluation.protocol import Evaluator, rated_pairs
from recfunnel.evaluation.tables import format_table
from recfunnel.run import load_run, load_run_data

METHODS = ("temperature", "platt")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    parser.add_argument("--data-dir", default=os.environ.get("RECFUNNEL_DATA_DIR"))
    args = parser.parse_args()
    ml = load_run_data(*args.run_dirs, data_dir=args.data_dir)
    rows = []
    for run_dir in args.run_dirs:
        run = load_run(run_dir, ml)
        funnel, rank = run.funnel, run.funnel["rank"]
        parts = {}
        for part, history in (("valid", "train"), ("test", "known")):
            evaluator = Evaluator(run.split, funnel.item_ids, ks=(20,), history=history)
            users = evaluator.users(part, "warm")
            pairs = rated_pairs(run.split.part(part), users.user_ids, funnel.item_ids)
            # The stages before rank score the pairs once, as training does for calibrate.
            requests = funnel.requests(users)
            parts[part] = (requests, funnel.score_pairs(requests, pairs, upto="prerank"))
        trained = rank.config
        for method in METHODS:
            # Only the calibration is refitted (this process's copy of the run): the model,
            # and so every list, is the run's.
            rank.config = replace(trained, calibration=method)
            chosen = rank.calibrate(*parts["valid"])
            for part, (requests, pairs) in parts.items():
                labels = np.asarray(pairs.labels, dtype=np.float64)
                like = rank.score_pairs(requests, pairs).scores["rank.like"]
                probs = 1.0 / (1.0 + np.exp(-np.clip(like, -30, 30)))
                rows.append(
                    {
                        "run": str(run_dir),
                        "calibration": method,
                        "T": chosen["temperature"],
                        "b": chosen["bias"],
                        "part": part,
                        "pairs": len(labels),
                        "liked share": labels.mean(),
                        "mean p": probs.mean(),
                        "ECE": metrics.expected_calibration_error(labels, probs, 10),
                        "LogLoss": metrics.log_loss(labels, probs),
                    }
                )
    print(format_table(rows, list(rows[0])))
    return 0


if __name__ == "__main__":
    run_script(main)
