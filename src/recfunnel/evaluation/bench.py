"""Serving benchmark of a trained run: `recommend_for_user` latency and batch throughput.

Latency is measured per call for every warm test user (after a warm-up), the way a service
would answer them one by one: through the fast path (`recommend_for_user`, `Funnel.serve`),
with each stage's share of the call, and, for comparison, through the batch path for one
user (`recommend_batch([user])`, `Funnel.run`). Throughput runs the whole funnel for all
test users in one batch. All use the protocol's known history (train + valid).
"""

from __future__ import annotations

import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recfunnel import __version__
from recfunnel.data.dataset import MovieLens
from recfunnel.data.schema import USER
from recfunnel.data.split import liked
from recfunnel.serving.recommender import Pipeline


def _percentiles(ms: np.ndarray) -> dict[str, float]:
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "max_ms": float(ms.max()),
    }


def _model_latency(pipeline: Pipeline, users: np.ndarray) -> dict[str, Any]:
    """Per user, the pre-rank stage on its 200 recall candidates and the rank stage on the
    100 it keeps, the earlier lists computed beforehand: each stage's own call (its features,
    its model, its cut)."""
    funnel = pipeline.funnel
    prerank_ms, rank_ms = [], []
    for i, user in enumerate(users[:300]):
        requests = pipeline.requests(np.array([user]))
        lists = funnel.run(requests, upto="prerank")
        t = time.perf_counter()
        funnel["prerank"](requests, lists["item_to_item"])
        t1 = time.perf_counter()
        funnel["rank"](requests, lists["prerank"])
        t2 = time.perf_counter()
        if i >= 20:  # warm-up
            prerank_ms.append(1000 * (t1 - t))
            rank_ms.append(1000 * (t2 - t1))
    return {
        "prerank_200_candidates": _percentiles(np.array(prerank_ms)),
        "rank_100_candidates": _percentiles(np.array(rank_ms)),
    }


# Bands of the number of rated movies, [low, high), for the latency by history length.
HISTORY_BANDS = ((0, 50), (50, 100), (100, 200), (200, 400), (400, 800), (800, None))


def _by_history(history: np.ndarray, stage_ms: dict[str, list[float]]) -> list[dict[str, Any]]:
    """The fast path's p50 per band of history length: the whole funnel (the sum of its
    stages) and each stage. Why: a user's liked-row sums read one catalogue row per liked
    movie, so the cost of a call depends on who asks."""
    stages = {name: np.array(values) for name, values in stage_ms.items()}
    total = np.sum(list(stages.values()), axis=0)  # (users,) the funnel's own time
    rows = []
    for low, high in HISTORY_BANDS:
        band = (history >= low) & (history < (high if high is not None else np.inf))
        if not band.any():
            continue
        rows.append(
            {
                "rated": f"{low}-{high - 1}" if high is not None else f">={low}",
                "users": int(band.sum()),
                "funnel_p50_ms": float(np.median(total[band])),
                **{f"{name}_p50_ms": float(np.median(v[band])) for name, v in stages.items()},
            }
        )
    return rows


def bench_run(
    run_dir: str | Path, ml: MovieLens, *, repeats: int = 1, device: str = "auto"
) -> dict[str, Any]:
    """Timings of a run directory (see the module docstring), as a JSON-able dict."""
    start = time.perf_counter()
    pipeline = Pipeline.load(run_dir, ml, device)
    load_s = time.perf_counter() - start
    split = pipeline.run.split
    test_users = np.unique(liked(split.test)[USER].to_numpy())
    warm = test_users[np.isin(test_users, split.train[USER].to_numpy())]

    for user in warm[:20]:  # warm-up: first calls allocate and fill caches (and kernels)
        pipeline.recommend_for_user(int(user))
        pipeline.recommend_batch([int(user)])
    ms = []
    for _ in range(repeats):
        for user in warm:
            t = time.perf_counter()
            pipeline.recommend_for_user(int(user))
            ms.append(1000 * (time.perf_counter() - t))
    funnel = pipeline.funnel
    stage_ms: dict[str, list[float]] = {name: [] for name in funnel.stages}
    history = []  # each user's number of rated movies, for `_by_history`
    for user in warm:
        request = pipeline.user_request(int(user))
        _, own = funnel.serve(request)
        history.append(len(request.items))
        for name, value in own.items():
            stage_ms[name].append(value)
    batch_ms = []
    for user in warm[:300]:
        t = time.perf_counter()
        pipeline.recommend_batch([int(user)])
        batch_ms.append(1000 * (time.perf_counter() - t))

    models = _model_latency(pipeline, warm)
    funnel.clear_timings()
    t = time.perf_counter()
    pipeline.recommend_batch(test_users)
    batch_s = time.perf_counter() - t
    memory = _chunked_memory(pipeline, test_users)
    return {
        "version": __version__,
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "load_seconds": load_s,
        "recommend_for_user": {"users": len(warm), "calls": len(ms), **_percentiles(np.array(ms))},
        "fast_path_stage_ms": {
            name: _percentiles(np.array(values)) for name, values in stage_ms.items()
        },
        "fast_path_by_history": _by_history(np.array(history), stage_ms),
        "batch_path_one_user": {"calls": len(batch_ms), **_percentiles(np.array(batch_ms))},
        "model_only": models,
        "batch": {
            "users": len(test_users),
            "seconds": batch_s,
            "users_per_second": len(test_users) / batch_s,
            "stage_seconds": funnel.timings_snapshot(),
        },
        "chunked_batch_memory": memory,
    }


def _chunked_memory(pipeline: Pipeline, users: np.ndarray, times: int = 8) -> dict[str, Any]:
    """Peak resident memory before and after streaming `times` x the test users through
    `recommend_chunks`: with chunked batches, the peak should not grow with the count."""
    before = _peak_rss_mb()
    ids = np.tile(users, times)
    t = time.perf_counter()
    for _ in pipeline.recommend_chunks(ids):
        pass
    return {
        "users": len(ids),
        "seconds": time.perf_counter() - t,
        "peak_rss_mb_before": before,
        "peak_rss_mb_after": _peak_rss_mb(),
    }


def _peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
