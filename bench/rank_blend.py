"""Rank's list blended with the order it is handed, over the blend grid, on one holdout.

For each weight w of `recfunnel.blend.GRID` (0: the rank model's own order; inf: pre-rank's
order, i.e. recall's fusion when pre-rank keeps it), re-sort every user's ranked list by
score / spread + w x (-log(1 + position in pre-rank's list)) and score its top 20. The model
is the run's as trained; only the sort changes, so one run gives the whole curve. The spread
is the run's `logit_scale_` when it was trained with rank.prior_weight > 0, else the std of
the model's scores over the evaluated lists (a run without the blend never measured it on
its training candidates). Run it on valid, or on the test part of a backtest run
(configs/backtest.toml): a choice made here on the real test would leak.

    .venv/bin/python bench/rank_blend.py runs/bench --split valid
    .venv/bin/python bench/rank_blend.py runs/backtest --split test
"""

from __future__ import annotations

import math

import numpy as np
from holdout_choice import holdout_parser, open_holdout

from recfunnel.blend import GRID, blend_key, weight_label
from recfunnel.errors import run_script
from recfunnel.evaluation.tables import format_table


def main() -> int:
    parser = holdout_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--users",
        choices=("warm", "return"),
        default="warm",
        help="return: the warm users back after a pause (evaluation.protocol.returning)",
    )
    args = parser.parse_args()
    holdout = open_holdout(args, group=args.users)
    run, funnel = holdout.run, holdout.run.funnel
    evaluator, users, requests = holdout.evaluator, holdout.users, holdout.requests
    rank = funnel["rank"]
    trained = rank.config
    handed = funnel.run(requests, upto="prerank")["prerank"]  # (B, N): the blend's positions
    # The model's own score of every candidate, in pre-rank's order (NaN on padding).
    scores = handed.unflatten(rank.score_pairs(requests, handed.pairs()).scores[rank.name])
    if trained.prior_weight > 0:
        spread, measured = rank.logit_scale_, "the run's, on its training candidates"
    else:
        spread, measured = float(np.nanstd(scores)), "the std over these lists"
    rows = []
    for weight in GRID:
        key = blend_key(scores, weight, spread)
        top = handed.top_by(key, 20).items
        metrics = evaluator.list_metrics(top, users)
        rows.append(
            {
                "w": weight_label(weight),
                "ndcg@20": metrics["ndcg@20"],
                "recall@20": metrics["recall@20"],
                "default": "<-" if weight == rank.prior_weight_ else "",
            }
        )
    print(
        f"{args.run_dir} ({run.split.kind} split), {args.split}, {len(users.user_ids)} "
        f"{args.users} users: rank's list sorted by score / {spread:.3f} ({measured}) + w x prior; "
        f"w = 0 the model's order, w = {weight_label(math.inf)} pre-rank's"
    )
    print(format_table(rows, ["w", "ndcg@20", "recall@20", "default"]))
    return 0


if __name__ == "__main__":
    run_script(main)
