"""The two-tower recall channel: config, training, retrieval, and save/load.

`TwoTowerChannel` owns what the pure `TwoTower` module should not: the id vocabularies, the
feature tables, the training examples, the top-K index over its item vectors and the
run-directory files. It retrieves each request's top-K through the index (exact search when
none is built) and hands on the user and item vectors (`Embeddings`) that pre-rank reads. It
is also an evaluator `Scorer` (`score`), so the recall report can rank the whole catalogue.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from recfunnel.artifacts import RunFileError, load_array, load_weights
from recfunnel.config import param, require_positive
from recfunnel.data.schema import LIKE_THRESHOLD
from recfunnel.data.split import liked
from recfunnel.device import cpu_state, to_device, to_numpy
from recfunnel.errors import ConfigError
from recfunnel.evaluation.protocol import metric_cutoff, top_k
from recfunnel.features import FeatureSpace, ItemPopularity, gather_ranges
from recfunnel.recall.channel import Channel
from recfunnel.recall.index import ItemIndex, load_index
from recfunnel.recall.two_tower.losses import bce_loss, bpr_loss, sampled_softmax_loss
from recfunnel.recall.two_tower.model import TowerSizes, TwoTower
from recfunnel.recall.two_tower.sampling import (
    RecallBatch,
    RecallExamples,
    UserBatch,
    user_batch,
)
from recfunnel.stage import FitData, Stacked, Validate
from recfunnel.training import distributed
from recfunnel.training.loop import TrainLog, fit
from recfunnel.types import Candidates, Embeddings, History, Pairs, Requests


@dataclass(frozen=True)
class TwoTowerConfig:
    """Two-tower recall model and its training."""

    objective: Literal["softmax", "bpr", "bce"] = param(
        "bce",
        "softmax: in-batch sampled softmax with logQ correction; bpr: pairwise with random "
        "negatives; bce: pointwise with random (and disliked) negatives",
    )
    dim: int = param(64, "size of the id embeddings")
    hidden: tuple[int, ...] = param((128,), "hidden layer sizes of each tower's MLP")
    out_dim: int = param(64, "size of the user and item vectors")
    use_user_id: bool = param(
        False, "give the user tower a user-id embedding (memorises the past; off by default)"
    )
    normalize: bool = param(True, "L2-normalise both towers' outputs (cosine score)")
    temperature: float = param(0.1, "logits = score / temperature")
    dropout: float = param(0.0, "dropout inside the tower MLPs")
    use_popularity: bool = param(
        True, "item tower reads causal like shares (recent window and all-time)"
    )
    popularity_window_days: int = param(14, "the 'recent' like-share window, in days")
    history: Literal["liked", "rated"] = param(
        "liked", "which earlier ratings form the user's history input"
    )
    max_history: int = param(
        100, "history items pooled per user (serving: the most recent N; training: see mode)"
    )
    history_mode: Literal["causal", "others"] = param(
        "others",
        "training history of an example: causal (the user's ratings before it) or others "
        "(a sample of the user's other train ratings, a set as in EASE; never the target)",
    )
    batch_negatives: int = param(
        512, "softmax: uniformly drawn items added to the in-batch negatives (mixed sampling)"
    )
    pair_negatives: int = param(4, "bpr/bce: uniformly drawn negatives per positive")
    logq: bool = param(True, "softmax: subtract log sampling probability (logQ correction)")
    dislikes_as_negatives: bool = param(True, "bce: disliked train ratings are negatives")
    batch_size: int = param(2048, "examples per batch")
    epochs: int = param(3, "maximum epochs (early stopping on valid may end sooner)")
    patience: int = param(2, "epochs without valid improvement before stopping")
    lr: float = param(2e-3, "Adam learning rate")
    weight_decay: float = param(0.0, "Adam weight decay")
    lr_schedule: Literal["constant", "cosine"] = param(
        "cosine", "learning rate: constant, or cosine decay to 0 over the epochs"
    )
    valid_metric: str = param("recall@200", "valid metric (warm users) for early stopping")
    seed: int = param(0, "seed for weights, shuffling and negatives")
    threads: int = param(2, "torch CPU threads")

    def validate(self) -> None:
        require_positive(
            dim=self.dim,
            out_dim=self.out_dim,
            max_history=self.max_history,
            batch_size=self.batch_size,
            epochs=self.epochs,
            patience=self.patience,
            threads=self.threads,
            popularity_window_days=self.popularity_window_days,
        )
        if self.temperature <= 0 or self.lr <= 0:
            raise ConfigError("temperature and lr must be > 0")
        if (
            min(self.batch_negatives, self.pair_negatives) < 0
            or not 0 <= self.dropout < 1
            or (self.weight_decay < 0)
        ):
            raise ConfigError("negatives, dropout and weight_decay must be >= 0, dropout < 1")
        if any(h <= 0 for h in self.hidden):
            raise ConfigError(f"hidden sizes must be > 0, got {self.hidden}")
        metric_cutoff(self.valid_metric, "valid_metric")


class TwoTowerChannel(Channel):
    """Train and serve the two-tower model. Learned attributes end with `_`."""

    name = "two_tower"
    config_class = TwoTowerConfig
    fitted_attribute = "model_"
    refit_for_serving = False  # pre-rank reads its user and item vectors

    def __init__(self, config: TwoTowerConfig | None = None, index: ItemIndex | None = None):
        super().__init__(config)
        self.index = index  # unbuilt until `refresh`; exact search until then

    # ------------------------------------------------------------------ training
    def fit(
        self, data: FitData, stacked: Stacked | None = None, validate: Validate | None = None
    ) -> TwoTowerChannel:
        """Train on data.split.train; early-stop on the valid metric of warm valid users
        (its own, `validate` is not used: the channel trains before any later stage)."""
        ml, split, item_ids, progress = data.ml, data.split, data.item_ids, data.progress
        cfg = self.config
        cfg.validate()
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        self.item_ids_ = np.asarray(item_ids, dtype=np.int64)
        self.space_ = FeatureSpace.fit(ml, split.train)
        self.popularity_ = ItemPopularity(
            liked(split.train), self.space_.items, cfg.popularity_window_days
        )
        # Serving-time popularity of the catalogue: as of the end of train, for valid and test
        # alike, so no valid or test rating feeds a feature.
        column_vocab = self.space_.items.index(self.item_ids_)
        now = np.full(len(column_vocab), self.popularity_.end)
        self.item_popularity_ = np.stack(self.popularity_.buckets(column_vocab, now))
        self.device_ = torch.device(data.device)
        self.model_ = self._build_model().to(self.device_)
        self._prepare_items()

        examples = RecallExamples(
            split.train,
            self.space_,
            history_kind=cfg.history,
            max_history=cfg.max_history,
            with_dislikes=cfg.objective == "bce" and cfg.dislikes_as_negatives,
            history_mode=cfg.history_mode,
        )
        log_prob = torch.from_numpy(np.log(np.maximum(examples.item_prob, 1e-12))).float()
        log_prob, item_table = to_device((log_prob, self._vocab_item_table()), self.device_)

        def loss(batch: RecallBatch) -> torch.Tensor:
            batch = to_device(batch, self.device_)
            return self._loss(batch, item_table, log_prob, examples.n_items)

        measure = self.valid_metric(data, cfg.valid_metric)

        def validate() -> float:
            self._item_cache = None  # the epoch's item vectors
            assert measure is not None
            return measure()

        shared = cfg.objective == "softmax"
        negatives = cfg.batch_negatives if shared else cfg.pair_negatives
        self.log_: TrainLog = fit(
            self.model_,
            # Under torchrun each process keeps its rows of every (identically drawn) batch.
            lambda epoch: distributed.sharded(
                examples.batches(cfg.batch_size, rng, negatives, shared), RecallBatch.rows
            ),
            loss,
            validate if measure is not None else None,
            epochs=cfg.epochs,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            patience=cfg.patience,
            schedule=cfg.lr_schedule,
            metric_name=cfg.valid_metric,
            steps_per_epoch=examples.n_batches(cfg.batch_size),
            progress=progress,
            description=f"recall ({cfg.objective})",
            sharded=True,
        )
        self._item_cache = None
        self._fitted()
        return self

    def _build_model(self) -> TwoTower:
        cfg = self.config
        return TwoTower(
            TowerSizes(n_users=len(self.space_.users), n_items=len(self.space_.items)),
            dim=cfg.dim,
            hidden=cfg.hidden,
            out_dim=cfg.out_dim,
            use_user_id=cfg.use_user_id,
            normalize=cfg.normalize,
            temperature=cfg.temperature,
            dropout=cfg.dropout,
            use_popularity=cfg.use_popularity,
        )

    def _prepare_items(self) -> None:
        feats = self.space_.item_features(self.item_ids_)
        catalogue = {k: torch.from_numpy(v) for k, v in feats.items()}
        catalogue["recent"] = torch.from_numpy(self.item_popularity_[0])
        catalogue["total"] = torch.from_numpy(self.item_popularity_[1])
        self._catalogue = to_device(catalogue, self.device_)
        # Catalogue column -> vocab index, to read history given over catalogue columns.
        self._column_vocab = feats["item"]
        self._item_cache: torch.Tensor | None = None

    def _vocab_item_table(self) -> dict[str, torch.Tensor]:
        """Item-tower inputs for every vocab slot (slot 0, unknown, all zeros)."""
        feats = self.space_.item_features(self.space_.items.ids)
        genres = np.zeros((len(self.space_.items), feats["genres"].shape[1]), np.float32)
        genres[1:] = feats["genres"]
        year = np.zeros(len(self.space_.items), np.int64)
        year[1:] = feats["year"]
        return {"genres": torch.from_numpy(genres), "year": torch.from_numpy(year)}

    def _loss(
        self,
        batch: RecallBatch,
        table: dict[str, torch.Tensor],
        log_prob: torch.Tensor,
        n_items: int,
    ) -> torch.Tensor:
        cfg, model = self.config, self.model_

        def items(index: torch.Tensor, times: np.ndarray) -> torch.Tensor:
            """Item vectors (*index.shape, d); popularity as of `times` (broadcast to index)."""
            flat = index.reshape(-1)
            at = np.broadcast_to(times, tuple(index.shape)).reshape(-1)
            recent, total = self.popularity_.buckets(to_numpy(flat), at)
            vectors = model.item_vectors(
                flat,
                table["genres"][flat],
                table["year"][flat],
                *to_device((torch.from_numpy(recent), torch.from_numpy(total)), flat.device),
            )
            return vectors.reshape(*index.shape, -1)

        users = model.user_vectors(*batch.users.as_args())
        positives = items(batch.items, batch.times)
        if cfg.objective == "softmax":
            batch_size = len(batch.items)
            # Expected draws of item j into the batch: B * p_j (in-batch), R / N (uniform).
            log_q = (
                log_prob[batch.items] + np.log(batch_size)
                if cfg.logq
                else torch.zeros(batch_size, device=users.device)
            )
            neg, neg_log_q = None, None
            if batch.negatives is not None:
                r = len(batch.negatives)
                # Shared negatives have no event of their own: borrow the batch's times.
                neg = items(batch.negatives, np.resize(batch.times, r))
                neg_log_q = torch.full(
                    (r,), float(np.log(r / (n_items - 1)) if cfg.logq else 0), device=users.device
                )
            return sampled_softmax_loss(
                users, positives, batch.items, log_q, model.temperature, neg, neg_log_q
            )
        if cfg.objective == "bpr":
            if batch.negatives is None:
                raise ConfigError("recall.objective=bpr needs recall.pair_negatives >= 1")
            negatives = items(batch.negatives, batch.times[:, None])
            return bpr_loss(users, positives, negatives, model.temperature)
        logits = model.logits(users, positives) + model.bias
        labels = batch.labels
        if batch.negatives is not None:
            neg = items(batch.negatives, batch.times[:, None])  # (B, n, d)
            neg_logits = torch.einsum("bd,bnd->bn", users, neg) / model.temperature + model.bias
            logits = torch.cat([logits, neg_logits.reshape(-1)])
            labels = torch.cat([labels, torch.zeros(neg_logits.numel(), device=labels.device)])
        return bce_loss(logits, labels)

    # ------------------------------------------------------------------ serving
    def item_embeddings(self) -> np.ndarray:
        """Vectors of the catalogue's items, (n_items, out_dim) float32, in item_ids_ order."""
        self.check_fitted()
        if self._item_cache is None:
            with torch.no_grad():
                c = self._catalogue
                self._item_cache = self.model_.item_vectors(
                    c["item"], c["genres"], c["year"], c["recent"], c["total"]
                )
        return to_numpy(self._item_cache)

    def user_batch(self, user_ids: np.ndarray, history: History) -> UserBatch:
        """User-tower inputs from raw ids and their history over catalogue columns: the last
        `max_history` items (by time) of the configured kind."""
        cfg = self.config
        ratings = history.ratings.tocoo()
        times = history.timestamps.tocoo()
        if not (np.array_equal(ratings.row, times.row) and np.array_equal(ratings.col, times.col)):
            raise ConfigError("history ratings and timestamps must share one sparsity pattern")
        keep = (
            ratings.data >= LIKE_THRESHOLD if cfg.history == "liked" else np.ones(ratings.nnz, bool)
        )
        row, col, t = ratings.row[keep], ratings.col[keep], times.data[keep]
        order = np.lexsort((col, t, row))
        row, col = row[order], col[order]
        n = len(user_ids)
        end = np.searchsorted(row, np.arange(n), side="right")
        first = np.searchsorted(row, np.arange(n), side="left")
        begin = np.maximum(first, end - cfg.max_history)
        features = self.space_.user_features(np.asarray(user_ids))
        history_items = gather_ranges(self._column_vocab[col], begin, end)
        return user_batch(features, np.arange(n), history_items, end - begin)

    def user_embeddings(self, user_ids: np.ndarray, history: History) -> np.ndarray:
        """(n_users, out_dim) float32 user vectors."""
        self.check_fitted()
        with torch.no_grad():
            batch = to_device(self.user_batch(user_ids, history), self.device_)
            return to_numpy(self.model_.user_vectors(*batch.as_args()))

    def embeddings(self, requests: Requests) -> Embeddings:
        """The requests' user vectors (B, d) and the catalogue's item vectors (n_items, d)."""
        users = self.user_embeddings(requests.user_ids, requests.history)
        return Embeddings(users, self.item_embeddings())

    def score(self, user_ids: np.ndarray, history: History) -> np.ndarray:
        """(n_users, n_items) exact scores over the catalogue (the evaluator's Scorer)."""
        users = self.user_embeddings(user_ids, history)
        return (users @ self.item_embeddings().T).astype(np.float64)

    def retrieve(self, requests: Requests, k: int) -> Candidates:
        """The top-k unseen items of each request, through the index (exact search until one
        is built). scores["two_tower"] is the model's logit, <u, v> / temperature, the scale
        the later stages read it on; the candidates carry the user and item vectors."""
        self.check_fitted()
        emb = self.embeddings(requests)
        known = requests.history.ratings
        if self.index is None or not self.index.built:
            items = top_k((emb.users @ emb.items.T).astype(np.float64), known, k)
        else:
            ids, _ = self.index.search(emb.users, k, exclude=known)
            items = np.where(ids >= 0, np.searchsorted(self.item_ids_, ids), -1)
        cands = Candidates(items.astype(np.int64), embeddings=emb)
        pairs = self._logits(cands.pairs())
        return cands.with_scores(self.name, pairs.scores[self.name])

    def score_pairs(self, requests: Requests, pairs: Pairs) -> Pairs:
        """The logit of every pair, with the requests' vectors attached (reused if the pairs
        already carry them, as the recall stage's candidates do)."""
        self.check_fitted()
        if pairs.embeddings is None or len(pairs.embeddings.users) != len(requests):
            pairs = pairs.with_embeddings(self.embeddings(requests))
        return self._logits(pairs)

    def _logits(self, pairs: Pairs) -> Pairs:
        emb = pairs.embeddings
        assert emb is not None
        dots = np.einsum("nd,nd->n", emb.users[pairs.rows], emb.items[pairs.items])
        return pairs.with_scores(self.name, dots.astype(np.float64) / self.model_.temperature)

    def refresh(self, train: pd.DataFrame) -> None:
        """Serving state as of the day after `train`: recompute the catalogue's popularity
        inputs (a daily feature refresh: the weights stay, the item vectors move with the like
        shares), then index the item vectors."""
        self.check_fitted()
        self.popularity_ = ItemPopularity(
            liked(train), self.space_.items, self.config.popularity_window_days
        )
        column_vocab = self.space_.items.index(self.item_ids_)
        now = np.full(len(column_vocab), self.popularity_.end)
        self.item_popularity_ = np.stack(self.popularity_.buckets(column_vocab, now))
        self._prepare_items()
        if self.index is not None:
            self.index.build(self.item_embeddings(), self.item_ids_)

    # ------------------------------------------------------------------ persistence
    def _save(self, directory: Path) -> None:
        """Vocabularies, weights (state dict), training log, catalogue ids, the index."""
        self.space_.save(directory)
        np.save(directory / "catalogue.npy", self.item_ids_)
        np.save(directory / "catalogue_popularity.npy", self.item_popularity_)
        torch.save(cpu_state(self.model_), directory / "model.pt")
        (directory / "train_log.json").write_text(json.dumps(self.log_.to_dict(), indent=2))
        if self.index is not None and self.index.built:
            self.index.save(directory / "index")

    def _load(self, directory: Path, data: FitData) -> None:
        """Weights load with weights_only=True (no pickle); a missing index/ means exact
        search (the run loader warns about it)."""
        self.space_ = FeatureSpace.load(directory, data.ml)
        self.item_ids_ = load_array(directory / "catalogue.npy", shape=(None,), kind="i")
        if not np.array_equal(self.item_ids_, data.item_ids):
            raise RunFileError(f"{directory / 'catalogue.npy'} is not this data's catalogue")
        self.item_popularity_ = load_array(
            directory / "catalogue_popularity.npy", shape=(2, len(self.item_ids_))
        )
        self.model_ = self._build_model()
        load_weights(self.model_, directory / "model.pt", built_from=(directory / "config.json",))
        self.device_ = torch.device(data.device)
        self.model_.to(self.device_)  # the weights load on the CPU (map_location), then move
        self.log_ = TrainLog.read(directory / "train_log.json")
        self._prepare_items()
        index_dir = directory / "index"
        self.index = load_index(index_dir) if index_dir.is_dir() else None
        if self.index is not None and not np.array_equal(self.index.item_ids_, self.item_ids_):
            raise RunFileError(f"{index_dir} does not index this catalogue's items")
