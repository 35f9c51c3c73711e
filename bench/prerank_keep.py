"""How many candidates the rank stage needs: pre-rank's `keep`, on a holdout and on the clock.

Pre-rank hands rank its best `keep` of recall's 200 (`prerank.keep`, default 100); rank scores
them all, and the re-ranker chooses the final 20 among them. Fewer candidates make both
cheaper; more give the re-ranker more to diversify with. The same trained run is read at
each keep (rank learns from recall's candidates, so its weights do not depend on it):

- on a part of a run: rank's NDCG@20, then the re-ranker's lambda chosen by training's rule
  (`rerank.report.operating_point`) and the final list's NDCG@20 and genre ILD@20 there;
  on a backtest run with `--split test`, lambda is chosen on the backtest's valid and
  applied to its test, the whole procedure a default goes through (the real test part is
  refused: `open_holdout`);
- with `--time N`: the serving fast path (`Funnel.serve_rows`) for N users of users.dat per
  keep (a seeded sample, each with its served history, train + valid, and called once),
  the keeps taken in turn after a warm-up; p50 / p99 of the whole call and each stage's
  p50, in ms. Run it alone, with OMP_NUM_THREADS=1 as `recfunnel bench` does.

    .venv/bin/python bench/prerank_keep.py runs/default --split valid
    .venv/bin/python bench/prerank_keep.py runs/backtest --split test
    OMP_NUM_THREADS=1 .venv/bin/python bench/prerank_keep.py runs/default --time 1000
"""

from __future__ import annotations

import time

import numpy as np
from holdout_choice import choosing_parts, holdout_parser, open_holdout

from recfunnel.errors import ConfigError, run_script
from recfunnel.evaluation.tables import format_table
from recfunnel.rerank.report import operating_point
from recfunnel.serving.recommender import Pipeline


def accuracy(holdout, split: str, keeps: list[int], max_ndcg_loss: float) -> list[dict]:
    """One row per keep: rank's NDCG@20 and the final list at the rule's lambda, per part."""
    funnel = holdout.run.funnel
    parts = choosing_parts(holdout, split)  # a backtest's test: valid chooses, test is scored
    # Recall and the item-to-item score do not read keep: each part's lists up to them, once.
    before = {}
    for part, (_, users) in parts.items():
        requests = funnel.requests(users)
        before[part] = (requests, funnel.run(requests, upto="item_to_item")["item_to_item"])
    rows = []
    for keep in keeps:
        row: dict = {"keep": keep}
        lam = None
        for part, (evaluator, users) in parts.items():
            requests, scored = before[part]
            resume = ("item_to_item", scored)
            ranked = funnel.run(requests, upto="rank", resume=resume, keep=keep)["rank"]
            chosen, at = operating_point(
                funnel["rerank"],
                requests,
                ranked,
                evaluator,
                users,
                k=20,
                max_ndcg_loss=max_ndcg_loss,
            )
            lam = chosen if lam is None else lam  # test reads valid's choice
            final, order = at[lam], at[1.0]  # order: the rank order's top 20
            row |= {
                f"{part}: rank": order["ndcg@20"],
                f"{part}: lambda": lam,
                f"{part}: final": final["ndcg@20"],
                f"{part}: ndcg_%": 100 * (final["ndcg@20"] / order["ndcg@20"] - 1),
                f"{part}: ild": final["ild@20"],
                f"{part}: ild_%": 100 * (final["ild@20"] / order["ild@20"] - 1),
            }
        rows.append(row)
    return rows


def timing(holdout, keeps: list[int], n_users: int, warmup: int = 200) -> list[dict]:
    """One row per keep: the fast path's p50 / p99 (ms) and each stage's p50 over up to
    `n_users` users. Each user is called once, with one keep, the keeps taken in turn: a
    second call for the same user would find its rows in the cache, which a served request
    does not, and taking turns spreads the machine's slow spells over every keep."""
    pipeline = Pipeline(holdout.run, holdout.ml)  # the served history: train + valid
    funnel = pipeline.funnel
    lam = funnel["rerank"].config.lambda_mmr
    # Users of users.dat, a seeded sample: timing reads no labels, so no part is needed.
    users = np.random.default_rng(0).permutation(pipeline.user_ids).tolist()
    warmup = min(warmup, len(users) // 4)  # a small data set keeps most users for timing
    n_users = min(n_users, (len(users) - warmup) // len(keeps))
    if n_users < 1:
        raise ConfigError(f"{len(users)} users are too few to time {len(keeps)} keeps")
    calls: dict[int, list[float]] = {keep: [] for keep in keeps}
    stages: dict[int, dict[str, list[float]]] = {keep: {} for keep in keeps}
    for i, user in enumerate(users[: warmup + n_users * len(keeps)]):
        keep = keeps[i % len(keeps)]
        request = pipeline.user_request(user)
        start = time.perf_counter()
        _, ms = funnel.serve_rows(
            request, topk_recall=funnel.sizes.topk_recall, keep=keep, lambda_mmr=lam
        )
        if i >= warmup:
            calls[keep].append(1000 * (time.perf_counter() - start))
            for stage, value in ms.items():
                stages[keep].setdefault(stage, []).append(value)
    return [
        {
            "keep": keep,
            "users": len(calls[keep]),
            "p50_ms": float(np.median(calls[keep])),
            "p99_ms": float(np.percentile(calls[keep], 99)),
            **{f"{s}_p50": float(np.median(v)) for s, v in stages[keep].items()},
        }
        for keep in keeps
    ]


def main() -> int:
    parser = holdout_parser(__doc__.splitlines()[0])
    parser.add_argument("--keeps", default="200,150,100,75,50", help="comma-separated")
    parser.add_argument("--max-ndcg-loss", type=float, default=0.02)
    parser.add_argument("--time", type=int, default=0, metavar="N", help="time N users instead")
    args = parser.parse_args()
    try:
        keeps = [int(k) for k in args.keeps.split(",")]
    except ValueError:
        raise ConfigError(f"--keeps must be comma-separated integers, got {args.keeps!r}") from None
    if min(keeps) < 20 or args.time < 0:
        raise ConfigError("every keep must be >= 20 (the final list's length), --time >= 0")
    holdout = open_holdout(args, ild=True)
    if args.time:
        rows = timing(holdout, keeps, args.time)
        print(f"{args.run_dir}: the fast path by keep, ms")
    else:
        rows = accuracy(holdout, args.split, keeps, args.max_ndcg_loss)
        print(
            f"{args.run_dir} ({holdout.run.split.kind} split), {args.split}: NDCG@20 of rank's "
            f"list and of the final list at the most varied lambda within "
            f"{args.max_ndcg_loss:.0%} of the rank order's NDCG@20"
        )
    print(format_table(rows, list(rows[0])))
    return 0


if __name__ == "__main__":
    run_script(main)
