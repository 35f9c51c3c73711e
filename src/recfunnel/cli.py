"""The `recfunnel` command line: data, train, evaluate, recommend, serve, bench, config.

Every user mistake (missing data, bad option, corrupt file) ends in one clear message on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from recfunnel import __version__
from recfunnel.atomic import SIGTERM_EXIT_CODE, Terminated, sigterm_raises
from recfunnel.errors import ConfigError, RecfunnelError
from recfunnel.evaluation.tables import format_table

if TYPE_CHECKING:  # heavy imports stay lazy so `recfunnel --help` starts fast
    from recfunnel.data import MovieLens
    from recfunnel.run import PipelineConfig, Run

DATA_HELP = (
    "folder holding the data set's files: ratings.dat, users.dat and movies.dat for ml-1m; "
    "ratings.dat, movies.dat (and tags.dat) for ml-10m; ratings.csv, movies.csv (and "
    "tags.csv) for ml-20m, ml-25m and ml-32m (default: $RECFUNNEL_DATA_DIR, else download "
    "the archive from GroupLens into the cache folder)"
)
# The names of recfunnel.data.datasets.DATASETS, spelled out so `--help` need not import
# pandas (tests/test_datasets.py checks that the two agree).
DATASET_CHOICES = ("ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m")
# `evaluate` defaults, applied in code: a RUN_DIR's report has no use for these options, so
# one given with it is refused rather than silently ignored (None: not given).
EVALUATE_MODELS = "pop,ease"
EVALUATE_KS = "10,20,50,100,200"
EVALUATE_PROTOCOL = "global"
EASE_LAMBDA = 1000.0


def _log(message: str) -> None:
    # Under torchrun every process runs this CLI; only rank 0 reports.
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr, flush=True)


def _add_device_option(parser: argparse.ArgumentParser, *, train: bool = False) -> None:
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default=None if train else "auto",
        help=(
            "where the torch stages train: auto (cuda when available, else cpu), cpu or cuda "
            "(default: the config's device, auto)"
            if train
            else "where the run's torch stages compute: auto (cuda when available, else cpu), "
            "cpu or cuda (default: auto); weights load on either, wherever they were trained"
        ),
    )


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        choices=DATASET_CHOICES,
        default=None,
        help="which MovieLens release to load (default: with a RUN_DIR the one it was "
        "trained on; for train the config's `dataset`, ml-1m unless set)",
    )
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


def _run_dataset(args: argparse.Namespace, run_dir: Path) -> str:
    """The data set of `run_dir` (its manifest; runs from before datasets existed are
    ML-1M); --dataset naming another one is an error, not a silent reload."""
    from recfunnel.manifest import read_manifest

    trained_on = str(read_manifest(run_dir).get("dataset", "ml-1m"))
    if args.dataset is not None and args.dataset != trained_on:
        raise ConfigError(
            f"{run_dir} was trained on {trained_on}, not {args.dataset}; drop --dataset "
            f"(the run's data set is the default) or pass --dataset {trained_on}"
        )
    return trained_on


def _load(args: argparse.Namespace, dataset: str | None = None):
    """The data set `dataset` (default: --dataset, else ml-1m) from the data options."""
    from recfunnel.data import load_movielens

    start = time.perf_counter()
    ml = load_movielens(
        args.data_dir,
        dataset=dataset or args.dataset or "ml-1m",
        cache_dir=args.cache_dir,
        download=not args.no_download,
        progress=not args.no_progress,
    )
    _log(
        f"loaded {len(ml.ratings):,} ratings of {ml.dataset} from {ml.source} "
        f"in {time.perf_counter() - start:.1f} s (sha256 {ml.checksum[:12]})"
    )
    return ml


def cmd_data(args: argparse.Namespace) -> int:
    from recfunnel.data import dataset_stats

    ml = _load(args)
    stats = {
        "dataset": ml.dataset,
        "source": str(ml.source),
        "sha256": ml.checksum,
        **dataset_stats(ml),
    }
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
    from recfunnel.evaluation.baselines import BASELINES

    models = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in models if m not in BASELINES]
    if not models or unknown:
        raise ConfigError(
            f"unknown model {unknown or text!r}; choose from {', '.join(BASELINES)} "
            "(comma-separated for several)"
        )
    return models


def _ease_lambda(value: float | None) -> float:
    """--lambda, or its default; NaN and inf are refused (EASE's scores would be NaN)."""
    value = EASE_LAMBDA if value is None else value
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"--lambda must be a finite number > 0, got {value}")
    return value


