"""Million-item ANN benchmark: FAISS exact, HNSW, IVF-Flat and IVF-PQ on clustered synthetic
vectors; build time, memory, single-thread queries/s and recall@k against exact search.

    make bench-ann          # or: .venv/bin/python bench/ann.py [--n-items 100000 ...]

Writes bench/ann_results.json and bench/ann_pareto.png (recall against queries/s).

It benchmarks FAISS directly, not through `recfunnel.recall.index.ItemIndex`: a sweep must
reuse one built structure across many search parameters (ItemIndex fixes them at
construction, and an HNSW build over 1M vectors takes minutes), IVF-PQ is not an ItemIndex
backend, and ItemIndex adds its own exclusion filter and (score, id) tie-break on top of each
faiss call. The numbers are therefore those of the faiss structures ItemIndex wraps (its
"hnsw" is IndexHNSWFlat, its "ivf" is IndexIVFFlat, both inner product), without that
post-processing.

The data imitate two-tower embeddings (the project's towers are L2-normalised and scored by
inner product): item vectors are a Gaussian mixture with Zipf-sized clusters (popular genres
hold more items), normalised; a query ("user") mixes one to three cluster centres, picked by
cluster size, plus noise, normalised. Queries are timed with faiss.omp_set_num_threads(1) in
chunks of 250; a setting that would take more than `--time-cap` seconds for all queries stops
after the first chunk past the cap (at least `--min-queries`), and its recall is then over the
queries it answered (`n_queries` in each row says how many). Builds use every core faiss sees
(`build_threads` in the JSON); they are not part of the single-thread target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

HERE = Path(__file__).resolve().parent
CHUNK = 250  # queries per faiss call while timing


@dataclass
class Point:
    """One measured setting of one index."""

    index: str
    params: dict[str, Any]
    recall: float
    qps: float
    n_queries: int
    build_s: float
    index_mib: float
    rss_delta_mib: float


def make_data(
    n_items: int, n_queries: int, dim: int, n_clusters: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Items (n_items, dim) and queries (n_queries, dim), float32, unit L2 norm.

    Cluster sizes follow a Zipf law (exponent 0.8); an item is its centre plus isotropic noise
    of about the centre's norm (cosine to its centre ~0.7), so a query's top 200 are spread
    over a few large, overlapping clusters rather than one tight ball.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, n_clusters + 1) ** 0.8
    weights /= weights.sum()
    noise_sd = np.float32(1.0 / np.sqrt(dim))  # noise norm ~1, the centre's norm
    items = np.empty((n_items, dim), dtype=np.float32)
    for start in range(0, n_items, 100_000):  # in blocks: float64 noise for 1M rows is 0.5 GB
        stop = min(start + 100_000, n_items)
        cluster = rng.choice(n_clusters, size=stop - start, p=weights)
        block = centres[cluster] + noise_sd * rng.standard_normal((stop - start, dim))
        items[start:stop] = block
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    n_mix = rng.integers(1, 4, size=n_queries)
    queries = np.zeros((n_queries, dim), dtype=np.float32)
    for j in range(3):
        cluster = rng.choice(n_clusters, size=n_queries, p=weights)
        share = rng.uniform(0.3, 1.0, size=n_queries).astype(np.float32) * (j < n_mix)
        queries += share[:, None] * centres[cluster]
    queries += 0.5 * noise_sd * rng.standard_normal((n_queries, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return np.ascontiguousarray(items), np.ascontiguousarray(queries)


def rss_mib() -> float:
    """This process's resident set size now (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def index_mib(index: faiss.Index) -> float:
    """The serialised size of `index`: its vectors, codes and graph links."""
    return faiss.serialize_index(index).nbytes / 2**20


def timed_search(
    search: Callable[[np.ndarray], np.ndarray],
    queries: np.ndarray,
    time_cap: float,
    min_queries: int,
) -> tuple[np.ndarray, float]:
    """Run `search` (queries (n, d) -> ids (n, k)) over chunks of queries on one thread.

    Returns the ids (n_answered, k) and queries/s. Stops after the chunk that passes
    `time_cap` seconds once at least `min_queries` are answered.
    """
    out, elapsed = [], 0.0
    with faiss_threads(1):
        for start in range(0, len(queries), CHUNK):
            t0 = time.perf_counter()
            out.append(search(queries[start : start + CHUNK]))
            elapsed += time.perf_counter() - t0
            done = start + len(out[-1])
            if elapsed > time_cap and done >= min_queries and done < len(queries):
                break
    ids = np.concatenate(out)
    return ids, len(ids) / elapsed


