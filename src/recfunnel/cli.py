"""The `recfunnel` command line: `recfunnel data`, `recfunnel evaluate`.

Every user mistake (missing data, bad option, corrupt file) ends in one clear message on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from recfunnel import __version__
from recfunnel.errors import ConfigError, RecfunnelError

DATA_HELP = (
    "folder holding ratings.dat, users.dat and movies.dat (default: $RECFUNNEL_DATA_DIR, "
    "else download ml-1m.zip from GroupLens into the cache folder)"
)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=None, help=DATA_HELP)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where downloads and parsed tables are cached "
        "(default: $RECFUNNEL_CACHE_DIR, else ~/.cache/recfunnel)",
    )
    parser.add_argument(
        "--no-download",
        action="store_true",
        help="fail instead of downloading when no data folder is given",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="hide progress bars (e.g. in logs)"
    )


def _load(args: argparse.Namespace):
    from recfunnel.data import load_movielens

    start = time.perf_counter()
    ml = load_movielens(
        args.data_dir,
        cache_dir=args.cache_dir,
        download=not args.no_download,
        progress=not args.no_progress,
    )
    _log(
        f"loaded {len(ml.ratings):,} ratings from {ml.source} "
        f"in {time.perf_counter() - start:.1f} s (sha256 {ml.checksum[:12]})"
    )
    return ml


def cmd_data(args: argparse.Namespace) -> int:
    from recfunnel.data import dataset_stats

    ml = _load(args)
    stats = {"source": str(ml.source), "sha256": ml.checksum, **dataset_stats(ml)}
    if args.json:
        print(json.dumps(stats, indent=2, default=str))
        return 0
    width = max(len(k) for k in stats)
    for key, value in stats.items():
        shown = value
        if isinstance(value, int) and "timestamp" not in key:
            shown = f"{value:,}"
        elif isinstance(value, float):
            shown = f"{value:.4f}"
        print(f"{key.ljust(width)}  {shown}")
    return 0


def _parse_models(text: str) -> list[str]:
    from recfunnel.baselines import BASELINES

    models = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in models if m not in BASELINES]
    if not models or unknown:
        raise ConfigError(
            f"unknown model {unknown or text!r}; choose from {', '.join(BASELINES)} "
            "(comma-separated for several)"
        )
    return models


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise ConfigError(f"--ks takes comma-separated positive integers, got {text!r}") from None
    if not ks or min(ks) <= 0:
        raise ConfigError(f"--ks takes comma-separated positive integers, got {text!r}")
    return ks


def cmd_evaluate(args: argparse.Namespace) -> int:
    from recfunnel.baselines import BASELINES, EASE
    from recfunnel.data.split import make_split
    from recfunnel.evaluate import Evaluator, catalogue
    from recfunnel.report import REFERENCE_COLUMNS, format_table

    models = _parse_models(args.model)
    ks = _parse_ks(args.ks)
    if not args.ease_lambda > 0:
        raise ConfigError(f"--lambda must be > 0, got {args.ease_lambda}")
    ml = _load(args)
    split = make_split(ml.ratings, args.protocol)
    items = catalogue(ml.ratings)
    evaluator = Evaluator(
        split,
        items,
        ks=ks,
        history=args.history,
        item_features=ml.genre_matrix(items),
    )
    results = {}
    for name in models:
        model = EASE(args.ease_lambda) if BASELINES[name] is EASE else BASELINES[name]()
        start = time.perf_counter()
        model.fit(split.train, items)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        result = evaluator.evaluate(model, args.split)
        _log(f"{name}: fit {fit_s:.1f} s, evaluate {time.perf_counter() - start:.1f} s")
        results[name] = result

    if args.json:
        out = {
            "split": args.split,
            "protocol": split.kind,
            "history": args.history,
            "models": {name: r.groups for name, r in results.items()},
        }
        print(json.dumps(out, indent=2))
        return 0

    # The protocol's reference columns when their cut-offs were asked for; --json has all.
    columns = [c for c in REFERENCE_COLUMNS if int(c.split("@")[1]) in ks]
    if not columns:
        columns = [f"{m}@{k}" for k in sorted(set(ks)) for m in ("recall", "ndcg")]
    rows = [
        {"model": name, "group": group, **r.groups[group]}
        for name, r in results.items()
        for group in ("warm", "cold")
    ]
    print(
        f"Top-N on {args.split} ({split.kind} temporal split; candidates: all {len(items):,} "
        f"rated movies minus known history; scorer input: {args.history} ratings)"
    )
    print(format_table(rows, ["model", "group", "users", *columns]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recfunnel",
        description="A multi-stage recommender on MovieLens-1M: data, baselines, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"recfunnel {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    data = sub.add_parser(
        "data",
        help="fetch and verify ML-1M, print dataset statistics",
        description="Fetch (or read from --data-dir) ML-1M, verify it, and print its statistics.",
    )
    _add_data_options(data)
    data.add_argument("--json", action="store_true", help="print a JSON object instead")
    data.set_defaults(func=cmd_data)

    evaluate = sub.add_parser(
        "evaluate",
        help="evaluate a baseline under the protocol",
        description="Fit baselines on train and evaluate them with full ranking under the "
        "protocol (shared/docs/protocol.md), warm and cold users separately.",
    )
    _add_data_options(evaluate)
    evaluate.add_argument(
        "--model",
        default="pop,ease",
        help="baseline(s) to evaluate, comma-separated: pop, ease (default: pop,ease)",
    )
    evaluate.add_argument(
        "--split",
        choices=("valid", "test"),
        default="test",
        help="part to evaluate on; choose hyper-parameters on valid (default: test)",
    )
    evaluate.add_argument(
        "--protocol",
        choices=("global", "per_user"),
        default="global",
        help="split protocol: global temporal 80/10/10 or per-user temporal (default: global)",
    )
    evaluate.add_argument(
        "--history",
        choices=("train", "known"),
        default="train",
        help="ratings a model may read for a user: train (as the reference numbers) or known "
        "(train + valid at test time). Known history is always removed from the candidates.",
    )
    evaluate.add_argument(
        "--lambda",
        dest="ease_lambda",
        type=float,
        default=1000.0,
        help="EASE L2 regularisation (default: 1000)",
    )
    evaluate.add_argument(
        "--ks", default="10,20,50,100,200", help="cut-offs K (default: 10,20,50,100,200)"
    )
    evaluate.add_argument(
        "--json", action="store_true", help="print a JSON object (keys like ndcg@20)"
    )
    evaluate.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except RecfunnelError as error:
        print(f"recfunnel: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("recfunnel: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