def _check_out_file(out: Path) -> None:
    """Refuse an --out file that cannot be written, before the work that fills it:
    `write_atomic` writes a temp file beside it and renames it over it."""
    from recfunnel.manifest import MANIFEST

    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; name a file to write")
    if (out.parent / MANIFEST).is_file() and out.name in (MANIFEST, "report.json"):
        # Replacing either would damage that run (its manifest checks, its saved report).
        raise ConfigError(f"--out {out} is a run directory's own {out.name}; name another file")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: {out.parent} is not an existing folder")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: cannot write into {out.parent}")


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",")]  # an empty part is a typo, as in --seeds
    except ValueError:
        raise ConfigError(f"--ks takes comma-separated positive integers, got {text!r}") from None
    if not ks or min(ks) <= 0:
        raise ConfigError(f"--ks takes comma-separated positive integers, got {text!r}")
    return ks


def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from recfunnel.config import load_config
    from recfunnel.device import describe_device, resolve_device
    from recfunnel.run import PipelineConfig, check_out
    from recfunnel.training import distributed

    config = load_config(PipelineConfig, args.config, args.overrides)
    if args.device is not None:
        config = dataclasses.replace(config, device=args.device)
    if args.dataset is not None:  # the command line beats the config file
        config = dataclasses.replace(config, dataset=args.dataset)
    device = resolve_device(config.device)  # `cuda` without a GPU stops here, in one line
    if args.out is None and distributed.env_world_size() > 1:
        # Each process would stamp its own time: the name must be given.
        raise ConfigError("under torchrun, name the run directory with --out")
    out = args.out or Path("runs") / time.strftime("funnel-%Y%m%d-%H%M%S")
    world = distributed.init_from_env(device)
    try:
        if world.size > 1:
            _log(f"torchrun: {world.size} processes, {describe_device(device)} on rank 0")
        elif device.type != "cpu":
            _log(f"training on {describe_device(device)}")
        if args.seeds is not None:
            return _train_seeds(args, config, out)
        check_out(out, overwrite=args.overwrite)  # refuse before minutes of training
        ml = _load(args, config.dataset)
        return _train_one(args, config, ml, out)
    finally:
        distributed.shutdown()


def _train_seeds(args: argparse.Namespace, config: PipelineConfig, out: Path) -> int:
    """One run directory per seed, OUT/seed-<s>: the spread between them is what a number
    of one run is worth (`recfunnel summarize OUT/seed-*` after evaluating each)."""
    import dataclasses

    from recfunnel.run import check_out

    seeds = _seed_list(args.seeds)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; --seeds needs a folder for the runs")
    for seed in seeds:  # every refusal before the first run trains
        check_out(out / f"seed-{seed}", overwrite=args.overwrite)
    ml = _load(args, config.dataset)
    for seed in seeds:
        _log(f"seed {seed}:")
        _train_one(args, dataclasses.replace(config, seed=seed), ml, out / f"seed-{seed}")
    return 0


def _seed_list(text: str) -> list[int]:
    from recfunnel.config import SEED_MAX

    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds takes comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0 or max(seeds) > SEED_MAX:
        raise ConfigError(f"--seeds takes distinct integers in 0..2**64-1, got {text!r}")
    return seeds


