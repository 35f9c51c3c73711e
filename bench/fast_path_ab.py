"""Two or more trained runs on the serving fast path, timed in one process, taking turns.

`recfunnel bench` times one run per process, and this machine's speed drifts by up to a third
between processes, more than most changes to a model's cost. Here every run is loaded into
the same process and each user of a seeded sample of users.dat is answered once by every
run (`Pipeline.recommend_for_user`; users with a served history only, as a warm user of
`recfunnel bench`), in a seeded random order per user, so a slow spell or
a warm cache falls on all runs alike. It prints each run's p50 / p90 / p99 / mean in ms and
its p50 and p99 as a ratio to the first run's. Timing reads no labels, so no part is needed.
Run it alone, with OMP_NUM_THREADS=1 as `recfunnel bench` does:

    OMP_NUM_THREADS=1 .venv/bin/python bench/fast_path_ab.py runs/default runs/other
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from recfunnel.errors import ConfigError, run_script
from recfunnel.evaluation.tables import format_table
from recfunnel.run import load_run_data
from recfunnel.serving.recommender import Pipeline


def alternate(pipelines: list[Pipeline], n_users: int, warmup: int = 20) -> list[list[float]]:
    """Per pipeline, the ms of one `recommend_for_user` call for each of up to `n_users`
    users (after `warmup` users answered by every pipeline, not timed)."""
    rng = np.random.default_rng(0)
    first = pipelines[0]
    users = [
        u for u in rng.permutation(first.user_ids).tolist() if len(first.user_request(u).items)
    ]
    warmup = min(warmup, len(users) // 4)  # a small data set keeps most users for timing
    ms: list[list[float]] = [[] for _ in pipelines]
    for i, user in enumerate(users[: warmup + n_users]):
        for p in rng.permutation(len(pipelines)).tolist():
            start = time.perf_counter()
            pipelines[p].recommend_for_user(user)
            if i >= warmup:
                ms[p].append(1000 * (time.perf_counter() - start))
    return ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+", help="two or more run directories")
    parser.add_argument("--users", type=int, default=1000, help="users timed (default 1000)")
    parser.add_argument("--data-dir", default=os.environ.get("RECFUNNEL_DATA_DIR"))
    args = parser.parse_args()
    if len(args.run_dirs) < 2 or args.users < 1:
        raise ConfigError("give two or more run directories and --users >= 1")
    ml = load_run_data(*args.run_dirs, data_dir=args.data_dir)  # one data set for all
    pipelines = [Pipeline.load(run_dir, ml) for run_dir in args.run_dirs]
    ms = alternate(pipelines, args.users)
    first = np.array(ms[0])
    rows = []
    for run_dir, values in zip(args.run_dirs, ms, strict=True):
        a = np.array(values)
        rows.append(
            {
                "run": str(run_dir),
                "users": len(a),
                "p50_ms": float(np.median(a)),
                "p90_ms": float(np.percentile(a, 90)),
                "p99_ms": float(np.percentile(a, 99)),
                "mean_ms": float(a.mean()),
                "p50_ratio": float(np.median(a) / np.median(first)),
                "p99_ratio": float(np.percentile(a, 99) / np.percentile(first, 99)),
            }
        )
    print("recommend_for_user, every run in turn for each user, ms")
    print(format_table(rows, list(rows[0])))
    return 0


if __name__ == "__main__":
    run_script(main)
