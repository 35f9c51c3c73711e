"""Which relevance scale the ILD greedy should read: a comparison on the holdouts.

The ILD greedy trades relevance against diversity at one lambda for every user, so the scale
of the relevance decides which items it is willing to give up. Three scales of the same rank
list, each min-max or raw per user as named; the chosen 20 are always listed in the rank
order, so only the *set* differs:

- `rank score, min-max` (the default): the rank stage's sorting score, a log-probability
  blended with the order pre-rank handed it, scaled to [0, 1];
- `P(like), raw`: the rank stage's calibrated probability (`rank.prob`) as it is, which is
  what an expected-NDCG objective would read;
- `P(like), min-max`: the same probability scaled to [0, 1] per user.

For each, lambda is chosen by training's rule (`rerank.report.operating_point`) on one part;
on a backtest run it is chosen on the backtest's valid and then applied to its test, the
whole procedure a default goes through. The real test part is refused (`open_holdout`).

    .venv/bin/python bench/rerank_relevance.py runs/default --split valid
    .venv/bin/python bench/rerank_relevance.py runs/backtest --split test
"""

from __future__ import annotations

import numpy as np
from holdout_choice import choosing_parts, holdout_parser, open_holdout

from recfunnel.errors import run_script
from recfunnel.evaluation.protocol import Evaluator
from recfunnel.evaluation.tables import format_table
from recfunnel.rerank.ild import ild_greedy
from recfunnel.rerank.mmr import relevance_scale
from recfunnel.rerank.report import CHOICE_GRID, choose_lambda
from recfunnel.rerank.stage import by_relevance
from recfunnel.types import Candidates

K = 20
SCALES = {
    "rank score, min-max": ("rank", "minmax"),
    "P(like), raw": ("rank.prob", "probability"),
    "P(like), min-max": ("rank.prob", "minmax"),
}


def sweep(
    ranked: Candidates,
    unit: np.ndarray,
    listing: np.ndarray,
    evaluator: Evaluator,
    users,
    scale: tuple[str, str],
) -> list[dict]:
    """{"lambda", "ndcg@20", "ild@20"} over CHOICE_GRID of the ILD greedy on the rank lists
    `ranked` (B, N) reading `scale` (score name, relevance_scale's how); `unit` (B, N, 18)
    the candidates' unit genre rows; the chosen 20 listed by `listing` (B, N), the default
    relevance, so in the rank order whatever scale chose them."""
    valid = ranked.valid
    score, how = scale
    relevance = relevance_scale(np.where(valid, ranked.scores[score], 0.0), valid, how)
    rows = []
    for lam in CHOICE_GRID:
        picks = ild_greedy(relevance, unit, K, lam, valid, normalised=True)  # (B, K)
        picks = by_relevance(picks, listing)  # -1 pads the end of a short list
        items = np.where(picks >= 0, np.take_along_axis(ranked.items, picks, axis=1), -1)
        metrics = evaluator.list_metrics(items, users)
        rows.append({"lambda": lam, "ndcg@20": metrics["ndcg@20"], "ild@20": metrics["ild@20"]})
    return rows


def change(rows: list[dict], lam: float) -> tuple[float, float]:
    """(NDCG@20 change %, ILD@20 change %) at `lam` against lambda 1."""
    by = {row["lambda"]: row for row in rows}
    at, base = by[lam], by[1.0]
    return (
        100 * (at["ndcg@20"] / base["ndcg@20"] - 1),
        100 * (at["ild@20"] / base["ild@20"] - 1),
    )


def main() -> int:
    parser = holdout_parser(__doc__.splitlines()[0])
    parser.add_argument("--max-ndcg-loss", type=float, default=0.02)
    args = parser.parse_args()
    holdout = open_holdout(args, ild=True)
    parts = choosing_parts(holdout, args.split)
    funnel = holdout.run.funnel
    lists = {}  # each part's rank lists, unit genre rows and listing order, once
    for part, (_, users) in parts.items():
        ranked = funnel.run(funnel.requests(users), upto="rank")["rank"]
        valid = ranked.valid
        unit = funnel["rerank"].unit_genres_[np.where(valid, ranked.items, 0)]
        listing = relevance_scale(np.where(valid, ranked.scores["rank"], 0.0), valid, "minmax")
        lists[part] = (ranked, unit, listing)
    rows = []
    for name, scale in SCALES.items():
        sweeps = {
            part: sweep(*lists[part], evaluator, users, scale)
            for part, (evaluator, users) in parts.items()
        }
        row: dict = {"relevance": name}
        for part, part_rows in sweeps.items():
            lam = choose_lambda(part_rows, args.max_ndcg_loss)
            ndcg, ild = change(part_rows, lam)
            row |= {f"{part}: lambda": lam, f"{part}: ndcg_%": ndcg, f"{part}: ild_%": ild}
        if "valid" in sweeps and "test" in sweeps:  # valid's choice, applied to test
            lam = choose_lambda(sweeps["valid"], args.max_ndcg_loss)
            ndcg, ild = change(sweeps["test"], lam)
            row |= {"valid's lambda on test: ndcg_%": ndcg, "ild_%": ild}
        rows.append(row)
    print(
        f"{args.run_dir} ({holdout.run.split.kind} split): the ILD greedy under each relevance, "
        f"the most varied lambda within {args.max_ndcg_loss:.0%} of lambda 1's NDCG@20"
    )
    print(format_table(rows, list(rows[0])))
    return 0


if __name__ == "__main__":
    run_script(main)
