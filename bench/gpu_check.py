"""GPU check: train a tiny funnel on synthetic data on cuda and on the CPU, compare, time both.

    .venv/bin/python bench/gpu_check.py            # or: make gpu-check

Needs a machine where torch sees a CUDA GPU (and a CUDA build of torch: constraints.txt pins
the CPU build, so install the CUDA wheel of the same version first); without one it stops
with a message and exit status 2, writing nothing. It checks, on the warm test users of the
synthetic data set (600 users, 400 movies):

1. inference: the CPU-trained run loaded on cuda gives the same lists as on the CPU (only
   float rounding differs): mean overlap of every stage's lists >= 0.99, NDCG@20 within 0.002;
2. the other way: the cuda-trained run, saved and loaded on the CPU, gives its cuda lists;
3. training: the cuda-trained funnel's NDCG@20 per stage is within 0.05 of the CPU one.
   Not equal: CUDA kernels sum in other orders and draw dropout and negatives from the CUDA
   generator, so the two trainings take different paths from the same seed.

Writes bench/gpu_check.json (times, metrics, overlaps, pass/fail of each check); exit 0 when
every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
# The three DDP/torch recall channels besides the default ones, so every torch part runs.
CHANNELS = "--recall.channels=two_tower,sequence,lightgcn,trending"
STAGES = ("recall", "prerank", "rank", "rerank")
INFERENCE_OVERLAP, INFERENCE_NDCG, TRAINING_NDCG = 0.99, 0.002, 0.05


def lists_and_metrics(funnel: Any, evaluator: Any, users: Any) -> tuple[dict, dict]:
    """Every stage's lists (n_users, k) and its NDCG@20 / Recall@20 on `users`."""
    out = funnel.run(funnel.requests(users))
    lists = {stage: out[stage].items for stage in STAGES}
    metrics = {
        stage: {
            k: round(v, 5)
            for k, v in evaluator.list_metrics(items, users).items()
            if k in ("ndcg@20", "recall@20")
        }
        for stage, items in lists.items()
    }
    return lists, metrics


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of |a_row ∩ b_row| / |a_row| (padding -1 ignored)."""
    shares = []
    for x, y in zip(a, b, strict=True):
        x, y = x[x >= 0], y[y >= 0]
        shares.append(len(np.intersect1d(x, y)) / max(len(x), 1))
    return float(np.mean(shares))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "gpu_check.json")
    parser.add_argument(
        "--devices",
        default="cpu,cuda",
        help="the two devices compared (cpu,cpu dry-runs this script on a machine without a GPU)",
    )
    parser.add_argument("overrides", nargs="*", help="extra --section.field=value overrides")
    args = parser.parse_args()
    devices = tuple(args.devices.split(","))
    if len(devices) != 2 or not set(devices) <= {"cpu", "cuda"}:
        print(f"gpu_check: --devices takes two of cpu, cuda, got {args.devices!r}", file=sys.stderr)
        return 2
    if "cuda" in devices and not torch.cuda.is_available():
        print(
            f"gpu_check: torch {torch.__version__} sees no CUDA GPU (CUDA build: "
            f"{torch.version.cuda or 'none'}); run this on a machine with one and a CUDA "
            "build of torch. Nothing was written.",
            file=sys.stderr,
        )
        return 2

    from recfunnel.config import load_config
    from recfunnel.data import load_movielens
    from recfunnel.data.split import make_split
    from recfunnel.data.synthetic import write_synthetic_movielens
    from recfunnel.evaluation.protocol import Evaluator
    from recfunnel.run import SMOKE_OVERRIDES, PipelineConfig, load_run, write_run
    from recfunnel.training.recipe import train_funnel

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        ml = load_movielens(write_synthetic_movielens(tmp / "data"), cache_dir=tmp / "cache")
        split = make_split(ml.ratings)
        results: dict[str, Any] = {}
        lists: dict[str, dict] = {}
        first, second = devices
        for i, (device, other) in enumerate(((first, second), (second, first))):
            config = load_config(
                PipelineConfig, None, [*SMOKE_OVERRIDES, CHANNELS, *args.overrides]
            )
            config = dataclasses.replace(config, device=device)
            start = time.perf_counter()
            funnel, report = train_funnel(ml, split, config, progress=False)
            if device == "cuda":
                torch.cuda.synchronize()
            train_s = time.perf_counter() - start
            name = device if device != other else f"{device}-{i}"  # a dry run: cpu,cpu
            run_dir = write_run(tmp / f"run-{name}", config, ml, funnel, report)
            evaluator = Evaluator(split, funnel.item_ids, ks=(20,))
            users = evaluator.users("test", "warm")
            start = time.perf_counter()
            lists[name], metrics = lists_and_metrics(funnel, evaluator, users)
            results[name] = {
                "train_s": round(train_s, 2),
                "stage_s": {k: round(v, 2) for k, v in report.seconds.items()},
                "inference_s": round(time.perf_counter() - start, 2),
                "metrics": metrics,
            }
            # The same run loaded on the other device.
            loaded = load_run(run_dir, ml, other).funnel
            other_lists, other_metrics = lists_and_metrics(loaded, evaluator, users)
            results[f"{name}_trained_loaded_on_{other}"] = {
                "metrics": other_metrics,
                "overlap": {s: round(overlap(lists[name][s], other_lists[s]), 4) for s in STAGES},
                "max_ndcg_diff": round(
                    max(abs(metrics[s]["ndcg@20"] - other_metrics[s]["ndcg@20"]) for s in STAGES),
                    5,
                ),
            }

    checks = {}
    trained = [k for k in results if "_trained_loaded_on_" not in k]  # the two trainings
    for key in (k for k in results if "_trained_loaded_on_" in k):
        entry = results[key]
        checks[key] = (
            min(entry["overlap"].values()) >= INFERENCE_OVERLAP
            and entry["max_ndcg_diff"] <= INFERENCE_NDCG
        )
    a, b = (results[k]["metrics"] for k in trained)
    training_diff = {s: round(abs(a[s]["ndcg@20"] - b[s]["ndcg@20"]), 5) for s in STAGES}
    checks["training_ndcg_within_tolerance"] = max(training_diff.values()) <= TRAINING_NDCG
    summary = {
        "devices": list(devices),
        "machine": {
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "data": "synthetic ML-1M-shaped, 600 users, 400 movies (seed 0); test, warm users",
        "config": [*SMOKE_OVERRIDES, CHANNELS, *args.overrides],
        "tolerances": {
            "inference_overlap": INFERENCE_OVERLAP,
            "inference_ndcg": INFERENCE_NDCG,
            "training_ndcg": TRAINING_NDCG,
        },
        **results,
        "training_ndcg_diff": training_diff,
        "checks": checks,
        "passed": all(checks.values()),
    }
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    times = {f"{k} train_s": results[k]["train_s"] for k in trained}
    print(json.dumps({"checks": checks, **times}, indent=2))
    print(f"wrote {args.out}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
