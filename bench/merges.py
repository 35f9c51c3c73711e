"""Ways of merging a run's recall channels, side by side: reciprocal-rank fusion, round-robin
and a few per-channel quota splits, recall@200 and NDCG@20 on valid (history: train) and test
(history: known), warm users. The channels are the run's own, as it serves them.

    .venv/bin/python bench/merges.py runs/bench [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from recfunnel.errors import run_script
from recfunnel.evaluation.protocol import Evaluator
from recfunnel.evaluation.tables import format_table
from recfunnel.recall.merge import merge_lists
from recfunnel.run import load_run, load_run_data
from recfunnel.types import Requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data-dir", default=os.environ.get("RECFUNNEL_DATA_DIR"))
    args = parser.parse_args()
    run = load_run(args.run_dir, load_run_data(args.run_dir, data_dir=args.data_dir))
    funnel = run.funnel
    channels = funnel["recall"].channels
    n, k = len(channels), funnel.sizes.topk_recall
    ways: dict[str, dict] = {
        "rrf": {"how": "rrf"},
        "round_robin": {"how": "round_robin"},
        **{
            f"quota {q} each": {"how": "quota", "quotas": (q,) * n}
            for q in (k // (4 * n), k // (2 * n), k // n)
        },
    }
    rows: dict[str, dict[str, object]] = {way: {"merge": way} for way in ways}
    for part, history in (("valid", "train"), ("test", "known")):
        evaluator = Evaluator(run.split, funnel.item_ids, ks=(20, k), history=history)
        users = evaluator.users(part, "warm")
        requests = Requests.after_history(users.user_ids, users.history, funnel.now)
        lists = {name: channel(requests, k=k) for name, channel in channels.items()}
        for way, options in ways.items():
            metrics = evaluator.list_metrics(merge_lists(lists, k, **options).items, users)
            rows[way][f"{part} recall@{k}"] = metrics[f"recall@{k}"]
            rows[way][f"{part} ndcg@20"] = metrics["ndcg@20"]
    print(f"Merging the channels of {args.run_dir} ({', '.join(channels)}), warm users")
    columns = [f"{p} {m}" for p in ("valid", "test") for m in (f"recall@{k}", "ndcg@20")]
    print(format_table(list(rows.values()), ["merge", *columns]))
    return 0


if __name__ == "__main__":
    run_script(main)