def _train_one(args: argparse.Namespace, config: PipelineConfig, ml: MovieLens, out: Path) -> int:
    from recfunnel.data.split import make_split
    from recfunnel.run import write_run
    from recfunnel.training.recipe import train_funnel

    split = make_split(ml.ratings, config.split)
    from recfunnel.evaluation.protocol import catalogue
    from recfunnel.scale import describe, plan

    _log(describe(plan(len(catalogue(ml.ratings)), config.scale)))  # dense or sparse, and why
    stacking = config.stacking
    n_earlier = stacking.cuts - 1
    earlier = (
        f" (rank also on {'an earlier slice' if n_earlier == 1 else f'{n_earlier} earlier slices'}"
        " of the same size, replayed through recall refitted before it)"
        if n_earlier
        else ""
    )
    _log(
        f"training the funnel on {len(split.train):,} train ratings: recall on the first "
        f"{1 - stacking.slice_fraction:.0%}, pre-rank and rank on the rest{earlier}; "
        "early stopping on valid"
    )
    start = time.perf_counter()
    funnel, report = train_funnel(ml, split, config, progress=not args.no_progress)
    for name, stage in (
        ("recall", funnel["recall"].scorer),
        ("prerank", funnel["prerank"]),
        ("rank", funnel["rank"]),
    ):
        log = stage.log_
        _log(
            f"{name}: best valid {log.metric_name} {log.best_metric:.4f} at epoch "
            f"{log.best_epoch}, {log.seconds:.0f} s"
        )
    cuts = [report.examples, *report.examples.get("earlier_cuts", [])]
    for note in report.examples.get("earlier_cuts_skipped", []):
        _log(f"stacking: earlier {note}")

    def per_cut(key: str) -> str:  # "510" or, with earlier cuts, "510 + 333"
        return " + ".join(f"{cut[key]:,}" for cut in cuts)

    _log(
        f"stacking: {per_cut('requests')} replayed requests (+{per_cut('like_pair_requests')} "
        f"for the like head), {per_cut('examples')} examples; trained in "
        f"{time.perf_counter() - start:.0f} s"
    )
    from recfunnel.training import distributed

    # Under torchrun every process holds the same trained funnel; rank 0 alone writes it,
    # the others wait until the run directory is complete.
    if distributed.world().is_main:
        write_run(out, config, ml, funnel, report, overwrite=args.overwrite)
        print(out)
    distributed.barrier()
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.users != "warm" and (args.run_dir is None or args.stage != "funnel"):
        raise ConfigError("--users return goes with RUN_DIR and the funnel report")
    if args.run_dir is not None:
        return _evaluate_run(args)
    return _evaluate_baselines(args)


def _evaluate_recall(args: argparse.Namespace, run: Run, ml: MovieLens) -> int:
    from recfunnel.atomic import write_atomic
    from recfunnel.recall.report import (
        CHANNEL_COLUMNS,
        RECALL_COLUMNS,
        channel_report,
        evaluate_recall,
        write_overlap_plot,
    )

    history = args.history or "known"
    channel = run.funnel["recall"].channels["two_tower"]
    report = evaluate_recall(
        channel,
        channel.index,
        ml,
        run.split,
        history=history,
        ease_lambda=_ease_lambda(args.ease_lambda),
    )
    report["train"] = channel.log_.to_dict()
    if args.channels:
        from recfunnel.evaluation.protocol import catalogue
        from recfunnel.stage import FitData
        from recfunnel.training.stacking import time_slice

        early, _ = time_slice(run.split, run.config.stacking.slice_fraction)
        data = FitData(ml, run.split, catalogue(ml.ratings), progress=False, scale=run.config.scale)
        report["channels"] = channel_report(
            run.funnel["recall"],
            run.config.recall,
            data,
            early,
            run.funnel.now,
            refit=run.config.stacking.refit,
        )
        write_overlap_plot(report["channels"], run.path / "recall_channels.png")
    write_atomic(run.path / "recall_metrics.json", json.dumps(report, indent=2).encode())
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"Recall stage of {run.path} ({run.split.kind} temporal split; scorer input: {history} "
        "ratings; candidates: all rated movies minus known history)"
    )
    print(format_table(report["rows"], ["part", "group", "model", "users", *RECALL_COLUMNS]))
    print()
    print("ANN backends against exact search (test users, known items excluded)")
    print(
        format_table(
            report["ann"],
            ["backend", "build_s", "recall@200_vs_exact", "queries", "search_s", "ms_per_query"],
        )
    )
    if args.channels:
        channels = report["channels"]
        print()
        print(
            "Recall channels (warm users; channels the run lacks fitted as the funnel serves "
            "its own; merged: all channels, the run's own merge, and it without or with each "
            "channel)"
        )
        print(format_table(channels["rows"], ["part", "model", *CHANNEL_COLUMNS]))
        print()
        print("Overlap of the channels' top-200 on test (mean Jaccard)")
        names = list(channels["overlap"])
        print(
            format_table(
                [{"channel": a, **channels["overlap"][a]} for a in names], ["channel", *names]
            )
        )
        print()
        print("Cost: fit seconds (blank: trained with the run) and serving ms per user")
        cost = [{"channel": n, **c} for n, c in channels["cost"].items()]
        print(format_table(cost, ["channel", "fit_s", "valid_ms_per_user", "test_ms_per_user"]))
    return 0


