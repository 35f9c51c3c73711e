"""The shared opening of the bench scripts that compare settings of a trained run on one
holdout (`rank_blend.py`, `rerank_choice.py`): the command line, the run, the evaluated
users and their requests, and the protocol's rule that a choice is never made on the real
test part (only a backtest run's test part, itself inside train + valid, may be used).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from recfunnel.data import MovieLens
from recfunnel.errors import ConfigError
from recfunnel.evaluation.protocol import Evaluator, EvalUsers
from recfunnel.run import Run, load_run, load_run_data
from recfunnel.types import Requests


def holdout_parser(description: str) -> argparse.ArgumentParser:
    """RUN_DIR, --split valid|test and --data-dir; a script adds its own options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--split", choices=("valid", "test"), default="valid")
    parser.add_argument("--data-dir", default=os.environ.get("RECFUNNEL_DATA_DIR"))
    return parser


@dataclass(frozen=True)
class Holdout:
    """What a holdout script reads: the data, the run, and the part's users and requests."""

    ml: MovieLens
    run: Run
    evaluator: Evaluator
    users: EvalUsers
    requests: Requests


def open_holdout(args: argparse.Namespace, *, group: str = "warm", ild: bool = False) -> Holdout:
    """The run of args.run_dir on args.split's `group` users (history: known for test, train
    for valid), NDCG@20 (and genre ILD@20 with `ild`). A ConfigError for the real test."""
    ml = load_run_data(args.run_dir, data_dir=args.data_dir)
    run = load_run(args.run_dir, ml)
    if args.split == "test" and run.split.kind != "backtest":
        raise ConfigError(
            "choosing on the real test part leaks: use --split valid, or a backtest run"
        )
    evaluator, users = part_of(ml, run, args.split, group=group, ild=ild)
    return Holdout(ml, run, evaluator, users, run.funnel.requests(users))


def part_of(
    ml: MovieLens, run: Run, split: str, *, group: str = "warm", ild: bool = False
) -> tuple[Evaluator, EvalUsers]:
    """The evaluator (NDCG@20, and genre ILD@20 with `ild`) and the `group` users of part
    `split` of a loaded run; history: known for test, train for valid. No test check: the
    caller's (`open_holdout`)."""
    item_ids = run.funnel.item_ids
    genres = {"item_features": ml.genre_matrix(item_ids), "ild_ks": (20,)} if ild else {}
    history = "known" if split == "test" else "train"
    evaluator = Evaluator(run.split, item_ids, ks=(20,), history=history, **genres)
    return evaluator, evaluator.users(split, group)


def choosing_parts(holdout: Holdout, split: str) -> dict[str, tuple[Evaluator, EvalUsers]]:
    """{part: (evaluator, users)} of a holdout opened on `split` (with ILD@20): that part
    alone, or for a backtest run's test ("test" passed `open_holdout`'s check) its valid
    first, where a choice is made, then its test, where the choice is scored."""
    parts = {split: (holdout.evaluator, holdout.users)}
    if split == "test":
        return {"valid": part_of(holdout.ml, holdout.run, "valid", ild=True), **parts}
    return parts
