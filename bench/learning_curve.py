"""How the later stages' accuracy grows with the number of replayed requests they learn from.

Pre-rank and rank learn from requests replayed in the last 20 % of train (see
`recfunnel.training.stacking`): on ML-1M about 510 of them, plus the like pairs of ~800
other slice users. This trains the default funnel once per `stacking.user_fraction` (a
seeded random share of the slice users, everything else unchanged: recall, item-to-item,
the refit and the serving state are the same in every run) and scores each run's stage lists
on valid and test. If accuracy still climbs at 1.0, more requests (cross-fitted channels,
several cut points) are worth building; if it is flat, they are not the bottleneck.
`--cuts 1,2` repeats the sweep for each number of cut points (`stacking.cuts`: an earlier
cut adds the returning users of the slice before it, through models fitted before it), so
both ways of getting more requests sit on one curve.

Nothing here chooses a default: it is a measurement. Writes bench/learning_curve_results.json.

    .venv/bin/python bench/learning_curve.py [--fractions 0.25,0.5,1] [--cuts 1,2]
        [--work runs/curve]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from recfunnel.atomic import write_atomic
from recfunnel.data import load_movielens
from recfunnel.errors import run_script
from recfunnel.evaluation.funnel import evaluate_funnel
from recfunnel.evaluation.tables import format_table
from recfunnel.funnel import STAGES
from recfunnel.run import load_run

HERE = Path(__file__).resolve().parent


def train(out: Path, fraction: float, seed: int, cuts: int | None) -> None:
    """`recfunnel train` of the default config with the slice users cut to `fraction` (and
    `cuts` cut points, None: the default)."""
    cli = Path(sys.executable).with_name("recfunnel")
    command = [str(cli), "train", "--out", str(out), "--overwrite", f"--seed={seed}"]
    command.append(f"--stacking.user_fraction={fraction}")
    if cuts is not None:
        command.append(f"--stacking.cuts={cuts}")
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def scores(run_dir: Path, ml: Any) -> dict[str, Any]:
    """NDCG@20 of every stage's list on valid and test, rank's AUC / ECE on test, and how much
    the later stages learnt from (the run manifest's stacking counts)."""
    run = load_run(run_dir, ml)
    genres = ml.genre_matrix(run.funnel.item_ids)
    out: dict[str, Any] = {"examples": run.manifest["stacking_examples"]}
    for part in ("valid", "test"):
        report = evaluate_funnel(run.funnel, run.split, genres, part=part, lambdas=())
        out[part] = {stage: report["stages"][stage]["ndcg@20"] for stage in STAGES}
        if part == "test":
            rank = report["pointwise"]["rank"]
            out["test_rank_auc"], out["test_rank_ece"] = rank["auc"], rank.get("ece")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", default="0.25,0.5,1")
    parser.add_argument("--cuts", default="", help="comma-separated stacking.cuts values")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("runs/curve"))
    parser.add_argument("--out", type=Path, default=HERE / "learning_curve_results.json")
    parser.add_argument("--data-dir", default=os.environ.get("RECFUNNEL_DATA_DIR"))
    args = parser.parse_args()
    try:
        fractions = [float(f) for f in args.fractions.split(",") if f]
    except ValueError:
        parser.error(f"--fractions takes comma-separated numbers, got {args.fractions!r}")
    if not fractions or not all(0 < f <= 1 for f in fractions):
        parser.error(f"--fractions must lie in (0, 1], got {args.fractions!r}")
    try:
        cut_counts: list[int | None] = [int(c) for c in args.cuts.split(",") if c] or [None]
    except ValueError:
        parser.error(f"--cuts takes comma-separated whole numbers, got {args.cuts!r}")
    if not all(c is None or c >= 1 for c in cut_counts):
        parser.error(f"--cuts must be >= 1, got {args.cuts!r}")
    ml = load_movielens(args.data_dir, progress=False)
    rows, results = [], []
    for cuts, fraction in ((c, f) for c in cut_counts for f in fractions):
        name = f"fraction-{fraction:g}" if cuts is None else f"cuts-{cuts}-fraction-{fraction:g}"
        run_dir = args.work / name
        print(f"training with stacking.user_fraction={fraction:g} -> {run_dir}", file=sys.stderr)
        train(run_dir, fraction, args.seed, cuts)
        result = {"fraction": fraction, "cuts": cuts, **scores(run_dir, ml)}
        results.append(result)
        # Every cut's counts: the latest's, then the earlier cuts' (stacking.cuts).
        per_cut = [result["examples"], *result["examples"].get("earlier_cuts", [])]
        rows.append(
            {
                "cuts": len(per_cut),
                "fraction": fraction,
                "requests": sum(c["requests"] for c in per_cut),
                "examples": sum(c["examples"] for c in per_cut),
                **{f"valid {s}": result["valid"][s] for s in STAGES[1:]},
                **{f"test {s}": result["test"][s] for s in STAGES[1:]},
                "test rank AUC": result["test_rank_auc"],
            }
        )
        # Written after every run, so a stopped sweep keeps what it measured.
        write_atomic(args.out, json.dumps({"seed": args.seed, "runs": results}, indent=2).encode())
    print("NDCG@20 of each stage's list by the share of slice users the later stages learn from")
    print(format_table(rows, list(rows[0])))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_script(main)