def _evaluate_run(args: argparse.Namespace) -> int:
    from recfunnel.manifest import read_manifest

    read_manifest(args.run_dir)  # a clear error before any data is loaded (or torch imported)
    if args.channels and args.stage != "recall":
        raise ConfigError("--channels goes with --stage recall")
    if args.model is not None:
        raise ConfigError(
            "--model picks baselines to evaluate without RUN_DIR; a run directory's report "
            "always compares the funnel with popularity and EASE"
        )
    if args.ks is not None or args.protocol is not None:
        raise ConfigError(
            "--ks and --protocol apply to baselines without RUN_DIR; a run directory is "
            "evaluated on the split it was trained on, at its report's cut-offs"
        )
    if args.ease_lambda is not None and args.stage == "funnel":
        raise ConfigError(
            "--lambda applies to baselines and --stage recall; the funnel report's EASE "
            "row keeps its default"
        )
    _ease_lambda(args.ease_lambda)
    if args.history is not None and args.stage == "funnel":
        raise ConfigError(
            "--history applies to baselines and --stage recall; the funnel is evaluated with "
            "the protocol's history (train for valid, train + valid for test)"
        )
    from recfunnel.atomic import write_atomic
    from recfunnel.evaluation.funnel import evaluate_funnel
    from recfunnel.evaluation.report import render_markdown, write_plots
    from recfunnel.run import load_run

    ml = _load(args, _run_dataset(args, args.run_dir))
    run = load_run(args.run_dir, ml, args.device)
    if args.stage == "recall":
        return _evaluate_recall(args, run, ml)
    start = time.perf_counter()
    report = evaluate_funnel(
        run.funnel,
        run.split,
        ml.genre_matrix(run.funnel.item_ids),
        part=args.split,
        users=args.users,
    )
    part = args.split if args.users == "warm" else f"{args.split}, returning users"
    report["title"] = f"Funnel report: {run.path.name} ({part})"
    report["manifest"] = run.manifest
    chosen = run.manifest.get("item_item")
    if isinstance(chosen, dict) and chosen.get("mode") == "sparse":
        from recfunnel.scale import describe

        report.setdefault("notes", []).append(
            f"{describe(chosen)}: the run's EASE and RP3beta channels and its item-to-item "
            "score are the sparse models of recfunnel.scale; the EASE baseline row follows "
            "the default choice for this catalogue size."
        )
    if run.index_missing:
        report.setdefault("notes", []).append(
            "The run's index/ folder is missing: recall was served by exact search."
        )
    report.setdefault("timing", {})["evaluate_seconds"] = time.perf_counter() - start
    text = render_markdown(report)
    # The test report sits at the top of the run directory; a valid one in its own folder,
    # so evaluating on valid never overwrites the test report (or the reverse).
    name = args.split if args.users == "warm" else f"{args.split}-return"
    out = run.path if name == "test" else run.path / f"report-{name}"
    out.mkdir(exist_ok=True)
    write_plots(report, out)
    write_atomic(out / "report.json", json.dumps(report, indent=2).encode())
    write_atomic(out / "report.md", text.encode())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(text)
        _log(f"wrote {out / 'report.md'}, report.json and the plots")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from recfunnel.manifest import read_manifest

    first, second = read_manifest(args.run_a), read_manifest(args.run_b)
    if first.get("split") != second.get("split"):
        raise ConfigError(
            f"{args.run_a} uses the {first.get('split')} split and {args.run_b} the "
            f"{second.get('split')} one; compare runs of one split"
        )
    from recfunnel.evaluation.funnel import compare_funnels
    from recfunnel.run import load_run

    ml = _load(args, _run_dataset(args, args.run_a))
    a, b = load_run(args.run_a, ml, args.device), load_run(args.run_b, ml, args.device)
    rows = compare_funnels(a.funnel, b.funnel, a.split, part=args.split, users=args.users)
    if args.json:
        print(json.dumps({"a": str(args.run_a), "b": str(args.run_b), "rows": rows}, indent=2))
        return 0
    print(
        f"a = {args.run_a}, b = {args.run_b}: each stage's list on the {args.split} part, "
        f"{rows[0]['users']} {'warm' if args.users == 'warm' else 'returning'} users; a - b "
        "with its paired bootstrap 95 % interval"
    )
    print(format_table(rows, ["stage", "metric", "a", "b", "a - b", "low", "high"]))
    return 0


