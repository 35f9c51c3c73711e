"""Item x item structures that scale past ML-1M: what runs at each catalogue size, and its cost.

EASE (the item-to-item score, the EASE recall channel and the EASE baseline) inverts a dense
(n_items, n_items) float64 matrix, and RP3beta builds one before it keeps each row's
largest entries. That is 0.4 GB at ML-1M's 3,706 movies, ~4 GB at ML-10M's 10,677, ~23 GB
at ML-20M's 26,744 and ~250 GB at ML-32M's 87,585: past ML-10M it does not fit.
`ScaleConfig.item_item = "auto"` therefore chooses, from the catalogue size alone (never
from the machine's free memory, so a run is reproducible):

- **dense** when the dense fit's estimate (`DENSE_BYTES_PER_CELL` x n_items^2) fits
  `memory_gb`: exactly the ML-1M code, so ML-1M's (and ML-10M's) numbers are those of the
  dense models;
- **sparse** otherwise: EASE restricted to the `ease_items` most-liked items (as many as
  `memory_gb` allows), each row cut to its `neighbours` largest weights, so a movie outside
  that head gets no EASE score (the other channels still reach it); RP3beta computed in
  row blocks and cut to `neighbours` per row as it is built. Both are scipy CSR matrices
  (n_items, n_items) with at most n_items x neighbours entries.

Before a large allocation `require_memory` compares the estimate with the memory the
operating system reports free, and refuses with one clear line instead of being killed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp

from recfunnel.artifacts import RunFileError, load_array
from recfunnel.config import param
from recfunnel.errors import ConfigError, RecfunnelError

# Peak bytes per cell of a dense EASE fit: the float64 Gram matrix, its float64 inverse and
# the float64 weights (8 + 8 + 8), the float32 copy kept (4), plus LAPACK's workspace.
DENSE_BYTES_PER_CELL = 32
GB = 1 << 30
# Neighbours kept per item row by RP3beta and the sparse plan's EASE: ~5 % of ML-1M's 3,706
# movies, where a liked-row sum reads ~9 x fewer bytes than a dense row.
NEIGHBOURS = 200
_ROW_BLOCK_BYTES = 256 << 20  # dense (block, n_items) float64 scratch while sparsifying


class MemoryRefused(RecfunnelError):
    """A structure would not fit in memory; raised before anything is allocated."""


@dataclass(frozen=True)
class ScaleConfig:
    """How the item x item models (EASE, RP3beta) scale with the catalogue."""

    item_item: Literal["auto", "dense", "sparse"] = param(
        "auto",
        "auto: dense when its estimate fits memory_gb, else sparse; dense: the full "
        "n_items x n_items models (refused when over memory_gb); sparse: EASE on the most "
        "liked items and top-neighbour rows",
    )
    memory_gb: float = param(
        4.0, "memory one dense item x item fit may take (estimate: 32 bytes x n_items^2)"
    )
    ease_items: int | None = param(
        None, "sparse: EASE on this many most-liked items (none: as many as memory_gb allows)"
    )
    neighbours: int = param(NEIGHBOURS, "sparse: largest weights kept per item row")

    def validate(self) -> None:
        if not self.memory_gb > 0 or self.neighbours < 1:
            raise ConfigError("scale.memory_gb must be > 0 and scale.neighbours >= 1")
        if self.ease_items is not None and self.ease_items < 1:
            raise ConfigError(f"scale.ease_items must be >= 1, got {self.ease_items}")


def dense_bytes(n_items: int) -> int:
    """Estimated peak bytes of a dense EASE fit over `n_items` items."""
    return DENSE_BYTES_PER_CELL * n_items * n_items


def plan(n_items: int, config: ScaleConfig | None = None) -> dict[str, object]:
    """What runs for a catalogue of `n_items`: {"mode": "dense" | "sparse", "n_items",
    "dense_gb" (the dense estimate), "memory_gb", "ease_items", "neighbours"}; the run's
    manifest records it. ConfigError when "dense" is forced past `memory_gb`."""
    config = config or ScaleConfig()
    config.validate()
    budget = config.memory_gb * GB
    fits = dense_bytes(n_items) <= budget
    if config.item_item == "dense" and not fits:
        raise ConfigError(
            f"scale.item_item=dense needs ~{dense_bytes(n_items) / GB:.1f} GB for "
            f"{n_items:,} items, over scale.memory_gb={config.memory_gb:g}; use "
            "scale.item_item=auto (or sparse), or raise scale.memory_gb"
        )
    mode = (
        "dense"
        if config.item_item == "dense" or (config.item_item == "auto" and fits)
        else "sparse"
    )
    head = n_items
    if mode == "sparse":
        head = config.ease_items or int(math.isqrt(int(budget // DENSE_BYTES_PER_CELL)))
        head = max(1, min(head, n_items))
    if config.item_item != "auto":
        reason = f"set by scale.item_item={config.item_item}"
    else:
        relation = "<=" if fits else ">"
        reason = (
            f"auto: dense would need ~{dense_bytes(n_items) / GB:.2f} GB {relation} "
            f"scale.memory_gb={config.memory_gb:g}"
        )
    return {
        "mode": mode,
        "reason": reason,
        "n_items": int(n_items),
        "dense_gb": round(dense_bytes(n_items) / GB, 3),
        "memory_gb": config.memory_gb,
        "ease_items": int(head),
        "neighbours": None if mode == "dense" else config.neighbours,
    }


def describe(p: dict[str, object]) -> str:
    """One line for logs and reports."""
    if p["mode"] == "dense":
        return f"item x item: dense over all {p['n_items']:,} items ({p['reason']})"
    return (
        f"item x item: sparse, EASE on the {p['ease_items']:,} most liked of {p['n_items']:,} "
        f"items and {p['neighbours']} neighbours per item ({p['reason']})"
    )


def available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo in bytes; None where there is none (not Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def require_memory(nbytes: int, what: str) -> None:
    """Refuse (MemoryRefused, one line) to build `what` when its estimated `nbytes` exceed
    the memory the system reports available; silent where that cannot be read."""
    free = available_bytes()
    if free is not None and nbytes > free:
        raise MemoryRefused(
            f"{what} needs ~{nbytes / GB:.1f} GB but only {free / GB:.1f} GB is available; "
            "lower scale.memory_gb (or scale.ease_items) so the sparse models are used, or "
            "free memory"
        )


def keep_largest(weights: np.ndarray, k: int) -> np.ndarray:
    """`weights` (n, m) with each row's entries below its k-th largest set to 0, in place
    (ties at the cut are all kept); k = 0 or k >= m keeps everything. Returns `weights`."""
    if 0 < k < weights.shape[1]:
        cut = np.partition(weights, -k, axis=1)[:, -k][:, None]
        weights[weights < cut] = 0.0
    return weights


def top_k_rows(dense_rows: np.ndarray, k: int) -> sp.coo_matrix:
    """The `k` largest entries of each row of (b, n) `dense_rows` (zeros dropped), as a
    (b, n) COO matrix."""
    b, n = dense_rows.shape
    if k >= n:
        rows, cols = np.nonzero(dense_rows)
        return sp.coo_matrix((dense_rows[rows, cols], (rows, cols)), shape=(b, n))
    # Which of several equal k-th values is kept is argpartition's choice (deterministic
    # for the same input); sorting the kept columns makes the CSR rows canonical.
    keep = np.argpartition(-dense_rows, k - 1, axis=1)[:, :k]
    keep.sort(axis=1)
    values = np.take_along_axis(dense_rows, keep, axis=1)
    rows = np.repeat(np.arange(b), k)
    mask = values.ravel() != 0
    return sp.coo_matrix((values.ravel()[mask], (rows[mask], keep.ravel()[mask])), shape=(b, n))


def sparse_ease(x: sp.csr_matrix, lam: float, head_items: int, neighbours: int) -> sp.csr_matrix:
    """EASE over the `head_items` most-liked columns of the binary (users, n_items) `x`, each
    row cut to its `neighbours` largest weights; (n_items, n_items) float32 CSR in catalogue
    positions (rows and columns outside the head are empty)."""
    n_items = x.shape[1]
    popularity = np.asarray(x.sum(axis=0)).ravel()
    # Most liked first; a stable sort so that equal counts keep the catalogue order.
    head = np.sort(np.argsort(-popularity, kind="stable")[:head_items])
    require_memory(dense_bytes(len(head)), f"EASE over the {len(head):,} most liked items")
    xh = x[:, head]
    gram = (xh.T @ xh).toarray()
    gram[np.diag_indices_from(gram)] += lam
    p = np.linalg.inv(gram)
    del gram
    b = p / (-np.diag(p))
    del p
    b[np.diag_indices_from(b)] = 0.0
    parts = []
    step = max(1, _ROW_BLOCK_BYTES // (8 * len(head)))
    for start in range(0, len(head), step):
        parts.append(top_k_rows(b[start : start + step], neighbours))
    local = sp.vstack(parts).tocoo()
    return sp.csr_matrix(
        (local.data.astype(np.float32), (head[local.row], head[local.col])),
        shape=(n_items, n_items),
    )


def sparse_product_top_k(
    left: sp.csr_matrix,
    right: sp.csr_matrix,
    neighbours: int,
    column_scale: np.ndarray | None = None,
) -> sp.csr_matrix:
    """Row blocks of `left @ right` (n, n), each column j multiplied by column_scale[j], the
    diagonal zeroed and each row cut to its `neighbours` largest entries; float32 CSR. The
    dense product is never held: one (block, n) float64 block at a time."""
    n = right.shape[1]
    step = max(1, _ROW_BLOCK_BYTES // (8 * n))
    parts = []
    for start in range(0, left.shape[0], step):
        block = (left[start : start + step] @ right).toarray()
        if column_scale is not None:
            block *= column_scale[None, :]
        rows = np.arange(block.shape[0])
        diagonal = rows + start
        inside = diagonal < n
        block[rows[inside], diagonal[inside]] = 0.0
        parts.append(top_k_rows(block, neighbours))
    out = sp.vstack(parts).tocsr().astype(np.float32)
    out.sort_indices()
    return out


def save_weights(directory: Path, weights: np.ndarray | sp.csr_matrix) -> None:
    """weights.npy (dense), or weights_{data,indices,indptr}.npy (CSR) for the sparse model."""
    if not sp.issparse(weights):
        np.save(directory / "weights.npy", weights)
        return
    for part in ("data", "indices", "indptr"):
        np.save(directory / f"weights_{part}.npy", getattr(weights, part))


def load_weights_matrix(directory: Path, n: int) -> np.ndarray | sp.csr_matrix:
    """The (n, n) weights `save_weights` wrote, dense or CSR, checked for shape and kind."""
    if (directory / "weights.npy").is_file():
        return load_array(directory / "weights.npy", shape=(n, n), kind="f")
    data = load_array(directory / "weights_data.npy", shape=(None,), kind="f")
    indices = load_array(directory / "weights_indices.npy", shape=(len(data),), kind="i")
    indptr = load_array(directory / "weights_indptr.npy", shape=(n + 1,), kind="i")
    try:
        return sp.csr_matrix((data, indices, indptr), shape=(n, n))
    except ValueError as exc:
        raise RunFileError(f"{directory}: the sparse weights are inconsistent ({exc})") from exc
