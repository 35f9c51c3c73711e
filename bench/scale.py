"""Scale benchmark: ML-20M-sized synthetic data through loading, the split and one recall epoch,
the non-learned channels at that size, and loading an ML-32M-sized file. Writes
bench/scale_results.json and prints it.

    make bench-scale      # or: .venv/bin/python bench/scale.py [--work DIR]

What is timed (wall seconds, and the peak RSS of the process that ran it):

1. `pipeline` (one process, as `recfunnel train` would run it): loading ML-20M-format CSV
   with a cold parse cache (parse, validate, write parquet), the global temporal split, and
   one epoch of the two-tower recall channel: `TwoTowerChannel.fit` with epochs=1 on the
   early 80 % of train, as the training recipe fits recall (feature tables, causal
   popularity tables, training examples, the epoch, the valid metric at its end). Targets:
   <= 15 minutes in all, <= 12 GB peak.
2. `channels` (another process): the non-learned channels fitted on the same data: EASE
   and RP3beta (whatever `recfunnel.scale` chooses for the catalogue: sparse at 27k items)
   and trending; after a warm (parquet) load and the split, not counted in the target.
3. `load-32m` (another process): a cold load of ML-32M-format CSV, 32 M ratings, 200,948
   users, 87,585 movies. Targets: <= 60 s, <= 6 GB.

The data are written once into --work (default ~/.cache/recfunnel/bench-scale) and reused:
ML-20M-sized by `write_synthetic_movielens(format="csv")` (138,493 users, 27,278 movies,
planted structure), ML-32M-sized by `write_large_csv` (exact size, no structure). Each step
runs alone, never beside another torch process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GIB = 1 << 30

ML20M = {"n_users": 138_493, "n_items": 27_278, "median_ratings": 113.0}
ML20M_RATINGS = (20, 3_000)
ML32M = {"n_ratings": 32_000_204, "n_users": 200_948, "n_items": 87_585, "n_tags": 2_000_072}


def peak_rss_gib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3)


def ensure_data(work: Path, name: str) -> Path:
    """The synthetic folder `name` under `work`, written once (a marker says it is whole)."""
    from recfunnel.data.synthetic import write_large_csv, write_synthetic_movielens

    folder = work / name
    marker = folder / ".complete"
    if marker.is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    if name == "ml-20m-synthetic":
        write_synthetic_movielens(folder, format="csv", ratings_per_user=ML20M_RATINGS, **ML20M)
    else:
        write_large_csv(folder, **ML32M)
    marker.write_text(json.dumps({"write_s": round(time.perf_counter() - start, 1)}) + "\n")
    return folder


def step_pipeline(data: Path, cache: Path) -> dict:
    from recfunnel.data import load_movielens
    from recfunnel.data.split import make_split
    from recfunnel.evaluation.protocol import catalogue
    from recfunnel.recall.two_tower.channel import TwoTowerChannel, TwoTowerConfig
    from recfunnel.stage import FitData
    from recfunnel.training.stacking import time_slice

    shutil.rmtree(cache, ignore_errors=True)  # a cold parse, as on a first run
    out: dict = {}
    start = time.perf_counter()
    ml = load_movielens(data, dataset="ml-20m", cache_dir=cache, progress=False)
    out["load"] = {"wall_s": round(time.perf_counter() - start, 1), "peak_rss_gib": peak_rss_gib()}
    start = time.perf_counter()
    split = make_split(ml.ratings, "global")
    out["split"] = {"wall_s": round(time.perf_counter() - start, 1), "peak_rss_gib": peak_rss_gib()}
    start = time.perf_counter()
    early, _ = time_slice(split, 0.2)  # the recipe's default stacking.slice_fraction
    fit = FitData(ml, early, catalogue(ml.ratings), progress=False)
    channel = TwoTowerChannel(TwoTowerConfig(epochs=1)).fit(fit)
    out["recall_epoch"] = {
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_gib": peak_rss_gib(),
        "train_loop_s": round(channel.log_.seconds, 1),
        "valid_" + channel.log_.metric_name: round(channel.log_.best_metric, 4),
        "train_ratings": len(early.train),
    }
    out["sizes"] = {
        "ratings": len(ml.ratings),
        "users": int(ml.ratings["user_id"].nunique()),
        "items": int(ml.ratings["item_id"].nunique()),
        "tags": 0 if ml.tags is None else len(ml.tags),
        "train": len(split.train),
        "valid": len(split.valid),
        "test": len(split.test),
    }
    out["total_s"] = round(sum(out[k]["wall_s"] for k in ("load", "split", "recall_epoch")), 1)
    out["peak_rss_gib"] = peak_rss_gib()
    return out


def step_channels(data: Path, cache: Path) -> dict:
    from recfunnel.data import load_movielens
    from recfunnel.data.split import make_split
    from recfunnel.evaluation.protocol import catalogue
    from recfunnel.recall.item_to_item import EASEChannel, RP3betaChannel
    from recfunnel.recall.trending import TrendingChannel
    from recfunnel.scale import plan
    from recfunnel.stage import FitData
    from recfunnel.training.stacking import time_slice

    ml = load_movielens(data, dataset="ml-20m", cache_dir=cache, progress=False)  # warm
    early, _ = time_slice(make_split(ml.ratings, "global"), 0.2)
    items = catalogue(ml.ratings)
    fit = FitData(ml, early, items, progress=False)
    out: dict = {"item_item": plan(len(items))}
    for name, channel in (
        ("ease", EASEChannel()),
        ("rp3beta", RP3betaChannel()),
        ("trending", TrendingChannel()),
    ):
        start = time.perf_counter()
        channel.fit(fit)
        out[name] = {
            "wall_s": round(time.perf_counter() - start, 1),
            "peak_rss_gib": peak_rss_gib(),
        }
        weights = getattr(channel, "weights_", None)
        if weights is not None and hasattr(weights, "nnz"):
            out[name]["nonzeros"] = int(weights.nnz)
        del channel
    return out


def step_load_32m(data: Path, cache: Path) -> dict:
    from recfunnel.data import load_movielens

    shutil.rmtree(cache, ignore_errors=True)
    start = time.perf_counter()
    ml = load_movielens(data, dataset="ml-32m", cache_dir=cache, progress=False)
    cold = round(time.perf_counter() - start, 1)
    peak = peak_rss_gib()
    start = time.perf_counter()
    again = load_movielens(data, dataset="ml-32m", cache_dir=cache, progress=False)
    warm = round(time.perf_counter() - start, 1)
    return {
        "cold_wall_s": cold,
        "cold_peak_rss_gib": peak,
        "warm_wall_s": warm,
        "ratings": len(ml.ratings),
        "items": len(ml.items),
        "tags": len(again.tags) if again.tags is not None else 0,
    }


STEPS = {"pipeline": step_pipeline, "channels": step_channels, "load-32m": step_load_32m}


def run_step(name: str, data: Path, cache: Path) -> dict:
    """`name` in a fresh process of its own, so its peak memory is its own."""
    done = subprocess.run(
        [sys.executable, __file__, "--step", name, "--data", str(data), "--cache", str(cache)],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work", type=Path, default=Path("~/.cache/recfunnel/bench-scale").expanduser()
    )
    parser.add_argument("--out", type=Path, default=HERE / "scale_results.json")
    parser.add_argument("--skip", default="", help="comma-separated steps not to run")
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:  # inside the child process
        print(json.dumps(STEPS[args.step](args.data, args.cache)))
        return 0

    skip = {s for s in args.skip.split(",") if s}
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
        "targets": {
            "pipeline_total_s": 900,
            "pipeline_peak_rss_gib": 12,
            "load_32m_s": 60,
            "load_32m_peak_rss_gib": 6,
        },
    }
    start = time.perf_counter()
    data20 = ensure_data(args.work, "ml-20m-synthetic")
    results["write_20m_s"] = json.loads((data20 / ".complete").read_text())["write_s"]
    print(f"ML-20M-sized data in {data20} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    cache = args.work / "cache-20m"
    for name in ("pipeline", "channels"):
        if name not in skip:
            results[name] = run_step(name, data20, cache)
            print(f"{name}: {json.dumps(results[name])}", file=sys.stderr)
            args.out.write_text(json.dumps(results, indent=2) + "\n")  # kept if stopped later
    if "load-32m" not in skip:
        data32 = ensure_data(args.work, "ml-32m-synthetic")
        results["write_32m_s"] = json.loads((data32 / ".complete").read_text())["write_s"]
        results["load-32m"] = run_step("load-32m", data32, args.work / "cache-32m")
        shutil.rmtree(args.work / "cache-32m", ignore_errors=True)
    if "pipeline" in results:
        p = results["pipeline"]
        results["met"] = {
            "pipeline_total": p["total_s"] <= 900,
            "pipeline_peak": p["peak_rss_gib"] <= 12,
        }
    if "load-32m" in results:
        m = results.setdefault("met", {})
        m["load_32m_time"] = results["load-32m"]["cold_wall_s"] <= 60
        m["load_32m_peak"] = results["load-32m"]["cold_peak_rss_gib"] <= 6
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