def cmd_summarize(args: argparse.Namespace) -> int:
    from recfunnel.artifacts import read_json
    from recfunnel.atomic import write_atomic
    from recfunnel.evaluation.seeds import render_summary, summarize_reports
    from recfunnel.manifest import read_manifest

    if args.out is not None:
        _check_out_file(args.out)
    seen: set[Path] = set()
    for run_dir in args.run_dirs:  # a run named twice would count twice in mean and spread
        if run_dir.resolve() in seen:
            raise ConfigError(f"{run_dir} is given twice; name each run directory once")
        seen.add(run_dir.resolve())
    reports = {}
    for run_dir in args.run_dirs:
        read_manifest(run_dir)  # one clear line when it is not a run directory
        path = run_dir / ("report.json" if args.split == "test" else "report-valid/report.json")
        if not path.is_file():
            raise ConfigError(
                f"{path} is missing: run `recfunnel evaluate {run_dir} --split {args.split}` first"
            )
        reports[str(run_dir)] = read_json(path)
    summary = summarize_reports(reports)
    if args.out is not None:
        write_atomic(args.out, json.dumps(summary, indent=2).encode())
    print(json.dumps(summary, indent=2) if args.json else render_summary(summary), end="")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from recfunnel.manifest import read_manifest

    read_manifest(args.run_dir)  # a clear error before any data is loaded (or torch imported)
    from recfunnel.serving.recommender import Pipeline

    ml = _load(args, _run_dataset(args, args.run_dir))
    pipeline = Pipeline.load(args.run_dir, ml, args.device)
    rec = pipeline.recommend_for_user(
        args.user,
        topk_recall=args.topk_recall,
        topk_final=args.topk_final,
        lambda_mmr=args.lambda_mmr,
    )
    if args.json:
        print(json.dumps(rec.to_dict(), indent=2))
        return 0
    note = {
        "funnel": "warm user: the whole funnel",
        "cold": "cold user (no rating yet): the funnel on demographics and item features only",
        "popularity": "unknown user id: the most liked movies of train",
    }[rec.path]
    print(f"user {rec.user_id}: {note}")
    if rec.candidates:
        print("candidates: " + " -> ".join(f"{k} {v}" for k, v in rec.candidates.items()))
    rows = [
        {
            "#": item.rank,
            "movie": item.movie_id,
            "title": item.title,
            "genres": item.genres,
            **{f"{k} pos": v for k, v in item.positions.items() if k != "rerank"},
            **{f"{k} score": round(v, 3) for k, v in item.scores.items()},
        }
        for item in rec.items
    ]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    print(format_table(rows, columns))
    print(f"ILD@{len(rec.items)} (genres): {rec.ild:.4f}")
    return 0


def _listen(host: str, port: int):
    """A socket bound to host:port, so a busy port or bad host is one clear error here rather
    than a log line from inside uvicorn. IPv4 or IPv6 by the form of `host`."""
    import socket

    if not 0 < port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this: without it, a keep-alive client waited ~40 ms per
    # request (Nagle on the response's second write against the client's delayed ACK):
    # 56 ms against 17 ms per request on ML-1M, measured with bench/serve_load.py.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as error:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {error}") from None
    return sock


def _one_thread_per_process() -> None:
    """One BLAS and one torch thread in this process. A request's matrices are small (200
    candidates): extra threads only spin. With 2 workers on 2 cores, OpenBLAS's 2 threads
    per worker made pre-rank's p50 2.8 ms instead of 0.13 ms, and the server 5x slower."""
    import threadpoolctl
    import torch

    threadpoolctl.threadpool_limits(1)
    torch.set_num_threads(1)


