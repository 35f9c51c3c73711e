"""The pre-rank stage: a small MLP that cuts the recall stage's 200 candidates to 100.

In industry the pre-ranker exists because the ranker is too expensive for every recall
candidate: it reads only cheap, precomputed inputs, here the recall model's user and item
vectors and its logit, and keeps the share of candidates the ranker can afford.

    x = [u | v | u * v | recall logit | item-to-item score (standardised)]  ->  MLP  ->  logit

u and v are the recall towers' outputs, already computed for retrieval, so scoring 200
candidates costs one small matrix product. It learns what the dot product alone cannot, e.g.
that the recall logit means more for some kinds of users or items than for others.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recfunnel.artifacts import RunFileError, load_weights, read_json, require_keys
from recfunnel.config import config_from_json, param, save_config
from recfunnel.errors import ConfigError, NotFittedError
from recfunnel.evaluate import metric_cutoff
from recfunnel.train import TrainLog, fit


@dataclass(frozen=True)
class PreRankConfig:
    """The pre-rank MLP and its training."""

    keep: int = param(100, "candidates passed on to the rank stage")
    hidden: tuple[int, ...] = param((64,), "hidden layer sizes")
    use_recall_logit: bool = param(True, "read the recall logit as an input")
    use_cf: bool = param(True, "read the item-to-item (EASE) score as an input")
    batch_size: int = param(2048, "examples per batch")
    epochs: int = param(4, "maximum epochs (early stopping on valid may end sooner)")
    patience: int = param(2, "epochs without valid improvement before stopping")
    lr: float = param(2e-3, "Adam learning rate")
    weight_decay: float = param(0.0, "Adam weight decay")
    valid_metric: str = param("recall@100", "valid metric of its output list (warm users)")
    seed: int = param(0, "seed for weights and shuffling")

    def validate(self) -> None:
        if min(self.keep, self.batch_size, self.epochs, self.patience) <= 0:
            raise ConfigError("prerank keep, batch_size, epochs and patience must be > 0")
        if self.lr <= 0 or self.weight_decay < 0 or any(h <= 0 for h in self.hidden):
            raise ConfigError("prerank lr must be > 0, weight_decay >= 0, hidden sizes > 0")
        metric_cutoff(self.valid_metric, "prerank.valid_metric")


class PreRankMLP(nn.Module):
    """(user (n, d), item (n, d), scalars (n, k)) -> logits (n,)."""

    def __init__(self, dim: int, hidden: tuple[int, ...], n_scalars: int) -> None:
        super().__init__()
        sizes = [3 * dim + n_scalars, *hidden, 1]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.mlp = nn.Sequential(*layers)

    def forward(
        self, user: torch.Tensor, item: torch.Tensor, scalars: torch.Tensor
    ) -> torch.Tensor:
        return self.mlp(torch.cat([user, item, user * item, scalars], dim=1)).squeeze(1)


@dataclass(frozen=True)
class PairInputs:
    """What the pre-rank model reads for a set of pairs: the requests' user vectors (B, d),
    the catalogue's item vectors (n_items, d), and for each pair (n,) its request row, its
    catalogue position, its recall logit and its item-to-item score."""

    users: np.ndarray
    items: np.ndarray
    rows: np.ndarray
    positions: np.ndarray
    recall: np.ndarray
    cf: np.ndarray

    def subset(self, keep: np.ndarray) -> PairInputs:
        """The pairs selected by `keep` (bool or index array), same users and items."""
        return PairInputs(
            self.users,
            self.items,
            self.rows[keep],
            self.positions[keep],
            self.recall[keep],
            self.cf[keep],
        )


class PreRankStage:
    """Train and serve the pre-rank MLP. Learned attributes end with `_`."""

    def __init__(self, config: PreRankConfig | None = None) -> None:
        self.config = config or PreRankConfig()

    @property
    def scalars(self) -> tuple[str, ...]:
        """The scalar inputs this configuration reads, in order."""
        names = ("recall",) if self.config.use_recall_logit else ()
        return names + (("cf",) if self.config.use_cf else ())

    def fit(
        self,
        inputs: PairInputs,
        labels: np.ndarray,
        validate: Callable[[PreRankStage], float] | None = None,
        *,
        epochs: int | None = None,
        progress: bool = True,
    ) -> PreRankStage:
        """Train on labelled pairs (labels (n,) float32 in {0, 1}). `validate(stage) -> float`
        early-stops on valid; without it the model trains for `epochs` (default
        config.epochs) and keeps the last epoch."""
        cfg = self.config
        cfg.validate()
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        # Standardise the scalars with train statistics, so their scale matches the vectors'.
        raw = self._raw_scalars(inputs)
        self.scalar_mean_ = raw.mean(0).tolist()
        self.scalar_std_ = (raw.std(0) + 1e-6).tolist()
        self.dim_ = int(inputs.users.shape[1])
        self.model_ = PreRankMLP(self.dim_, cfg.hidden, len(self.scalars))
        user_t = torch.from_numpy(inputs.users).float()
        item_t = torch.from_numpy(inputs.items).float()
        scalar_t = torch.from_numpy(self._standardise(raw))
        rows_t, pos_t = torch.from_numpy(inputs.rows), torch.from_numpy(inputs.positions)
        labels_t = torch.from_numpy(np.asarray(labels, dtype=np.float32))

        def batches(epoch: int) -> Iterator[torch.Tensor]:
            order = torch.from_numpy(rng.permutation(len(labels_t)))
            for start in range(0, len(order), cfg.batch_size):
                yield order[start : start + cfg.batch_size]

        def loss(idx: torch.Tensor) -> torch.Tensor:
            logits = self.model_(user_t[rows_t[idx]], item_t[pos_t[idx]], scalar_t[idx])
            return F.binary_cross_entropy_with_logits(logits, labels_t[idx])

        self.log_: TrainLog = fit(
            self.model_,
            batches,
            loss,
            (lambda: validate(self)) if validate is not None else None,
            epochs=epochs or cfg.epochs,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            patience=cfg.patience,
            schedule="cosine",
            metric_name=cfg.valid_metric if validate is not None else "epoch",
            steps_per_epoch=-(-len(labels_t) // cfg.batch_size),
            progress=progress,
            description="pre-rank",
        )
        return self

    def _raw_scalars(self, inputs: PairInputs) -> np.ndarray:
        columns = {"recall": inputs.recall, "cf": inputs.cf}
        if not self.scalars:
            return np.zeros((len(inputs.rows), 0))
        return np.stack([np.asarray(columns[name], np.float64) for name in self.scalars], 1)

    def _standardise(self, raw: np.ndarray) -> np.ndarray:
        mean, std = np.asarray(self.scalar_mean_), np.asarray(self.scalar_std_)
        return ((raw - mean) / std).astype(np.float32)

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError("PreRankStage is not fitted; call fit() or PreRankStage.load()")

    def score_pairs(self, inputs: PairInputs) -> np.ndarray:
        """Logits (n,) of the pairs."""
        self._check_fitted()
        with torch.no_grad():
            logits = self.model_(
                torch.from_numpy(inputs.users[inputs.rows]).float(),
                torch.from_numpy(inputs.items[inputs.positions]).float(),
                torch.from_numpy(self._standardise(self._raw_scalars(inputs))),
            )
        return logits.numpy().astype(np.float64)

    def save(self, directory: Path) -> None:
        self._check_fitted()
        directory.mkdir(parents=True, exist_ok=True)
        save_config(self.config, directory / "config.json")
        torch.save(self.model_.state_dict(), directory / "model.pt")
        state = {"mean": self.scalar_mean_, "std": self.scalar_std_, "dim": self.dim_}
        (directory / "state.json").write_text(json.dumps(state, indent=2))
        (directory / "train_log.json").write_text(json.dumps(self.log_.to_dict(), indent=2))

    @classmethod
    def load(cls, directory: Path) -> PreRankStage:
        stage = cls(config_from_json(PreRankConfig, directory / "config.json"))
        path = directory / "state.json"
        state = read_json(path)
        require_keys(state, path, mean=list, std=list, dim=int)
        n = len(stage.scalars)
        if len(state["mean"]) != n or len(state["std"]) != n or state["dim"] <= 0:
            raise RunFileError(f"{path}: expected {n} means and stds and a positive dim")
        stage.scalar_mean_, stage.scalar_std_ = state["mean"], state["std"]
        stage.dim_ = state["dim"]
        stage.model_ = PreRankMLP(stage.dim_, stage.config.hidden, n)
        load_weights(
            stage.model_, directory / "model.pt", built_from=(path, directory / "config.json")
        )
        stage.log_ = TrainLog.read(directory / "train_log.json")
        return stage
