"""The rank stage: config, training and serving of the deep CTR model."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from recfunnel.artifacts import RunFileError, load_weights, read_json
from recfunnel.candidates import Candidates, Requests
from recfunnel.config import config_from_json, param, save_config
from recfunnel.errors import ConfigError, NotFittedError
from recfunnel.evaluate import metric_cutoff
from recfunnel.rank.features import DENSE, RankFeatureSpace, RequestFeatures
from recfunnel.rank.model import RankModel, RankSizes
from recfunnel.stacking import Examples
from recfunnel.train import TrainLog, fit


@dataclass(frozen=True)
class RankConfig:
    """The rank model and its training."""

    objective: Literal["like", "watch_like"] = param(
        "watch_like",
        "like: one logit, P(liked | candidate); watch_like: two heads, P(rated | candidate) "
        "on the candidates and P(liked | rated) on the rated pairs, ranked by their product "
        "(ESMM-style), so the like head is a classic CTR model",
    )
    dim: int = param(16, "embedding size of every field")
    deep: tuple[int, ...] = param((256, 128), "hidden sizes of the deep (MLP) part")
    cross_layers: int = param(2, "DCN-v2 cross layers (0: no explicit crosses)")
    attention_hidden: int = param(32, "hidden size of DIN's attention unit")
    use_din: bool = param(True, "attend over the liked-items sequence (DIN)")
    max_sequence: int = param(50, "most recent liked items in the behaviour sequence")
    use_user_id: bool = param(False, "a user-id embedding (memorises the training period)")
    use_recall_logit: bool = param(True, "read the recall logit")
    use_prerank_logit: bool = param(True, "read the (cross-fitted) pre-rank logit")
    use_cf: bool = param(True, "read the item-to-item (EASE, fitted on the early part) score")
    popularity_window_days: int = param(14, "the 'recent' like-share window, in days")
    dropout: float = param(0.1, "dropout in the deep part")
    batch_size: int = param(1024, "examples per batch")
    epochs: int = param(6, "maximum epochs (early stopping on valid may end sooner)")
    patience: int = param(2, "epochs without valid improvement before stopping")
    lr: float = param(1e-3, "Adam learning rate")
    weight_decay: float = param(0.0, "Adam weight decay")
    valid_metric: str = param("ndcg@20", "valid metric of the funnel's list (warm users)")
    seed: int = param(0, "seed for weights and shuffling")

    def validate(self) -> None:
        sizes = (self.dim, self.attention_hidden, self.max_sequence, self.batch_size)
        if min(sizes) <= 0 or self.epochs <= 0 or self.patience <= 0:
            raise ConfigError("rank sizes, batch_size, epochs and patience must be > 0")
        if self.cross_layers < 0 or any(h <= 0 for h in self.deep):
            raise ConfigError("rank.cross_layers must be >= 0 and rank.deep sizes > 0")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.dropout < 1:
            raise ConfigError("rank.lr must be > 0, weight_decay >= 0, 0 <= dropout < 1")
        metric_cutoff(self.valid_metric, "rank.valid_metric")

    @property
    def dense(self) -> tuple[str, ...]:
        skip = {"recall"} if not self.use_recall_logit else set()
        skip |= {"prerank"} if not self.use_prerank_logit else set()
        skip |= {"cf"} if not self.use_cf else set()
        return tuple(name for name in DENSE if name not in skip)


@dataclass(frozen=True)
class RankPairs:
    """Pairs to score: request rows (n,), catalogue positions (n,), the earlier stages' logits
    and the item-to-item score (n,) each."""

    rows: np.ndarray
    positions: np.ndarray
    recall: np.ndarray
    prerank: np.ndarray
    cf: np.ndarray


class RankStage:
    """Train and serve the rank model. Learned attributes end with `_`."""

    def __init__(self, config: RankConfig | None = None) -> None:
        self.config = config or RankConfig()

    def fit(
        self,
        features: RankFeatureSpace,
        requests: Requests,
        examples: Examples,
        prerank: np.ndarray,
        cf: np.ndarray,
        validate: Callable[[RankStage], float] | None = None,
        *,
        progress: bool = True,
    ) -> RankStage:
        """Train on labelled `examples` of `requests`; `prerank` (n,) their cross-fitted
        pre-rank logits, `cf` (n,) their item-to-item scores. `validate(stage)` early-stops on
        the funnel's valid metric."""
        cfg = self.config
        cfg.validate()
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        self.features_ = features
        self.model_ = self._build_model()
        if cfg.objective == "like":
            # Rated pairs that recall missed would teach "low recall logit => liked", the
            # opposite of what holds among candidates, so the one-head model sees candidates.
            keep = examples.candidate
            examples = examples.subset(keep)
            prerank, cf = np.asarray(prerank)[keep], np.asarray(cf)[keep]
        req = features.requests(requests)
        pairs = RankPairs(examples.rows, examples.items, examples.recall, prerank, cf)
        table = self._pair_table(req, pairs)
        # Standardise dense inputs with the training pairs' statistics (kept for serving).
        self.dense_stats_ = {
            name: (float(table[name].mean()), float(table[name].std() + 1e-6)) for name in cfg.dense
        }
        labels = torch.from_numpy(examples.labels)
        rated = torch.from_numpy(examples.rated)
        candidate = torch.from_numpy(examples.candidate)

        def batches(epoch: int) -> Iterator[torch.Tensor]:
            order = torch.from_numpy(rng.permutation(len(examples)))
            for start in range(0, len(order), cfg.batch_size):
                yield order[start : start + cfg.batch_size]

        def loss(idx: torch.Tensor) -> torch.Tensor:
            logits = self.model_(self._batch(table, req, idx.numpy()))
            if cfg.objective == "like":
                return F.binary_cross_entropy_with_logits(logits[:, 0], labels[idx])
            # watch head: every candidate, label "rated"; like head: rated pairs, label liked.
            cand, was_rated = candidate[idx], rated[idx]
            watch = F.binary_cross_entropy_with_logits(
                logits[cand, 0], was_rated[cand].float(), reduction="sum"
            ) / max(int(cand.sum()), 1)
            like = F.binary_cross_entropy_with_logits(
                logits[was_rated, 1], labels[idx][was_rated], reduction="sum"
            ) / max(int(was_rated.sum()), 1)
            return watch + like

        self.log_: TrainLog = fit(
            self.model_,
            batches,
            loss,
            (lambda: validate(self)) if validate is not None else None,
            epochs=cfg.epochs,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            patience=cfg.patience,
            schedule="cosine",
            metric_name=cfg.valid_metric,
            steps_per_epoch=-(-len(examples) // cfg.batch_size),
            progress=progress,
            description="rank",
        )
        return self

    def _build_model(self) -> RankModel:
        cfg, space = self.config, self.features_.space
        return RankModel(
            RankSizes(len(space.users), len(space.items)),
            dim=cfg.dim,
            deep=cfg.deep,
            cross_layers=cfg.cross_layers,
            attention_hidden=cfg.attention_hidden,
            use_din=cfg.use_din,
            use_user_id=cfg.use_user_id,
            dense=cfg.dense,
            dropout=cfg.dropout,
            heads=1 if cfg.objective == "like" else 2,
        )

    def _pair_table(self, req: RequestFeatures, pairs: RankPairs) -> dict[str, np.ndarray]:
        table = self.features_.pairs(req, pairs.rows, pairs.positions)
        table["rows"] = pairs.rows
        table["recall"] = np.asarray(pairs.recall, dtype=np.float32)
        table["prerank"] = np.asarray(pairs.prerank, dtype=np.float32)
        table["cf"] = np.asarray(pairs.cf, dtype=np.float32)
        table["user_like_rate"] = req.like_rate[pairs.rows]
        return table

    def _batch(
        self, table: dict[str, np.ndarray], req: RequestFeatures, idx: np.ndarray
    ) -> dict[str, torch.Tensor]:
        rows = table["rows"][idx]
        batch = {
            name: torch.from_numpy(np.ascontiguousarray(table[name][idx]))
            for name in ("item", "genres", "year", "recent", "total", "age")
        }
        for name in self.config.dense:
            mean, std = self.dense_stats_[name]
            values = (table[name][idx] - mean) / std
            batch[name] = torch.from_numpy(values.astype(np.float32))
        user = req.user
        batch["user"] = torch.from_numpy(user["user"][rows])
        batch["gender"] = torch.from_numpy(user["gender"][rows])
        batch["age_group"] = torch.from_numpy(user["age"][rows])
        batch["occupation"] = torch.from_numpy(user["occupation"][rows])
        batch["zip"] = torch.from_numpy(user["zip"][rows])
        batch["lengths"] = torch.from_numpy(req.lengths[rows])
        batch["sequence"] = torch.from_numpy(req.sequence[rows])
        return batch

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError("RankStage is not fitted; call fit() or RankStage.load()")

    def score_pairs(
        self,
        req: RequestFeatures,
        pairs: RankPairs,
        output: Literal["rank", "like"] = "rank",
        batch_size: int = 8192,
    ) -> np.ndarray:
        """(n,) scores of the pairs, given the requests' features. output "rank": the ranking
        score (a logit, or log P(rated) + log P(liked | rated) for watch_like); "like": the
        logit of P(liked | rated), for AUC / LogLoss on rated pairs."""
        self._check_fitted()
        table = self._pair_table(req, pairs)
        out = np.empty(len(pairs.rows), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(out), batch_size):
                idx = np.arange(start, min(start + batch_size, len(out)))
                logits = self.model_(self._batch(table, req, idx))
                if self.config.objective == "like":
                    score = logits[:, 0]
                elif output == "like":
                    score = logits[:, 1]
                else:
                    score = F.logsigmoid(logits[:, 0]) + F.logsigmoid(logits[:, 1])
                out[idx] = score.numpy()
        return out

    def score(self, features: RequestFeatures, cands: Candidates) -> np.ndarray:
        """(B, N) logits of the candidates (NaN on padding) of requests with these features;
        needs the recall, prerank and cf scores."""
        rows, positions = cands.pairs()
        pairs = RankPairs(
            rows,
            positions,
            cands.scores["recall"][cands.valid],
            cands.scores["prerank"][cands.valid],
            cands.scores["cf"][cands.valid],
        )
        return cands.unflatten(self.score_pairs(features, pairs))

    def save(self, directory: Path) -> None:
        self._check_fitted()
        directory.mkdir(parents=True, exist_ok=True)
        save_config(self.config, directory / "config.json")
        torch.save(self.model_.state_dict(), directory / "model.pt")
        (directory / "dense_stats.json").write_text(json.dumps(self.dense_stats_, indent=2))
        (directory / "train_log.json").write_text(json.dumps(self.log_.to_dict(), indent=2))

    @classmethod
    def load(cls, directory: Path, features: RankFeatureSpace) -> RankStage:
        """Rebuild from `save`'s files and the feature space refitted on the same train data."""
        stage = cls(config_from_json(RankConfig, directory / "config.json"))
        stage.features_ = features
        stage.model_ = stage._build_model()
        load_weights(stage.model_, directory / "model.pt", built_from=(directory / "config.json",))
        path = directory / "dense_stats.json"
        stats = read_json(path)
        try:
            stage.dense_stats_ = {name: (float(m), float(s)) for name, (m, s) in stats.items()}
        except (TypeError, ValueError):
            raise RunFileError(f"{path}: expected {{name: [mean, std]}}") from None
        stage.log_ = TrainLog.read(directory / "train_log.json")
        return stage