def recall_at_k(ids: np.ndarray, truth: np.ndarray) -> float:
    """Mean over rows of |ids ∩ truth| / k; ids (n, k) may be a prefix of truth's rows."""
    truth = truth[: len(ids)]
    k = truth.shape[1]
    # Row-wise intersection sizes: sort each row, then count ids present in the truth row.
    truth_sorted = np.sort(truth, axis=1)
    hits = 0
    for got, want in zip(ids, truth_sorted, strict=True):
        at = np.searchsorted(want, got).clip(max=k - 1)
        hits += int((want[at] == got).sum())
    return hits / truth.size


class faiss_threads:  # noqa: N801 - used like a function
    """Context manager: faiss (OpenMP) uses `n` threads inside, the previous count after."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        self.before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        faiss.omp_set_num_threads(self.before)


def build(make: Callable[[], faiss.Index]) -> tuple[faiss.Index, float, float]:
    """(index, build seconds, RSS growth in MiB) of `make()`."""
    before = rss_mib()
    t0 = time.perf_counter()
    index = make()
    return index, time.perf_counter() - t0, rss_mib() - before


def sweep(
    name: str,
    index: faiss.Index,
    build_s: float,
    rss_delta: float,
    settings: list[dict[str, Any]],
    make_params: Callable[[dict[str, Any]], faiss.SearchParameters],
    args: argparse.Namespace,
    queries: np.ndarray,
    truth: np.ndarray,
) -> Iterator[Point]:
    """Time every search setting of one built index; one Point each, printed as it comes."""
    size = index_mib(index)
    for setting in settings:
        params = make_params(setting)

        def search(q: np.ndarray, params: faiss.SearchParameters = params) -> np.ndarray:
            return index.search(q, args.k, params=params)[1]

        ids, qps = timed_search(search, queries, args.time_cap, args.min_queries)
        point = Point(
            name,
            setting,
            round(recall_at_k(ids, truth), 4),
            round(qps, 1),
            len(ids),
            round(build_s, 1),
            round(size, 1),
            round(rss_delta, 1),
        )
        print(
            f"{name:14s} {json.dumps(setting):32s} recall@{args.k} {point.recall:.4f}  "
            f"{point.qps:8.1f} q/s  ({point.n_queries} queries)",
            flush=True,
        )
        yield point


def plot(points: list[Point], k: int, path: Path, title: str) -> None:
    """Recall@k against queries/s (log), one line per index; the target box shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.axhspan(0.95, 1.0, xmin=0, xmax=1, color="0.93")
    ax.axvline(500, color="0.6", lw=0.8, ls="--")
    for name in dict.fromkeys(p.index for p in points):
        group = [p for p in points if p.index == name]
        ax.plot(
            [p.qps for p in group],
            [p.recall for p in group],
            marker="o",
            ms=4,
            label=name,
            ls="" if len(group) == 1 else "-",
        )
    ax.set_xscale("log")
    ax.set_xlabel("queries / s, one thread (log)")
    ax.set_ylabel(f"recall@{k} against exact")
    ax.set_title(title, fontsize=9)
    ax.text(510, 0.952, "target: recall >= 0.95 at >= 500 q/s", fontsize=7, color="0.35")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-items", type=int, default=1_000_000)
    parser.add_argument("--n-queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=1_000, help="mixture components")
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hnsw-m", default="16,32", help="comma-separated HNSW degrees")
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument("--ef-search", default="200,256,384,512,768,1024")
    parser.add_argument("--nlist", type=int, default=2048, help="IVF lists")
    parser.add_argument("--nprobe", default="8,16,32,64,128,256")
    parser.add_argument("--pq-m", type=int, default=16, help="PQ sub-quantizers (8 bits each)")
    parser.add_argument("--refine", type=int, default=4, help="IVF-PQ re-rank factor")
    parser.add_argument("--time-cap", type=float, default=10.0, help="seconds per setting")
    parser.add_argument("--min-queries", type=int, default=1_000)
    parser.add_argument("--out", type=Path, default=HERE / "ann_results.json")
    parser.add_argument("--plot", type=Path, default=HERE / "ann_pareto.png")
    args = parser.parse_args()
    try:
        hnsw_ms = [int(v) for v in args.hnsw_m.split(",")]
        ef_search = [int(v) for v in args.ef_search.split(",")]
        nprobes = [int(v) for v in args.nprobe.split(",")]
    except ValueError as err:
        print(f"error: --hnsw-m, --ef-search and --nprobe take integers: {err}", file=sys.stderr)
        return 2
    if min(args.n_items, args.n_queries, args.k, args.dim) <= 0 or args.k > args.n_items:
        print("error: sizes must be positive and --k <= --n-items", file=sys.stderr)
        return 2
    if args.dim % args.pq_m:
        print(f"error: --dim {args.dim} is not a multiple of --pq-m {args.pq_m}", file=sys.stderr)
        return 2
    build_threads = faiss.omp_get_max_threads()
    wall0 = time.perf_counter()

    t0 = time.perf_counter()
    items, queries = make_data(args.n_items, args.n_queries, args.dim, args.clusters, args.seed)
    print(f"data: {items.shape} items, {queries.shape} queries in {time.perf_counter() - t0:.1f} s")

    # Exact search gives the ground truth for every query and, timed on one thread, its row.
    flat, flat_build, flat_rss = build(lambda: _flat(items))
    with faiss_threads(1):
        t0 = time.perf_counter()
        truth = flat.search(queries, args.k)[1]
        exact_qps = len(queries) / (time.perf_counter() - t0)
    points = [
        Point(
            "exact (flat)",
            {},
            1.0,
            round(exact_qps, 1),
            len(queries),
            round(flat_build, 1),
            round(index_mib(flat), 1),
            round(flat_rss, 1),
        )  # fmt: skip
    ]
    print(f"exact: {exact_qps:.1f} q/s on one thread ({len(queries)} queries)", flush=True)
    del flat

    for m in hnsw_ms:
        hnsw, seconds, rss = build(lambda m=m: _hnsw(items, m, args.ef_construction))
        print(f"HNSW M={m}: built in {seconds:.1f} s", flush=True)
        points += sweep(
            f"HNSW M={m}",
            hnsw,
            seconds,
            rss,
            [{"M": m, "efConstruction": args.ef_construction, "efSearch": e} for e in ef_search],
            lambda s: faiss.SearchParametersHNSW(efSearch=s["efSearch"]),
            args,
            queries,
            truth,
        )
        del hnsw

    # One coarse quantizer (k-means on a sample) serves IVF-Flat and IVF-PQ, so the two
    # differ only in how they store and score the vectors inside a list.
    n_train = min(args.n_items, max(64 * args.nlist, 100_000))
    sample = items[np.random.default_rng(args.seed + 1).choice(args.n_items, n_train, False)]
    (quantizer, train_s, q_rss) = build(lambda: _quantizer(sample, args.nlist, args.seed))
    print(f"IVF k-means ({args.nlist} lists, {n_train} vectors): {train_s:.1f} s", flush=True)

    ivf, seconds, rss = build(lambda: _ivf_flat(items, quantizer, args.nlist))
    nprobe_settings = [{"nlist": args.nlist, "nprobe": p} for p in nprobes if p <= args.nlist]
    points += sweep(
        "IVF-Flat",
        ivf,
        seconds + train_s,
        rss + q_rss,
        nprobe_settings,
        lambda s: faiss.SearchParametersIVF(nprobe=s["nprobe"]),
        args,
        queries,
        truth,
    )
    del ivf

    pq, seconds, rss = build(lambda: _ivf_pq(items, sample, quantizer, args.nlist, args.pq_m))
    pq_settings = [{**s, "pq_m": args.pq_m, "nbits": 8} for s in nprobe_settings]
    points += sweep(
        f"IVF-PQ{args.pq_m}",
        pq,
        seconds + train_s,
        rss + q_rss,
        pq_settings,
        lambda s: faiss.SearchParametersIVF(nprobe=s["nprobe"]),
        args,
        queries,
        truth,
    )
    # Re-ranking k * refine PQ candidates by their exact inner product restores most of the
    # recall PQ's 16-byte codes lose; it needs the raw vectors again (memory of a flat index).
    refined = faiss.IndexRefineFlat(pq, faiss.swig_ptr(items))
    refine_size = index_mib(pq) + items.nbytes / 2**20
    points += [
        Point(**{**asdict(p), "index_mib": round(refine_size, 1)})
        for p in sweep(
            f"IVF-PQ{args.pq_m}+refine",
            refined,
            seconds + train_s,
            rss + q_rss,
            [{**s, "refine": args.refine} for s in pq_settings],
            lambda s: faiss.IndexRefineSearchParameters(
                k_factor=s["refine"],
                base_index_params=faiss.SearchParametersIVF(nprobe=s["nprobe"]),
            ),
            args,
            queries,
            truth,
        )
    ]

    met = [p for p in points if p.recall >= 0.95 and p.qps >= 500 and p.index != "exact (flat)"]
    best = max(met, key=lambda p: p.qps) if met else None
    # Without a point meeting the target, the best trade-off shown is the fastest point at
    # recall >= 0.95, or failing that the highest recall among points at >= 500 q/s.
    near = [p for p in points if p.recall >= 0.95 and p.index != "exact (flat)"]
    fast = [p for p in points if p.qps >= 500]
    fallback = (
        max(near, key=lambda p: p.qps) if near else max(fast, key=lambda p: p.recall, default=None)
    )
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "faiss": faiss.__version__,
            "build_threads": build_threads,
            "search_threads": 1,
        },
        "data": {
            "n_items": args.n_items,
            "n_queries": args.n_queries,
            "dim": args.dim,
            "clusters": args.clusters,
            "seed": args.seed,
            "metric": "inner product on unit vectors (cosine)",
        },
        "k": args.k,
        "time_cap_s": args.time_cap,
        "target": "recall@200 >= 0.95 at >= 500 queries/s on one thread",
        "target_met": best is not None,
        "best": asdict(best or fallback) if (best or fallback) else None,
        "points": [asdict(p) for p in points],
        "wall_s": round(time.perf_counter() - wall0, 1),
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    plot(
        points,
        args.k,
        args.plot,
        f"{args.n_items:,} items, d={args.dim}, {args.clusters} Zipf clusters; "
        f"recall@{args.k}; faiss {faiss.__version__}, 1 search thread",
    )
    shown = best or fallback
    shown_text = json.dumps(asdict(shown)) if shown else None
    print(f"target met: {best is not None}; best point: {shown_text}")
    print(f"wrote {args.out} and {args.plot} in {results['wall_s']:.0f} s")
    return 0


