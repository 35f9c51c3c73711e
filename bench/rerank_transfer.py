"""Why the re-ranker's NDCG cost on valid is not its cost on test: a report, not a choice.

Training chooses lambda on valid (the most varied list within `rerank.max_ndcg_loss` of the
rank order's NDCG@20). This script re-ranks one run's rank lists on valid (history: train)
and on test (history: known) at a few lambdas, and prints, for each part, the relative
change of NDCG@20 and genre ILD@20 against lambda 1, then the chosen lambda's NDCG change by
how many liked target movies a user has. Nothing here is chosen: it reads test only to
explain a number the report already prints.

    .venv/bin/python bench/rerank_transfer.py runs/default
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from recfunnel.errors import run_script
from recfunnel.evaluation.bootstrap import difference, per_user_metric
from recfunnel.evaluation.protocol import Evaluator
from recfunnel.evaluation.tables import format_table
from recfunnel.run import load_run, load_run_data

LAMBDAS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
# Users by their number of liked target movies in the part: (low, high] bands.
BANDS = ((0, 5), (5, 20), (20, 10**9))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data-dir", default=os.environ.get("RECFUNNEL_DATA_DIR"))
    args = parser.parse_args()
    ml = load_run_data(args.run_dir, data_dir=args.data_dir)
    run = load_run(args.run_dir, ml)
    funnel = run.funnel
    chosen = funnel["rerank"].config.lambda_mmr
    lambdas = sorted({*LAMBDAS, chosen}, reverse=True)
    item_ids, k = funnel.item_ids, funnel.sizes.topk_final
    sweep, bands = [], []
    for part, history in (("valid", "train"), ("test", "known")):
        evaluator = Evaluator(
            run.split,
            item_ids,
            ks=(20,),
            history=history,
            item_features=ml.genre_matrix(item_ids),
            ild_ks=(20,),
        )
        users = evaluator.users(part, "warm")
        requests = funnel.requests(users)
        ranked = funnel.run(requests, upto="rank")["rank"]
        n_relevant = np.diff(users.truth.indptr)
        at = {}
        for lam in lambdas:
            final = funnel["rerank"](requests, ranked, k=k, lambda_mmr=lam).items
            at[lam] = (
                evaluator.list_metrics(final, users),
                per_user_metric(final, users, "ndcg@20"),
            )
        base_row, base_ndcg = at[1.0]
        for lam in lambdas:
            row = at[lam][0]
            sweep.append(
                {
                    "part": part,
                    "lambda": lam,
                    "ndcg@20": row["ndcg@20"],
                    "ndcg_change_%": 100 * (row["ndcg@20"] / base_row["ndcg@20"] - 1),
                    "ild_change_%": 100 * (row["ild@20"] / base_row["ild@20"] - 1),
                }
            )
        for low, high in BANDS:
            sel = (n_relevant > low) & (n_relevant <= high)
            if not sel.any():
                continue
            before, after = base_ndcg[sel].mean(), at[chosen][1][sel].mean()
            bands.append(
                {
                    "part": part,
                    "liked targets": f"{low + 1}-{high}" if high < 10**9 else f">{low}",
                    "users": int(sel.sum()),
                    "ndcg@20 at 1": before,
                    f"ndcg_change_% at {chosen:g}": 100 * (after / before - 1),
                }
            )
        change = difference(at[chosen][1], base_ndcg)  # paired over the part's users
        scale = 100 / base_ndcg.mean()
        print(
            f"{part}: {len(users.user_ids)} warm users, liked target movies per user: "
            f"median {np.median(n_relevant):g}, mean {n_relevant.mean():.1f}; lambda "
            f"{chosen:g} changes NDCG@20 by {scale * change['mean']:+.2f} % "
            f"[{scale * change['low']:+.2f}, {scale * change['high']:+.2f}] (paired 95 %)"
        )
    print(f"\n{args.run_dir}: the lambda sweep against lambda 1 (chosen on valid: {chosen:g})")
    print(format_table(sweep, list(sweep[0])))
    print(f"\nlambda {chosen:g}'s NDCG@20 change by the user's number of liked target movies")
    print(format_table(bands, list(bands[0])))
    return 0


if __name__ == "__main__":
    run_script(main)
