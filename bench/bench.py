"""Benchmark of the recall stage on ML-1M: training wall time and peak memory, retrieval
quality and latency of each index backend. Writes bench/results.json and prints a summary.

    make bench            # or: .venv/bin/python bench/bench.py --data-dir DIR

Timings are whole processes (the CLI as a user runs it), measured from outside.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timed(cmd: list[str]) -> dict[str, float]:
    """Run a command; its wall seconds and the peak RSS (MiB) of the process tree so far."""
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"wall_s": round(wall, 2), "peak_rss_mib_so_far": round(peak_kib / 1024, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("RECFUNNEL_DATA_DIR"))
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench"))
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "recfunnel.cli"]
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    quiet = [*data, "--no-progress"]

    subprocess.run([*cli, "data", *quiet], check=True, stdout=subprocess.DEVNULL)  # warm cache
    train = timed(
        [*cli, "train", "--stage", "recall", "--out", str(args.run_dir), "--overwrite", *quiet]
    )
    evaluate = timed([*cli, "evaluate", str(args.run_dir), *quiet])
    metrics = json.loads((args.run_dir / "metrics.json").read_text())
    manifest = json.loads((args.run_dir / "manifest.json").read_text())
    test_warm = {
        r["model"]: r for r in metrics["rows"] if r["part"] == "test" and r["group"] == "warm"
    }
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "train_recall": {**train, "model_fit_s": round(manifest["train_seconds"]["recall"], 1)},
        "evaluate_run": evaluate,
        "test_warm_recall@200": {m: round(r["recall@200"], 4) for m, r in test_warm.items()},
        "test_warm_ndcg@20": {m: round(r["ndcg@20"], 4) for m, r in test_warm.items()},
        "ann": [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
            for row in metrics["ann"]
        ],
    }
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
