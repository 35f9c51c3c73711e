"""Evaluation of the recall stage: the two-tower channel's top-N metrics beside the
baselines, the quality and speed of each ANN backend against exact search, and every
registered channel alone and merged (`channel_report`)."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from matplotlib.figure import Figure

from recfunnel.atomic import write_atomic
from recfunnel.data.dataset import MovieLens
from recfunnel.data.split import Split
from recfunnel.evaluation.baselines import EASE, Popularity
from recfunnel.evaluation.protocol import Evaluator, EvalUsers, HistorySource
from recfunnel.recall.index import ItemIndex, make_index, recall_against_exact
from recfunnel.recall.merge import merge_lists
from recfunnel.recall.stage import CHANNELS, RecallConfig, RecallStage
from recfunnel.recall.two_tower.channel import TwoTowerChannel
from recfunnel.stage import FitData
from recfunnel.types import Candidates, Requests

RECALL_KS = (20, 50, 100, 200)
RECALL_COLUMNS = (
    "recall@50",
    "recall@100",
    "recall@200",
    "hit_rate@50",
    "hit_rate@200",
    "ndcg@20",
    "ndcg@200",
)
ANN_BACKENDS: dict[str, dict[str, Any]] = {
    "exact": {},
    "hnsw": {"M": 32, "ef_construction": 200, "ef_search": 256},
    "ivf": {"nprobe": 16},
}


def index_top_k(
    index: ItemIndex, stage: TwoTowerChannel, users: EvalUsers, k: int
) -> tuple[np.ndarray, float]:
    """Top-k catalogue positions (n_users, k) from the index, known items excluded, and the
    wall time of the search itself (user vectors excluded)."""
    queries = stage.user_embeddings(users.user_ids, users.history)
    start = time.perf_counter()
    ids, _ = index.search(queries, k, exclude=users.known)
    seconds = time.perf_counter() - start
    positions = np.searchsorted(stage.item_ids_, ids)
    return np.where(ids >= 0, positions, -1), seconds


def evaluate_recall(
    stage: TwoTowerChannel,
    index: ItemIndex,
    ml: MovieLens,
    split: Split,
    *,
    history: HistorySource = "known",
    ease_lambda: float = 1000.0,
) -> dict[str, Any]:
    """Metrics of popularity, EASE, the recall model (exact) and the recall model through its
    index, on valid and test, warm and cold; and ANN recall@200 / latency per backend."""
    items = stage.item_ids_
    evaluator = Evaluator(
        split, items, ks=RECALL_KS, history=history, item_features=ml.genre_matrix(items)
    )
    models = {
        "pop": Popularity().fit(split.train, items),
        "ease": EASE(ease_lambda).fit(split.train, items),
        "two-tower": stage,
    }
    rows: list[dict[str, Any]] = []
    for part in ("valid", "test"):
        for group in ("warm", "cold"):
            users = evaluator.users(part, group)
            if len(users.user_ids) == 0:
                continue
            for name, model in models.items():
                top = evaluator.rank(model, users, max(RECALL_KS))
                rows.append(
                    {
                        "part": part,
                        "group": group,
                        "model": name,
                        **evaluator.list_metrics(top, users),
                    }
                )
            top, _ = index_top_k(index, stage, users, max(RECALL_KS))
            rows.append(
                {
                    "part": part,
                    "group": group,
                    "model": f"two-tower ({index.backend})",
                    **evaluator.list_metrics(top, users),
                }
            )
    return {
        "history": history,
        "split": split.kind,
        "rows": rows,
        "ann": ann_report(stage, evaluator),
    }


def ann_report(stage: TwoTowerChannel, evaluator: Evaluator, k: int = 200) -> list[dict[str, Any]]:
    """For each backend: build time, recall@k against exact search, and the time to retrieve
    the top-k of every test user (warm and cold) with their known items excluded."""
    embeddings = stage.item_embeddings()
    warm = evaluator.users("test", "warm")
    cold = evaluator.users("test", "cold")
    # Zero cold users is fine: vstack of an empty block keeps the shapes right.
    queries = np.concatenate(
        [
            stage.user_embeddings(warm.user_ids, warm.history),
            stage.user_embeddings(cold.user_ids, cold.history),
        ]
    )
    exclude = sp.vstack([warm.known, cold.known]).tocsr()
    exact = make_index("exact").build(embeddings, stage.item_ids_)
    out = []
    for backend, params in ANN_BACKENDS.items():
        start = time.perf_counter()
        index = make_index(backend, **params).build(embeddings, stage.item_ids_)
        build = time.perf_counter() - start
        index.search(queries[:8], k, exclude=exclude[:8])  # warm-up
        start = time.perf_counter()
        index.search(queries, k, exclude=exclude)
        seconds = time.perf_counter() - start
        out.append(
            {
                "backend": backend,
                "params": params,
                "build_s": build,
                f"recall@{k}_vs_exact": recall_against_exact(index, exact, queries, k, exclude),
                "queries": len(queries),
                "search_s": seconds,
                "ms_per_query": 1000 * seconds / len(queries),
            }
        )
    return out


def channel_report(
    stage: RecallStage,
    config: RecallConfig,
    data: FitData,
    early: Split,
    now: int,
    *,
    refit: bool = True,
    k: int = 200,
) -> dict[str, Any]:
    """Every registered channel alone, and merged, on valid (history: train) and test
    (history: known), warm users. Channels the run does not hold are fitted the way the funnel
    serves its own: on all of train when `refit` (the recipe's `stacking.refit`) and the
    channel allows it, otherwise on the early part of train (`early`); serving state as of
    the end of train. Rows: recall@{50,100,200} and NDCG@20 of each channel, of all channels
    fused (RRF and round-robin), of the run's own merge, and of that merge without each of
    its channels and with each other one (the marginal gains);
    "overlap": mean Jaccard of two channels' top-k; "cost": fit seconds and serving ms per
    user."""
    channels, cost = {}, {}
    for name, cls in CHANNELS.items():
        start = time.perf_counter()
        channel = stage.channels.get(name)
        if channel is None:
            fit_on = data if refit and cls.refit_for_serving else data.with_split(early)
            channel = cls(getattr(config, name)).fit(fit_on)
            channel.refresh(data.split.train)
            cost[name] = {"fit_s": time.perf_counter() - start}
        channels[name] = channel
        cost.setdefault(name, {})
    rows: list[dict[str, Any]] = []
    overlap: dict[str, dict[str, float]] = {}
    for part, history in (("valid", "train"), ("test", "known")):
        evaluator = Evaluator(data.split, data.item_ids, ks=RECALL_KS, history=history)
        users = evaluator.users(part, "warm")
        requests = Requests.after_history(users.user_ids, users.history, now)
        lists = {}
        for name, channel in channels.items():
            start = time.perf_counter()
            lists[name] = channel(requests, k=k)
            cost[name][f"{part}_ms_per_user"] = (
                1000 * (time.perf_counter() - start) / max(len(requests), 1)
            )
        merged = {f"all ({how})": merge_lists(lists, k, how=how) for how in ("rrf", "round_robin")}
        # The run's own merge, and each channel's marginal gain against it: the run without
        # each of its channels, with each of the others.
        own = list(config.channels)

        def merge(
            names: list[str], how: str = config.merge, lists: dict[str, Candidates] = lists
        ) -> Candidates:
            # Quotas of the run's channels; a channel added to the run's set gets none.
            quota_of = dict(zip(config.channels, config.quotas, strict=False))
            quotas = [quota_of.get(n, 0) for n in names] if how == "quota" else []
            chosen = {n: lists[n] for n in names}
            return merge_lists(chosen, k, how=how, rrf_k=config.rrf_k, quotas=quotas)  # type: ignore[arg-type]

        # The run's set by each way of merging it (quotas only where the run has them).
        hows = ["rrf", "round_robin"] + (["quota"] if config.quotas else [])
        for how in [config.merge, *(h for h in hows if h != config.merge)]:
            merged[f"run ({how})"] = merge(own, how)
        for name in lists:
            if name in own and len(own) > 1:
                merged[f"run without {name}"] = merge([n for n in own if n != name])
            elif name not in own:
                merged[f"run with {name}"] = merge([*own, name])
        for name, cands in {**lists, **merged}.items():
            metrics = evaluator.list_metrics(cands.items, users)
            rows.append({"part": part, "model": name, **{c: metrics[c] for c in CHANNEL_COLUMNS}})
        if part == "test":
            overlap = {a: {b: _jaccard(lists[a], lists[b]) for b in lists} for a in lists}
    return {"k": k, "rows": rows, "overlap": overlap, "cost": cost}


CHANNEL_COLUMNS = ("recall@50", "recall@100", "recall@200", "ndcg@20")


def _jaccard(a: Candidates, b: Candidates) -> float:
    """Mean over requests of |a ∩ b| / |a ∪ b| of two lists' real items."""
    out = []
    for row_a, row_b in zip(a.items, b.items, strict=True):
        sa, sb = set(row_a[row_a >= 0].tolist()), set(row_b[row_b >= 0].tolist())
        out.append(len(sa & sb) / len(sa | sb) if sa | sb else 1.0)
    return float(np.mean(out)) if out else float("nan")


def plot_overlap(channels: dict[str, Any]) -> Figure:
    """Heat map of the channels' mean Jaccard overlap (`channel_report`'s "overlap")."""
    overlap = channels["overlap"]
    names = list(overlap)
    values = np.array([[overlap[a][b] for b in names] for a in names], dtype=np.float64)
    fig = Figure(figsize=(1.1 * len(names) + 2.5, 1.0 * len(names) + 1.5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis")
    for i, j in np.ndindex(values.shape):
        # Dark cells get light text and the other way round, so every number stays legible.
        colour = "white" if values[i, j] < 0.6 else "black"
        ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", color=colour, fontsize=9)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_title(f"Overlap of the channels' top-{channels['k']} (test, mean Jaccard)")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def write_overlap_plot(channels: dict[str, Any], path: Path) -> Path:
    """`plot_overlap` as a PNG at `path`, written atomically."""
    buf = io.BytesIO()
    plot_overlap(channels).savefig(buf, format="png", dpi=120)
    write_atomic(path, buf.getvalue())
    return path