def _flat(items: np.ndarray) -> faiss.Index:
    index = faiss.IndexFlatIP(items.shape[1])
    index.add(items)
    return index


def _hnsw(items: np.ndarray, m: int, ef_construction: int) -> faiss.Index:
    index = faiss.IndexHNSWFlat(items.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.add(items)
    return index


def _quantizer(sample: np.ndarray, nlist: int, seed: int) -> faiss.Index:
    kmeans = faiss.Kmeans(sample.shape[1], nlist, niter=20, seed=seed, spherical=True)
    kmeans.train(sample)
    quantizer = faiss.IndexFlatIP(sample.shape[1])
    quantizer.add(kmeans.centroids)
    return quantizer


def _ivf_flat(items: np.ndarray, quantizer: faiss.Index, nlist: int) -> faiss.Index:
    index = faiss.IndexIVFFlat(quantizer, items.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.is_trained = True  # the quantizer is trained; IVF-Flat learns nothing else
    index.add(items)
    return index


def _ivf_pq(
    items: np.ndarray, sample: np.ndarray, quantizer: faiss.Index, nlist: int, pq_m: int
) -> faiss.Index:
    index = faiss.IndexIVFPQ(quantizer, items.shape[1], nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
    # Trains only the PQ codebooks on residuals: the quantizer already holds nlist centroids.
    index.train(sample)
    index.add(items)
    return index


if __name__ == "__main__":
    sys.exit(main())
