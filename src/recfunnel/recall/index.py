"""The top-K retrieval index: item embeddings in, (item ids, scores) per query out.

The index is its own object, apart from the recall model, so it can be swapped (exact or
ANN) and rebuilt for new items or other parameters without retraining. The score is the
inner product, as in the two-tower model.

    index = make_index("hnsw", M=32).build(item_embeddings, item_ids)
    ids, scores = index.search(user_embeddings, k=200, exclude=seen_items)
    index.save(run_dir / "index")
    index = load_index(run_dir / "index")

Search contract, the same for every backend:

- Results are sorted by score descending, ties (bit-equal float32 scores) broken by the
  smaller item id, so exact search is deterministic.
- `exclude` removes known items per query, either as a list (one entry per query) of
  arrays of item *ids*, or as a `scipy.sparse.csr_matrix` of shape (n_queries, n_items)
  whose non-zero columns are item *positions* in the order given to `build`. Ids in the
  list form that are not in the index are ignored.
- A query gets fewer than k real results only when fewer than k items are left after its
  exclusions; the missing slots hold id -1 and score -inf. ANN backends over-fetch (k plus
  that query's number of excluded items), filter, and retry with a larger fetch and a wider
  search for queries still short; a query that is short even after fetching the whole
  catalogue is answered exactly (see `ItemIndex.last_stats_`).

On disk an index is `item_embeddings.npy`, `item_ids.npy` and `index.json` (backend, its
parameters, shapes and the arrays' SHA-256); no pickle. The ANN structure is not saved:
`load_index` rebuilds it from the embeddings (an HNSW graph over ~4k items takes about a
second).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import faiss
import numpy as np
import scipy.sparse as sp

from recfunnel.atomic import write_atomic
from recfunnel.errors import ConfigError, NotFittedError

EMBEDDINGS_FILE = "item_embeddings.npy"
IDS_FILE = "item_ids.npy"
META_FILE = "index.json"
FORMAT_VERSION = 1

PAD_ID = -1
"""Item id in the padded slots of a result (score -inf there)."""

# Exact search scores queries in chunks so the (chunk, n_items) float32 matrix stays
# under this many bytes.
_CHUNK_BYTES = 64 * 2**20

Exclude = Sequence[np.ndarray] | sp.csr_matrix | None


@dataclass(frozen=True)
class SearchStats:
    """How hard the last `search` had to work to fill k results after exclusions.

    `retried`: queries an ANN backend searched again with a larger fetch and a wider search.
    `exact_fallback`: queries still short after fetching the whole catalogue, answered exactly
    (for IVF these are queries whose probed lists hold too few non-excluded items).
    """

    n_queries: int
    retried: int = 0
    exact_fallback: int = 0


class ItemIndex(ABC):
    """Top-K inner-product search over item embeddings; one interface for every backend.

    Constructors only store (and check) parameters; `build` learns. Learned attributes end
    with `_`: `embeddings_` (n_items, d) float32, `item_ids_` (n_items,) int64.
    """

    backend: ClassVar[str]

    embeddings_: np.ndarray
    item_ids_: np.ndarray
    last_stats_: SearchStats

    @property
    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The constructor arguments; `make_index(self.backend, **self.params)` rebuilds it."""

    @property
    def built(self) -> bool:
        """Whether `build` (or `load_index`) has given the index its items."""
        return hasattr(self, "embeddings_")

    def build(self, embeddings: np.ndarray, item_ids: np.ndarray) -> Self:
        """Index `embeddings` (n_items, d) float32 under `item_ids` (n_items,) int, unique, >= 0."""
        self.embeddings_ = _check_matrix(embeddings, "embeddings")
        ids = np.asarray(item_ids)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ConfigError(f"item_ids must be a 1-d integer array, got {ids.dtype} {ids.shape}")
        if len(ids) != len(self.embeddings_):
            raise ConfigError(
                f"{len(ids)} item ids for {len(self.embeddings_)} embedding rows; they must match"
            )
        if len(ids) and ids.min() < 0:
            raise ConfigError(f"item ids must be >= 0 ({PAD_ID} marks padding), got {ids.min()}")
        if len(np.unique(ids)) != len(ids):
            raise ConfigError("item_ids contains duplicates")
        self.item_ids_ = ids.astype(np.int64)
        self._sorter = np.argsort(self.item_ids_)
        self._sorted_ids = self.item_ids_[self._sorter]
        self._build()
        return self

    def search(
        self, queries: np.ndarray, k: int, exclude: Exclude = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items per query: (ids (n_queries, k) int64, scores (n_queries, k) float32).

        `queries` is (n_queries, d). `exclude` is a list of item-id arrays, one per query, or
        a CSR matrix (n_queries, n_items) over item positions in build order. See the module
        docstring for ordering, ties and padding.
        """
        if not hasattr(self, "embeddings_"):
            raise NotFittedError(f"{type(self).__name__}.search called before build")
        queries = _check_matrix(queries, "queries", allow_empty=True)
        if queries.shape[1] != self.embeddings_.shape[1]:
            raise ConfigError(
                f"queries have dimension {queries.shape[1]}, the index has "
                f"{self.embeddings_.shape[1]}"
            )
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        excluded = self._excluded_positions(exclude, len(queries))
        return self._search(queries, int(k), excluded)

    def search_one(self, query: np.ndarray, k: int, excluded: np.ndarray) -> np.ndarray:
        """`search` for ONE query, the serving fast path: the ids (k,) int64 that
        `search(query[None], k, exclude)` gives, -1 padding, without its validation and
        sparse bookkeeping. `query` (d,) float32; `excluded` (n_items,) bool over build
        positions. Backends with a cheaper one-query loop override this."""
        mask = sp.csr_matrix(np.asarray(excluded, dtype=bool)[None, :])
        return self._search(np.asarray(query, np.float32)[None, :], int(k), mask)[0][0]

    @abstractmethod
    def _build(self) -> None:
        """Build the search structure from `embeddings_`."""

    @abstractmethod
    def _search(
        self, queries: np.ndarray, k: int, excluded: sp.csr_matrix
    ) -> tuple[np.ndarray, np.ndarray]:
        """`search` after validation; `excluded` is a boolean CSR (n_queries, n_items)."""

    def save(self, directory: Path | str) -> None:
        """Write the embeddings, ids and `index.json` into `directory` (created if needed).

        Each file is written to a temporary name and moved into place with `os.replace`;
        `index.json` goes last and records the arrays' checksums, so a half-finished save
        is detected on load rather than silently mixing old and new files.
        """
        if not hasattr(self, "embeddings_"):
            raise NotFittedError(f"{type(self).__name__}.save called before build")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT_VERSION,
            "backend": self.backend,
            "params": self.params,
            "n_items": int(self.embeddings_.shape[0]),
            "dim": int(self.embeddings_.shape[1]),
            "sha256": {
                EMBEDDINGS_FILE: _write_array(directory / EMBEDDINGS_FILE, self.embeddings_),
                IDS_FILE: _write_array(directory / IDS_FILE, self.item_ids_),
            },
        }
        write_atomic(directory / META_FILE, (json.dumps(meta, indent=2) + "\n").encode())

    def _excluded_positions(self, exclude: Exclude, n_queries: int) -> sp.csr_matrix:
        n_items = len(self.item_ids_)
        if exclude is None:
            return sp.csr_matrix((n_queries, n_items), dtype=bool)
        if sp.issparse(exclude):
            if exclude.shape != (n_queries, n_items):
                raise ConfigError(
                    f"exclude matrix has shape {exclude.shape}, expected (n_queries, n_items) "
                    f"= {(n_queries, n_items)}; its columns are item positions in build order"
                )
            out = sp.csr_matrix(exclude, dtype=bool)  # a copy; explicit zeros become False
            out.eliminate_zeros()
            out.sum_duplicates()
            return out
        if isinstance(exclude, np.ndarray) and exclude.ndim != 1 and exclude.dtype != object:
            raise ConfigError(
                "exclude must be a list of item-id arrays (one per query) or a CSR matrix"
            )
        if len(exclude) != n_queries:
            raise ConfigError(f"exclude has {len(exclude)} entries for {n_queries} queries")
        rows, cols = [], []
        for row, ids in enumerate(exclude):
            ids = np.asarray(ids).ravel()
            if ids.size and not np.issubdtype(ids.dtype, np.integer):
                raise ConfigError(f"exclude[{row}] must hold integer item ids, got {ids.dtype}")
            pos = self._positions(ids)
            rows.append(np.full(len(pos), row, dtype=np.int64))
            cols.append(pos)
        rows_a = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        cols_a = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
        out = sp.csr_matrix(
            (np.ones(len(rows_a), dtype=bool), (rows_a, cols_a)), shape=(n_queries, n_items)
        )
        out.sum_duplicates()
        return out

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Build-order positions of the `ids` that are in the index (others dropped)."""
        at = np.searchsorted(self._sorted_ids, ids).clip(max=len(self._sorted_ids) - 1)
        known = self._sorted_ids[at] == ids
        return self._sorter[at[known]]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


class ExactIndex(ItemIndex):
    """Brute force: every query scored against every item (numpy matmul, chunked over queries)."""

    backend = "exact"

    @property
    def params(self) -> dict[str, Any]:
        return {}

    def _build(self) -> None:
        pass

    def _search(
        self, queries: np.ndarray, k: int, excluded: sp.csr_matrix
    ) -> tuple[np.ndarray, np.ndarray]:
        self.last_stats_ = SearchStats(n_queries=len(queries))
        return _exact_search(self.embeddings_, self.item_ids_, queries, k, excluded)


class _FaissIndex(ItemIndex):
    """Shared over-fetch, filter and retry loop for the faiss backends.

    Builds run with one OpenMP thread: faiss inserts HNSW nodes in an unspecified order when
    multi-threaded, so the graph (and the results after a reload) could differ from build to
    build (faiss wiki, "Threads and asynchronous calls"). On ~4k items a one-thread build
    takes under a second. Searches use faiss's default threads; each query's result does
    not depend on them.
    """

    _faiss: faiss.Index

    def _build(self) -> None:
        with _faiss_threads(1):
            self._faiss = self._make_faiss(self.embeddings_)

    @abstractmethod
    def _make_faiss(self, embeddings: np.ndarray) -> faiss.Index:
        """A trained faiss index holding `embeddings`, labels = build positions."""

    @abstractmethod
    def _search_params(self, effort: int) -> faiss.SearchParameters:
        """Search parameters widened by `effort` (1, 2, 4, ...) for retries."""

    def _search(
        self, queries: np.ndarray, k: int, excluded: sp.csr_matrix
    ) -> tuple[np.ndarray, np.ndarray]:
        n_queries, n_items = len(queries), len(self.item_ids_)
        n_excluded = np.diff(excluded.indptr)
        wanted = np.minimum(k, n_items - n_excluded)  # real results each query can get
        fetch = np.minimum(k + n_excluded, n_items)
        ids = np.full((n_queries, k), PAD_ID, dtype=np.int64)
        scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
        pending = np.arange(n_queries)
        effort, retried, fallback = 1, 0, 0
        while len(pending):
            # One faiss call per power-of-two fetch size, so one query that excludes
            # thousands of items does not make every other query fetch thousands.
            buckets = 2 ** np.ceil(np.log2(fetch[pending])).astype(np.int64)
            short = []
            for bucket in np.unique(buckets):
                rows = pending[buckets == bucket]
                got_ids, got_scores, n_valid = self._fetch_filter(
                    queries[rows], int(fetch[rows].max()), k, excluded[rows], effort
                )
                ids[rows], scores[rows] = got_ids, got_scores
                short.append(rows[n_valid < wanted[rows]])
            short_a = np.concatenate(short)
            # A query short after fetching the whole catalogue cannot gain from a larger
            # fetch (HNSW: its ef was already n_items; IVF: its probed lists are too small).
            give_up = short_a[fetch[short_a] >= n_items]
            pending = short_a[fetch[short_a] < n_items]
            if len(give_up):
                ids[give_up], scores[give_up] = _exact_search(
                    self.embeddings_, self.item_ids_, queries[give_up], k, excluded[give_up]
                )
            retried += len(pending) if effort == 1 else 0
            fallback += len(give_up)
            fetch[pending] = np.minimum(2 * fetch[pending], n_items)
            effort *= 2
        self.last_stats_ = SearchStats(n_queries, retried=retried, exact_fallback=fallback)
        return ids, scores

    def search_one(self, query: np.ndarray, k: int, excluded: np.ndarray) -> np.ndarray:
        """`_search`'s loop for one query with a dense exclusion mask: the same fetch sizes,
        search parameters, filter, retries and exact fallback, so the same ids as a
        one-query `search` (`search` groups the queries of a batch by fetch size, so a
        query's answer is the one it gets there alone or with queries of its size)."""
        n_items = len(self.item_ids_)
        queries = np.asarray(query, dtype=np.float32)[None, :]
        n_excluded = int(np.count_nonzero(excluded))
        wanted = min(k, n_items - n_excluded)
        fetch, effort = min(k + n_excluded, n_items), 1
        while True:
            scores, pos = self._faiss.search(queries, fetch, params=self._search_params(effort))
            valid = pos >= 0
            valid[valid] = ~excluded[pos[valid]]
            if int(valid.sum()) >= wanted:
                return _top_k_by_score_then_id(pos, scores, valid, self.item_ids_, k)[0][0]
            if fetch >= n_items:  # short after fetching everything: answered exactly
                mask = sp.csr_matrix(excluded[None, :])
                return _exact_search(self.embeddings_, self.item_ids_, queries, k, mask)[0][0]
            fetch, effort = min(2 * fetch, n_items), 2 * effort

    def _fetch_filter(
        self, queries: np.ndarray, fetch: int, k: int, excluded: sp.csr_matrix, effort: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fetch `fetch` candidates per query, drop excluded ones, keep the best k."""
        scores, pos = self._faiss.search(queries, fetch, params=self._search_params(effort))
        valid = pos >= 0
        rows = np.nonzero(valid)[0]
        hit = np.asarray(excluded[rows, pos[valid]]).ravel()
        valid[valid] = ~hit
        return (*_top_k_by_score_then_id(pos, scores, valid, self.item_ids_, k), valid.sum(1))


class HNSWIndex(_FaissIndex):
    """faiss HNSW graph over the raw vectors (`IndexHNSWFlat`, inner product).

    `M`: graph degree (links per node); more is better recall, more memory and build time.
    `ef_construction`: candidate list size while inserting; more is a better graph.
    `ef_search`: candidate list size while searching; faiss uses max(ef_search, fetch size),
    where fetch = k + excluded. Defaults give recall@200 >= 0.99 on ML-1M-shaped random
    data (3,706 items, d=64, ~150 excluded per query).
    """

    backend = "hnsw"

    def __init__(self, M: int = 32, ef_construction: int = 200, ef_search: int = 256) -> None:
        self.M = _positive_int("M", M, minimum=2)
        self.ef_construction = _positive_int("ef_construction", ef_construction)
        self.ef_search = _positive_int("ef_search", ef_search)

    @property
    def params(self) -> dict[str, Any]:
        return {"M": self.M, "ef_construction": self.ef_construction, "ef_search": self.ef_search}

    def _make_faiss(self, embeddings: np.ndarray) -> faiss.Index:
        index = faiss.IndexHNSWFlat(embeddings.shape[1], self.M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.add(embeddings)
        return index

    def _search_params(self, effort: int) -> faiss.SearchParameters:
        return faiss.SearchParametersHNSW(efSearch=self.ef_search * effort)


class IVFIndex(_FaissIndex):
    """faiss inverted file (`IndexIVFFlat`, inner product): k-means lists, search a few.

    `nlist`: number of k-means lists, trained on the item embeddings themselves. None picks
    round(sqrt(n_items)) (61 for ML-1M's 3,706 items), capped so that each list gets at
    least 39 training items (faiss's minimum); an explicit nlist above that cap is a
    ConfigError at build. `nprobe`: lists searched per query; capped at nlist (= exhaustive).
    Trained lists are stored as `nlist_`.
    """

    backend = "ivf"
    MIN_ITEMS_PER_LIST: ClassVar[int] = 39

    nlist_: int

    def __init__(self, nlist: int | None = None, nprobe: int = 16) -> None:
        self.nlist = None if nlist is None else _positive_int("nlist", nlist)
        self.nprobe = _positive_int("nprobe", nprobe)

    @property
    def params(self) -> dict[str, Any]:
        return {"nlist": self.nlist, "nprobe": self.nprobe}

    def _make_faiss(self, embeddings: np.ndarray) -> faiss.Index:
        n_items, dim = embeddings.shape
        cap = max(1, n_items // self.MIN_ITEMS_PER_LIST)
        if self.nlist is None:
            self.nlist_ = min(max(1, round(math.sqrt(n_items))), cap)
        elif self.nlist > cap:
            raise ConfigError(
                f"nlist={self.nlist} is too many lists for {n_items} items: k-means needs at "
                f"least {self.MIN_ITEMS_PER_LIST} items per list, so nlist <= {cap} "
                "(or nlist=None to choose automatically)"
            )
        else:
            self.nlist_ = self.nlist
        self._quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(self._quantizer, dim, self.nlist_, faiss.METRIC_INNER_PRODUCT)
        index.train(embeddings)
        index.add(embeddings)
        return index

    def _search_params(self, effort: int) -> faiss.SearchParameters:
        return faiss.SearchParametersIVF(nprobe=min(self.nprobe * effort, self.nlist_))


BACKENDS: dict[str, type[ItemIndex]] = {
    cls.backend: cls for cls in (ExactIndex, HNSWIndex, IVFIndex)
}


def make_index(backend: str, **params: Any) -> ItemIndex:
    """An unbuilt index: `backend` is "exact", "hnsw" or "ivf"; `params` go to its constructor."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown index backend {backend!r}; choose one of {sorted(BACKENDS)}")
    cls = BACKENDS[backend]
    valid = list(cls().params)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {unknown} for index backend {backend!r}; "
            f"valid: {valid or 'none'}"
        )
    return cls(**params)


def load_index(directory: Path | str, backend: str | None = None, **params: Any) -> ItemIndex:
    """Read an index written by `ItemIndex.save` and rebuild its search structure.

    With `backend` (and `params`) given, the saved embeddings are indexed with that backend
    instead, e.g. `load_index(d, "hnsw", M=64)`; otherwise the saved backend and parameters.
    """
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise ConfigError(f"no index in {directory}: {META_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{meta_path} is not valid JSON: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise ConfigError(f"{meta_path} is not an index.json of format {FORMAT_VERSION}")
    missing = {"backend", "params", "sha256"} - set(meta)
    if missing:
        raise ConfigError(f"{meta_path} lacks {sorted(missing)}")
    arrays = {}
    for name in (EMBEDDINGS_FILE, IDS_FILE):
        path = directory / name
        if not path.is_file():
            raise ConfigError(f"index in {directory} is incomplete: {name} is missing")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != meta["sha256"].get(name):
            raise ConfigError(
                f"{path} does not match {META_FILE} (checksum differs); "
                "was the save interrupted? Save the index again."
            )
        arrays[name] = np.load(path, allow_pickle=False)
    if backend is None:
        backend, params = meta["backend"], {**meta["params"], **params}
    return make_index(backend, **params).build(arrays[EMBEDDINGS_FILE], arrays[IDS_FILE])


def recall_against_exact(
    approx: ItemIndex, exact: ItemIndex, queries: np.ndarray, k: int, exclude: Exclude = None
) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / k: how much an ANN index misses.

    When exclusions leave fewer than k items, the denominator is the number of real (not
    padded) exact results; a query with none counts as 1.0.
    """
    if len(queries) == 0:
        raise ConfigError("recall_against_exact needs at least one query")
    approx_ids, _ = approx.search(queries, k, exclude)
    exact_ids, _ = exact.search(queries, k, exclude)
    recalls = []
    for got, want in zip(approx_ids, exact_ids, strict=True):
        want = want[want != PAD_ID]
        if len(want) == 0:
            recalls.append(1.0)
        else:
            recalls.append(len(np.intersect1d(got[got != PAD_ID], want)) / len(want))
    return float(np.mean(recalls))


def _exact_search(
    embeddings: np.ndarray,
    item_ids: np.ndarray,
    queries: np.ndarray,
    k: int,
    excluded: sp.csr_matrix,
) -> tuple[np.ndarray, np.ndarray]:
    n_queries, n_items = len(queries), len(embeddings)
    ids = np.full((n_queries, k), PAD_ID, dtype=np.int64)
    scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
    chunk = max(1, _CHUNK_BYTES // (4 * n_items))
    for start in range(0, n_queries, chunk):
        stop = min(start + chunk, n_queries)
        block = queries[start:stop] @ embeddings.T  # (chunk, n_items)
        valid = ~excluded[start:stop].toarray()
        block[~valid] = -np.inf
        if k < n_items:
            # argpartition breaks ties at the k-th score arbitrarily: keep every item that
            # scores at least the k-th score, then order those by (score desc, id asc).
            kth = -np.partition(-block, k - 1, axis=1)[:, k - 1 : k]
            keep = block >= kth
        else:
            keep = np.ones_like(block, dtype=bool)
        width = int(keep.sum(1).max())
        rows, cols = np.nonzero(keep)
        slot = np.arange(len(rows)) - np.searchsorted(rows, rows)
        pos = np.full((stop - start, width), PAD_ID, dtype=np.int64)
        pos[rows, slot] = cols
        cand_valid = pos >= 0
        cand_valid[cand_valid] = valid[rows, cols]
        cand_scores = np.take_along_axis(block, pos.clip(min=0), axis=1)
        ids[start:stop], scores[start:stop] = _top_k_by_score_then_id(
            pos, cand_scores, cand_valid, item_ids, k
        )
    return ids, scores


def _top_k_by_score_then_id(
    pos: np.ndarray, scores: np.ndarray, valid: np.ndarray, item_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Best k of each row's valid candidates, by score desc then id asc, padded to width k.

    `pos`, `scores`, `valid`: (n_queries, n_candidates) build positions, scores and a mask.
    """
    n_queries, width = pos.shape
    cand_ids = np.where(valid, item_ids[pos.clip(min=0)], np.iinfo(np.int64).max)
    cand_scores = np.where(valid, scores, -np.inf).astype(np.float32)
    order = np.lexsort((cand_ids, -cand_scores), axis=1)[:, :k]
    top_ids = np.take_along_axis(cand_ids, order, axis=1)
    top_scores = np.take_along_axis(cand_scores, order, axis=1)
    top_valid = np.take_along_axis(valid, order, axis=1)
    ids = np.full((n_queries, k), PAD_ID, dtype=np.int64)
    out_scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
    ids[:, : order.shape[1]] = np.where(top_valid, top_ids, PAD_ID)
    out_scores[:, : order.shape[1]] = np.where(top_valid, top_scores, -np.inf)
    return ids, out_scores


def _check_matrix(x: np.ndarray, name: str, allow_empty: bool = False) -> np.ndarray:
    """`x` as a C-contiguous float32 (rows, d) matrix, or a ConfigError saying what is wrong."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ConfigError(f"{name} must be a 2-d array (rows, dim), got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ConfigError(f"{name} must be numeric, got dtype {x.dtype}")
    if x.shape[1] == 0 or (x.shape[0] == 0 and not allow_empty):
        raise ConfigError(f"{name} is empty (shape {x.shape})")
    x = np.ascontiguousarray(x, dtype=np.float32)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        rows = np.nonzero(bad)[0]
        raise ConfigError(
            f"{name} has NaN or infinite values in {len(rows)} row(s), e.g. row {rows[0]}"
        )
    return x


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _write_array(path: Path, array: np.ndarray) -> str:
    """Save `array` as .npy at `path` atomically; return the file's SHA-256."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    data = buffer.getvalue()
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


@contextmanager
def _faiss_threads(n: int) -> Iterator[None]:
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
