"""The re-ranker's operating point under each method and relevance, by the training rule.

For each method (the ILD greedy, MMR, DPP), with min-max and probability relevance, and
with the chosen items in pick order or sorted by relevance (`rerank.order`), sweep lambda
over the training grid on one part of a run and apply the rule training uses
(`rerank.report.operating_point`: the most varied final list whose NDCG@20 is within
`--max-ndcg-loss` of the rank order's). Prints the chosen lambda and what it costs and
gains. Run it on valid, or on the test part of a backtest run (configs/backtest.toml): a
choice made here on the real test would leak.

    .venv/bin/python bench/rerank_choice.py runs/bench --split valid
    .venv/bin/python bench/rerank_choice.py runs/backtest --split test
"""

from __future__ import annotations

import itertools

from holdout_choice import holdout_parser, open_holdout

from recfunnel.errors import run_script
from recfunnel.evaluation.tables import format_table
from recfunnel.rerank.report import operating_point
from recfunnel.rerank.stage import METHODS, ORDERS


def main() -> int:
    parser = holdout_parser(__doc__.splitlines()[0])
    parser.add_argument("--max-ndcg-loss", type=float, default=0.02)
    args = parser.parse_args()
    holdout = open_holdout(args, ild=True)
    run, funnel = holdout.run, holdout.run.funnel
    evaluator, users, requests = holdout.evaluator, holdout.users, holdout.requests
    ranked = funnel.run(requests, upto="rank")["rank"]
    rows = []
    for order, relevance, method in itertools.product(ORDERS, ("minmax", "probability"), METHODS):
        rerank = funnel["rerank"].with_config(relevance=relevance, method=method, order=order)
        lam, at = operating_point(
            rerank,
            requests,
            ranked,
            evaluator,
            users,
            k=funnel.sizes.topk_final,
            max_ndcg_loss=args.max_ndcg_loss,
        )
        rows.append(
            {
                "method": method,
                "order": order,
                "relevance": relevance,
                "lambda": lam,
                "ndcg@20": at[lam]["ndcg@20"],
                "ild@20": at[lam]["ild@20"],
                "ndcg_change_%": 100 * (at[lam]["ndcg@20"] / at[1.0]["ndcg@20"] - 1),
                "ild_change_%": 100 * (at[lam]["ild@20"] / at[1.0]["ild@20"] - 1),
            }
        )
    print(
        f"{args.run_dir} ({run.split.kind} split), {args.split}, {len(users.user_ids)} warm "
        f"users: the most varied lambda within {args.max_ndcg_loss:.0%} of lambda 1's NDCG@20"
    )
    columns = ["method", "order", "relevance", "lambda", "ndcg@20", "ild@20"]
    print(format_table(rows, [*columns, "ndcg_change_%", "ild_change_%"]))
    return 0


if __name__ == "__main__":
    run_script(main)
