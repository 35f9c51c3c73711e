"""The LightGCN recall channel: config, training, serving from the request's history, save/load.

The graph is the liked train ratings (rating >= 4): user rows are the train users with a
like, item columns are the catalogue's positions (an item without a liked train rating is an
isolated node that keeps its own id vector). Training is full-graph: every step propagates
the whole graph, then reads the batch's rows (BPR, or a softmax over the catalogue).

Serving. The trained user vector only knows the train graph, while a request carries its own
history (at test time train + valid) and may come from a user the graph never saw. So the
user side of the propagation is redone per request ("fold-in"): with H the request's liked
items and d_i an item's degree in the train graph,

    e_u^(k) = sum over i in H of e_i^(k-1) / sqrt(|H| d_i)      k = 1..K
    e_u     = mean(e_u^(0), e_u^(1), ..., e_u^(K))

which is LightGCN's own user update read off the trained item layers. e_u^(0) is zero for
`serve="history"` (the default), so known and unseen users are served alike, from the history
alone; `serve="fold_in"` adds the user's id embedding when the graph knows the user (then a
train user whose history is their train likes gets the trained vector back exactly);
`serve="trained"` uses the trained vector for known users and ignores newer history. A
request with nothing to fold in (no liked item, no known id) gets the mean trained user
vector, which ranks the broadly liked movies first.

Why "history": on ML-1M's valid (warm users, recall@200) it matched fold_in when fitted on
the early 80 % of train (0.481 vs 0.483 at K = 3, 8 negatives; better recall@50/100) and beat
it when fitted on all of train (0.515 vs 0.505); "trained" was lowest (0.476 / 0.505). The id
embedding mostly memorises the train graph, which the history already carries.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from recfunnel.artifacts import RunFileError, load_array, load_weights
from recfunnel.config import param, require_positive
from recfunnel.data.schema import ITEM, USER
from recfunnel.data.split import liked
from recfunnel.device import cpu_state, to_device, to_numpy
from recfunnel.errors import ConfigError
from recfunnel.evaluation.protocol import metric_cutoff
from recfunnel.recall.channel import CatalogueChannel
from recfunnel.recall.graph.model import LightGCN, normalized_adjacency, to_torch
from recfunnel.stage import FitData, Stacked, Validate
from recfunnel.training.loop import TrainLog, fit
from recfunnel.types import History, Requests

# A training batch: user rows (B,), item columns (B,) of liked pairs, bpr negatives (B, n).
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True)
class LightGCNConfig:
    """LightGCN graph recall and its training."""

    dim: int = param(64, "size of the user and item id embeddings")
    layers: int = param(3, "propagation layers K (0: plain matrix factorisation)")
    objective: Literal["bpr", "softmax"] = param(
        "bpr",
        "bpr: pairwise against uniformly drawn items; softmax: cross-entropy over the whole "
        "catalogue (exact, and cheap at a few thousand items)",
    )
    negatives: int = param(8, "bpr: uniformly drawn negatives per liked pair")
    temperature: float = param(1.0, "softmax: logits = score / temperature")
    l2: float = param(1e-4, "L2 penalty on the batch's id embeddings E^(0), per pair")
    batch_size: int = param(16384, "liked pairs per step (each step propagates the whole graph)")
    epochs: int = param(12, "maximum epochs (early stopping on valid may end sooner)")
    patience: int = param(4, "epochs without valid improvement before stopping")
    lr: float = param(2e-2, "Adam learning rate")
    lr_schedule: Literal["constant", "cosine"] = param(
        "constant", "learning rate: constant, or cosine decay to 0 over the epochs"
    )
    serve: Literal["fold_in", "history", "trained"] = param(
        "history",
        "user vector of a request: fold_in (its liked history propagated onto the trained "
        "item layers, plus its id embedding when known), history (the same without the id), "
        "trained (the train-graph vector for known users, fold_in for the others)",
    )
    valid_metric: str = param("recall@200", "valid metric (warm users) for early stopping")
    seed: int = param(0, "seed for weights, shuffling and negatives")
    threads: int = param(2, "torch CPU threads")

    def validate(self) -> None:
        require_positive(
            dim=self.dim,
            negatives=self.negatives,
            batch_size=self.batch_size,
            epochs=self.epochs,
            patience=self.patience,
            threads=self.threads,
        )
        if self.layers < 0:
            raise ConfigError(f"layers must be >= 0, got {self.layers}")
        if not (self.lr > 0 and self.temperature > 0 and self.l2 >= 0):
            raise ConfigError("lr and temperature must be > 0, l2 >= 0")
        if self.objective not in ("bpr", "softmax"):
            raise ConfigError(f"objective must be bpr or softmax, got {self.objective!r}")
        if self.serve not in ("fold_in", "history", "trained"):
            raise ConfigError(f"serve must be fold_in, history or trained, got {self.serve!r}")
        metric_cutoff(self.valid_metric, "valid_metric")


class LightGCNChannel(CatalogueChannel):
    """Train LightGCN on the liked train graph and serve it per request (module docstring).
    Learned attributes end with `_`."""

    name = "lightgcn"
    config_class = LightGCNConfig
    fitted_attribute = "model_"

    # ------------------------------------------------------------------ training
    def fit(
        self, data: FitData, stacked: Stacked | None = None, validate: Validate | None = None
    ) -> LightGCNChannel:
        """Train on the liked pairs of data.split.train; early-stop on the valid metric of
        warm valid users (its own: the channel trains before any later stage)."""
        cfg = self.config
        cfg.validate()
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        self.item_ids_ = np.asarray(data.item_ids, dtype=np.int64)
        positives = liked(data.split.train)
        self.user_ids_ = np.unique(positives[USER].to_numpy()).astype(np.int64)
        columns = np.searchsorted(self.item_ids_, positives[ITEM].to_numpy())
        in_catalogue = (columns < len(self.item_ids_)) & (
            self.item_ids_[np.minimum(columns, len(self.item_ids_) - 1)]
            == positives[ITEM].to_numpy()
        )
        users = np.searchsorted(self.user_ids_, positives[USER].to_numpy()[in_catalogue])
        # (2, n_edges): user row, item column; sorted so the graph does not depend on row order.
        edges = np.unique(np.stack([users, columns[in_catalogue]]), axis=1).astype(np.int64)
        self.edges_ = edges
        self.device_ = torch.device(data.device)
        model = LightGCN(len(self.user_ids_), len(self.item_ids_), cfg.dim, cfg.layers)
        self.model_ = model.to(self.device_)
        self._prepare_graph()

        measure = self.valid_metric(data, cfg.valid_metric)

        def validate_epoch() -> float:
            self._prepare_serving()  # the epoch's propagated item layers
            assert measure is not None
            return measure()

        n_edges = edges.shape[1]
        steps = math.ceil(n_edges / cfg.batch_size)

        def batches(epoch: int) -> Iterator[Batch]:
            order = rng.permutation(n_edges)
            for start in range(0, n_edges, cfg.batch_size):
                pick = order[start : start + cfg.batch_size]
                negatives = None
                if cfg.objective == "bpr":
                    negatives = rng.integers(0, len(self.item_ids_), (len(pick), cfg.negatives))
                    negatives = torch.from_numpy(negatives)
                users, items = torch.from_numpy(edges[0, pick]), torch.from_numpy(edges[1, pick])
                yield to_device((users, items, negatives), self.device_)

        self.log_: TrainLog = fit(
            self.model_,
            batches,
            self._loss,
            validate_epoch if measure is not None else None,
            epochs=cfg.epochs,
            lr=cfg.lr,
            patience=cfg.patience,
            schedule=cfg.lr_schedule,
            metric_name=cfg.valid_metric,
            steps_per_epoch=steps,
            progress=data.progress,
            description=f"lightgcn ({cfg.objective})",
        )
        self._prepare_serving()
        self._fitted()
        return self

    def _loss(self, batch: Batch) -> torch.Tensor:
        """BPR or catalogue softmax of a batch of B liked pairs, plus L2 on their E^(0).

        batch: user rows (B,), item columns (B,), bpr negatives (B, n) or None."""
        cfg, model = self.config, self.model_
        users, items, negatives = batch
        user_final, item_final = model(self._adjacency)
        u = user_final[users]  # (B, d)
        ego = model.user.weight[users].pow(2).sum() + model.item.weight[items].pow(2).sum()
        if cfg.objective == "bpr":
            assert negatives is not None
            positive = (u * item_final[items]).sum(-1, keepdim=True)  # (B, 1)
            negative = torch.einsum("bd,bnd->bn", u, item_final[negatives])  # (B, n)
            loss = -F.logsigmoid(positive - negative).mean()
            ego = ego + model.item.weight[negatives].pow(2).sum() / cfg.negatives
        else:
            loss = F.cross_entropy(u @ item_final.T / cfg.temperature, items)
        return loss + cfg.l2 * ego / len(users)

    # ------------------------------------------------------------------ serving
    def _prepare_graph(self) -> None:
        """The normalised train graph, and each item's degree in it (for the fold-in)."""
        n_users, n_items = len(self.user_ids_), len(self.item_ids_)
        self._adjacency = to_device(
            to_torch(normalized_adjacency(self.edges_[0], self.edges_[1], n_users, n_items)),
            self.device_,
        )
        self._item_degree = np.bincount(self.edges_[1], minlength=n_items).astype(np.float32)
        self._prepare_serving()

    def _prepare_serving(self) -> None:
        """Propagate once with the current weights and keep what serving reads."""
        model = self.model_
        with torch.no_grad():
            # (K + 1, n_users + n_items, d)
            layers = to_numpy(model.layer_outputs(self._adjacency))
        n_users = len(self.user_ids_)
        final = layers.mean(axis=0)
        self._user_final = final[:n_users]
        self._user_ego = layers[0, :n_users]
        self._items = final[n_users:]  # (n_items, d)
        # Sum of the item layers 0..K-1, each divided by sqrt(d_i): one product with the
        # request's normalised liked row gives e_u^(1) + ... + e_u^(K) at once.
        scale = 1.0 / np.sqrt(np.maximum(self._item_degree, 1.0))
        self._fold_items = layers[:-1, n_users:].sum(axis=0) * scale[:, None]
        self._cold = (
            self._user_final.mean(axis=0) if n_users else np.zeros(model.user.embedding_dim)
        ).astype(np.float32)

    def user_vectors(self, user_ids: np.ndarray, history: History) -> np.ndarray:
        """(B, dim) float32 user vectors from raw ids and history over catalogue columns."""
        cfg = self.config
        user_ids = np.asarray(user_ids, dtype=np.int64)
        rows = np.searchsorted(self.user_ids_, user_ids)
        rows = np.minimum(rows, max(len(self.user_ids_) - 1, 0))
        known = (
            self.user_ids_[rows] == user_ids
            if len(self.user_ids_)
            else np.zeros(len(user_ids), bool)
        )
        x = history.liked()
        count = np.diff(x.indptr)
        normed = sp.diags(1.0 / np.sqrt(np.maximum(count, 1))) @ x  # (B, n_items): 1 / sqrt|H|
        out = np.asarray(normed @ self._fold_items, dtype=np.float32)  # e_u^(1) + ... + e_u^(K)
        uses_id = known & (cfg.serve != "history")
        out[uses_id] += self._user_ego[rows[uses_id]]
        out /= cfg.layers + 1
        if cfg.serve == "trained":
            out[known] = self._user_final[rows[known]]
        nothing = ~uses_id & ((count == 0) | (cfg.layers == 0))
        out[nothing] = self._cold
        return out

    def score(self, user_ids: np.ndarray, history: History) -> np.ndarray:
        """(n_users, n_items) float64 scores over the catalogue (the evaluator's Scorer)."""
        return (self.user_vectors(user_ids, history) @ self._items.T).astype(np.float64)

    def catalogue_scores(self, requests: Requests) -> np.ndarray:
        return self.score(requests.user_ids, requests.history)

    def item_embeddings(self) -> np.ndarray:
        """(n_items, dim) float32 final item vectors, in catalogue order."""
        self.check_fitted()
        return self._items

    # ------------------------------------------------------------------ persistence
    def _save(self, directory: Path) -> None:
        """Weights (state dict) plus what rebuilds the graph: user ids, edges, catalogue."""
        torch.save(cpu_state(self.model_), directory / "model.pt")
        np.save(directory / "users.npy", self.user_ids_)
        np.save(directory / "edges.npy", self.edges_)
        np.save(directory / "catalogue.npy", self.item_ids_)
        (directory / "train_log.json").write_text(json.dumps(self.log_.to_dict(), indent=2))

    def _load(self, directory: Path, data: FitData) -> None:
        self.item_ids_ = load_array(directory / "catalogue.npy", shape=(None,), kind="i")
        if not np.array_equal(self.item_ids_, data.item_ids):
            raise RunFileError(f"{directory / 'catalogue.npy'} is not this data's catalogue")
        self.user_ids_ = load_array(directory / "users.npy", shape=(None,), kind="i")
        self.edges_ = load_array(directory / "edges.npy", shape=(2, None), kind="i")
        n_users, n_items = len(self.user_ids_), len(self.item_ids_)
        if self.edges_.size and (
            self.edges_.min() < 0
            or self.edges_[0].max() >= n_users
            or self.edges_[1].max() >= n_items
        ):
            raise RunFileError(f"{directory / 'edges.npy'} names users or items out of range")
        cfg = self.config
        self.model_ = LightGCN(n_users, n_items, cfg.dim, cfg.layers)
        load_weights(self.model_, directory / "model.pt", built_from=(directory / "config.json",))
        self.device_ = torch.device(data.device)
        self.model_.to(self.device_)  # loaded on the CPU (map_location), then moved
        self.log_ = TrainLog.read(directory / "train_log.json")
        self._prepare_graph()
