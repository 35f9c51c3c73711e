"""Benchmark of the funnel on ML-1M: training and evaluation wall time and peak memory, the
recall index's quality and latency per backend, and the serving latency of
recommend_for_user and the batch throughput. Writes bench/results.json and prints it.

    make bench            # or: .venv/bin/python bench/bench.py --data-dir DIR

Timings are whole processes (the CLI as a user runs it), measured from outside; each command
runs alone, never beside another torch process (two would fight over the two cores).
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
    """Run a command alone; its wall seconds and its own peak RSS in MiB (GNU time -f %M when
    available, else the largest child so far)."""
    start = time.perf_counter()
    gnu_time = Path("/usr/bin/time")
    if gnu_time.exists():
        done = subprocess.run(
            [str(gnu_time), "-f", "%M", *cmd],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        peak_kib = int(done.stderr.strip().splitlines()[-1])
    else:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    wall = time.perf_counter() - start
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(peak_kib / 1024, 1)}


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
    run = str(args.run_dir)
    train = timed([*cli, "train", "--out", run, "--overwrite", *quiet])
    evaluate = timed([*cli, "evaluate", run, *quiet])
    recall = timed([*cli, "evaluate", run, "--stage", "recall", *quiet])
    serve = timed([*cli, "bench", run, *quiet])
    report = json.loads((args.run_dir / "report.json").read_text())
    recall_metrics = json.loads((args.run_dir / "recall_metrics.json").read_text())
    manifest = json.loads((args.run_dir / "manifest.json").read_text())
    serving = json.loads((args.run_dir / "bench.json").read_text())
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "train": {**train, "stage_seconds": manifest["train_seconds"]},
        "evaluate": evaluate,
        "evaluate_recall_and_ann": recall,
        "bench_command": serve,
        "test_warm_ndcg@20": {s: round(r["ndcg@20"], 4) for s, r in report["stages"].items()},
        "rank_pointwise_test": report["pointwise"]["rank"],
        "ann": [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
            for row in recall_metrics["ann"]
        ],
        "serving": serving,
    }
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