def cmd_serve(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from recfunnel.manifest import read_manifest

    if not 1 <= args.workers <= 64:
        raise ConfigError(f"--workers must be in 1..64, got {args.workers}")
    read_manifest(args.run_dir)  # a clear error before any data is loaded (or torch imported)
    import uvicorn

    from recfunnel.serving.app import create_app
    from recfunnel.serving.metrics import Metrics
    from recfunnel.serving.recommender import Pipeline
    from recfunnel.serving.store import RatingStore
    from recfunnel.serving.workers import run_workers

    _one_thread_per_process()
    db = args.db or Path(args.run_dir) / "serving" / "ratings.sqlite3"
    dataset = _run_dataset(args, args.run_dir)
    sock = _listen(args.host, args.port)
    ml = _load(args, dataset)
    pipeline = Pipeline.load(args.run_dir, ml, args.device)
    # Opened (and created) only once the run has loaded: a serve that fails leaves no
    # database behind in the run directory.
    store = RatingStore(db)
    pipeline.recommend_trace(int(pipeline.user_ids[0]))  # warm-up: the first call is slow
    # Workers merge their /metrics through snapshot files in a folder of their own.
    metrics_dir = tempfile.mkdtemp(prefix="recfunnel-metrics-") if args.workers > 1 else None
    app = create_app(pipeline, store, metrics=Metrics(metrics_dir))
    store.close()  # no SQLite connection may cross a fork: each process opens its own
    shown = f"[{args.host}]" if ":" in args.host else args.host
    _log(
        f"serving {args.run_dir} at http://{shown}:{args.port}/ (API docs at /docs) with "
        f"{args.workers} worker{'s' if args.workers > 1 else ''}; live ratings in {db}"
    )
    config = uvicorn.Config(
        app,
        log_level="info" if args.access_log else "warning",
        access_log=args.access_log,
        timeout_graceful_shutdown=5,
    )

    def worker() -> None:
        # A fresh fork's first calls copy the shared pages they write to (object reference
        # counts, malloc's reuse of the parent's free heap): the first took 60 ms, and over
        # 20,000 requests each worker's private heap grew by ~18 MB. 100 calls spread over
        # the users (~0.3 s) pay most of that here instead of inside users' requests.
        for user in pipeline.user_ids[:: max(1, len(pipeline.user_ids) // 100)][:100]:
            pipeline.recommend_trace(int(user))
        uvicorn.Server(config).run(sockets=[sock])

    try:
        return run_workers(worker, args.workers, _log)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def cmd_bench(args: argparse.Namespace) -> int:
    from recfunnel.manifest import read_manifest

    read_manifest(args.run_dir)  # a clear error before any data is loaded (or torch imported)
    if args.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {args.repeats}")
    out = args.out or Path(args.run_dir) / "bench.json"
    _check_out_file(out)  # before minutes of timing
    from recfunnel.evaluation.bench import bench_run

    ml = _load(args, _run_dataset(args, args.run_dir))
    result = bench_run(args.run_dir, ml, repeats=args.repeats, device=args.device)
    from recfunnel.atomic import write_atomic

    write_atomic(out, json.dumps(result, indent=2).encode())
    print(json.dumps(result, indent=2))
    _log(f"wrote {out}")
    return 0


def _evaluate_baselines(args: argparse.Namespace) -> int:
    from recfunnel.data.split import make_split
    from recfunnel.evaluation.baselines import BASELINES, EASE
    from recfunnel.evaluation.protocol import Evaluator, catalogue
    from recfunnel.evaluation.tables import REFERENCE_COLUMNS, format_table

    models = _parse_models(EVALUATE_MODELS if args.model is None else args.model)
    ks = _parse_ks(EVALUATE_KS if args.ks is None else args.ks)
    ease_lambda = _ease_lambda(args.ease_lambda)
    ml = _load(args)
    split = make_split(ml.ratings, args.protocol or EVALUATE_PROTOCOL)
    items = catalogue(ml.ratings)
    history = args.history or "train"
    evaluator = Evaluator(
        split,
        items,
        ks=ks,
        history=history,
        item_features=ml.genre_matrix(items),
    )
    results = {}
    for name in models:
        model = EASE(ease_lambda) if BASELINES[name] is EASE else BASELINES[name]()
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
            "history": history,
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
        f"rated movies minus known history; scorer input: {history} ratings)"
    )
    print(format_table(rows, ["model", "group", "users", *columns]))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from recfunnel.config import describe
    from recfunnel.run import PipelineConfig

    rows = [{"key": k, "default": d, "meaning": h} for k, d, h in describe(PipelineConfig)]
    print(format_table(rows, ["key", "default", "meaning"]))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported as every other user mistake is: one line,
    status 2 (argparse prints its whole usage block first). Subcommands inherit it."""

    def error(self, message: str) -> NoReturn:
        _usage_error(self.prog, message)


def _usage_error(prog: str, message: str) -> NoReturn:
    print(f"{prog}: error: {message} (see `{prog} --help`)", file=sys.stderr)
    raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="recfunnel",
        description="A multi-stage recommender on MovieLens-1M: data, baselines, evaluation.",
        # No prefix matching: `train --seed=1` is a config override, and argparse would
        # otherwise read it as an abbreviation of `--seeds 1` (a folder of per-seed runs).
        allow_abbrev=False,
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

    train = sub.add_parser(
        "train",
        help="train the whole funnel into a run directory",
        description="Train every stage of the funnel (recall + index, pre-rank, rank; "
        "re-rank has no weights) on train, early-stopping each on valid, and write a run "
        "directory (resolved config, manifest, weights, index).",
        epilog="Overrides set any config field: --recall.objective=bpr --rank.epochs=2 "
        "--index.backend=exact. See `recfunnel config` for every field and its default.",
    )
    _add_data_options(train)
    _add_device_option(train, train=True)
    train.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML file with [recall], [index], [prerank], [rank], ... tables (optional)",
    )
    train.add_argument(
        "--out",
        type=Path,
        default=None,
        help="run directory to create (default: runs/funnel-DATE-TIME)",
    )
    train.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    train.add_argument(
        "--seeds",
        default=None,
        metavar="S1,S2,...",
        help="train one run per seed into OUT/seed-<s> (the top-level seed feeds every stage); "
        "it only trains: evaluate each run with `recfunnel evaluate`, then `recfunnel "
        "summarize OUT/seed-*` gives mean and spread (`make seeds` does all three)",
    )
    train.set_defaults(func=cmd_train)

    config = sub.add_parser(
        "config",
        help="list every config field with its default and meaning",
        description="Print every config field (dotted key, default, meaning); set them in a "
        "TOML file or as --section.field=value on `recfunnel train`.",
    )
    config.set_defaults(func=cmd_config)

    evaluate = sub.add_parser(
        "evaluate",
        help="evaluate baselines, or a trained run directory, under the protocol",
        description="Without RUN_DIR: fit baselines on train and evaluate them with full "
        "ranking under the protocol (shared/docs/protocol.md), warm and cold users "
        "separately. With RUN_DIR: run its whole funnel for every evaluated user and write "
        "the funnel report (report.md, report.json, PNG plots) into RUN_DIR.",
    )
    evaluate.add_argument(
        "run_dir",
        nargs="?",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="a run directory made by `recfunnel train` (optional)",
    )
    _add_data_options(evaluate)
    _add_device_option(evaluate)
    evaluate.add_argument(
        "--stage",
        choices=("funnel", "recall"),
        default="funnel",
        help="with RUN_DIR: the whole funnel (report.md + plots), or the recall stage alone "
        "beside the baselines with every ANN backend (default: funnel)",
    )
    evaluate.add_argument(
        "--channels",
        action="store_true",
        help="with --stage recall: also every registered recall channel alone and merged",
    )
    evaluate.add_argument(
        "--model",
        default=None,
        help="baseline(s) to evaluate without RUN_DIR, comma-separated: pop, ease "
        "(default: pop,ease)",
    )
    evaluate.add_argument(
        "--split",
        choices=("valid", "test"),
        default="test",
        help="part to evaluate on; choose hyper-parameters on valid (default: test)",
    )
    evaluate.add_argument(
        "--users",
        choices=("warm", "return"),
        default="warm",
        help="with RUN_DIR: every warm user of the part (the protocol's), or only those who "
        "come back after a pause of two weeks or more; on valid, the holdout that resembles "
        "the test task (report in RUN_DIR/report-<split>-return)",
    )
    evaluate.add_argument(
        "--protocol",
        choices=("global", "per_user", "backtest"),
        default=None,
        help="without RUN_DIR: split protocol: global temporal 80/10/10, per-user temporal, "
        "or backtest (a holdout inside train + valid, for choosing defaults) (default: global)",
    )
    evaluate.add_argument(
        "--history",
        choices=("train", "known"),
        default=None,
        help="ratings a model may read for a user: train (as the reference numbers) or known "
        "(train + valid at test time). Known history is always removed from the candidates. "
        "Default: train for baselines alone, known for a run directory.",
    )
    evaluate.add_argument(
        "--lambda",
        dest="ease_lambda",
        type=float,
        default=None,
        help="EASE L2 regularisation, for baselines and --stage recall (default: 1000)",
    )
    evaluate.add_argument(
        "--ks", default=None, help="without RUN_DIR: cut-offs K (default: 10,20,50,100,200)"
    )
    evaluate.add_argument(
        "--json", action="store_true", help="print a JSON object (keys like ndcg@20)"
    )
    evaluate.set_defaults(func=cmd_evaluate)

    compare = sub.add_parser(
        "compare",
        help="compare two run directories stage by stage, with bootstrap intervals",
        description="Run both funnels for the same warm users and print every stage's "
        "NDCG@20 and Recall@20 for each, and the paired bootstrap 95 % interval of the "
        "difference (1,000 draws over users, seeded).",
    )
    compare.add_argument("run_a", type=Path, metavar="RUN_A", help="a run directory")
    compare.add_argument("run_b", type=Path, metavar="RUN_B", help="the run to compare with")
    compare.add_argument(
        "--split", choices=("valid", "test"), default="test", help="part (default: test)"
    )
    compare.add_argument(
        "--users",
        choices=("warm", "return"),
        default="warm",
        help="every warm user of the part, or those back after a pause (default: warm)",
    )
    compare.add_argument("--json", action="store_true", help="print a JSON object")
    _add_data_options(compare)
    _add_device_option(compare)
    compare.set_defaults(func=cmd_compare)

    summarize = sub.add_parser(
        "summarize",
        help="mean and standard deviation of evaluated runs (e.g. one per seed)",
        description="Read the funnel report of each run directory (written by `recfunnel "
        "evaluate`) and print every list's NDCG@20, Recall@20 and ILD@20 and the rank "
        "stage's AUC, GAUC, LogLoss and ECE as mean +- standard deviation over the runs.",
    )
    summarize.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    summarize.add_argument(
        "--split", choices=("valid", "test"), default="test", help="part (default: test)"
    )
    summarize.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    summarize.add_argument("--json", action="store_true", help="print a JSON object")
    summarize.set_defaults(func=cmd_summarize)

    recommend = sub.add_parser(
        "recommend",
        help="recommend movies to one user with a trained run",
        description="Run the funnel of RUN_DIR for one user and print the final list with "
        "titles, genres and every stage's score and position.",
    )
    recommend.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory")
    recommend.add_argument("--user", type=int, required=True, help="user id (users.dat)")
    recommend.add_argument(
        "--topk-recall", type=int, default=None, help="recall candidates (default: the run's, 200)"
    )
    recommend.add_argument(
        "--topk-final", type=int, default=None, help="final list length (default: the run's, 20)"
    )
    recommend.add_argument(
        "--lambda",
        dest="lambda_mmr",
        type=float,
        default=None,
        help="re-rank lambda in [0, 1] (default: the run's, chosen on valid in training)",
    )
    recommend.add_argument("--json", action="store_true", help="print a JSON object")
    _add_data_options(recommend)
    _add_device_option(recommend)
    recommend.set_defaults(func=cmd_recommend)

    serve = sub.add_parser(
        "serve",
        help="serve a trained run over HTTP: REST API and the funnel web page",
        description="Serve RUN_DIR over HTTP: recommendations with the whole funnel trace, "
        "live ratings (stored in SQLite and read at once as history), title search, "
        "Prometheus metrics, OpenAPI docs at /docs and a web page at /.",
    )
    serve.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument(
        "--db",
        type=Path,
        default=None,
        help="SQLite file of live ratings (default: RUN_DIR/serving/ratings.sqlite3)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes, forked after the run is loaded (they share its memory); "
        "one per core serves that many requests at once (default: 1)",
    )
    serve.add_argument(
        "--access-log", action="store_true", help="log every request (off: it costs latency)"
    )
    _add_data_options(serve)
    _add_device_option(serve)
    serve.set_defaults(func=cmd_serve)

    bench = sub.add_parser(
        "bench",
        help="time recommend_for_user and batch scoring of a trained run",
        description="Latency of recommend_for_user for every warm test user (after warm-up) "
        "and the batch throughput of the whole funnel; writes RUN_DIR/bench.json.",
    )
    bench.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory")
    bench.add_argument("--out", type=Path, default=None, help="JSON file to write")
    bench.add_argument("--repeats", type=int, default=1, help="passes over the users")
    _add_data_options(bench)
    _add_device_option(bench)
    bench.set_defaults(func=cmd_bench)
    for command in sub.choices.values():  # no prefix matching in any command either
        command.allow_abbrev = False
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    command = getattr(args, "command", None)
    prog = f"{parser.prog} {command}" if command else parser.prog  # whose options these are
    # Only `train` takes free-form --section.field=value (or top-level --field=value, such
    # as --split=backtest or --seed=1) overrides; elsewhere they are errors.
    if getattr(args, "func", None) is cmd_train:
        bad = [
            a for a in extra if not (a.startswith("--") and ("." in a.split("=")[0] or "=" in a))
        ]
        if bad:
            # `--split backtest` is the likely slip: overrides are one word each.
            hint = "; config overrides take the form --key=value, e.g. --split=backtest"
            _usage_error(prog, f"unrecognized arguments: {' '.join(bad)}{hint}")
        args.overrides = extra
    elif extra:
        _usage_error(prog, f"unrecognized arguments: {' '.join(extra)}")
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        with sigterm_raises():
            return args.func(args)
    except RecfunnelError as error:
        print(f"recfunnel: error: {error}", file=sys.stderr)
        return 2
    except Terminated:
        print("recfunnel: terminated", file=sys.stderr)
        return SIGTERM_EXIT_CODE
    except KeyboardInterrupt:
        print("recfunnel: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
