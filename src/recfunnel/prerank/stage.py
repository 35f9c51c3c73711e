"""The pre-rank stage: a small MLP that cuts the recall stage's 200 candidates to 100.

In industry the pre-ranker exists because the ranker is too expensive for every recall
candidate: it reads only cheap, precomputed inputs, here the recall model's user and item
vectors and its logit, and keeps the share of candidates the ranker can afford.

    x = [u | v | u * v | recall logit | item-to-item score | channel features]  ->  MLP  ->  logit

(the scalars standardised). With several recall channels, the channel features are each
channel's score of the candidate and the reciprocal rank at which it proposed it (0 when it
did not): the pre-ranker learns how much to trust each channel, instead of a fixed fusion.

(the model is `prerank.model.PreRankMLP`; this module is its stage wrapper)

u and v are the recall towers' outputs, already computed for retrieval, so scoring 200
candidates costs one small matrix product. It learns what the dot product alone cannot, e.g.
that the recall logit means more for some kinds of users or items than for others.

Trained on a few hundred replayed requests, its own order can be worse than the list it is
handed, so the kept candidates are the best by the logit shrunk towards the incoming order
(`recfunnel.blend`): logit / scale + w * prior(position), w chosen on valid after the MLP is
fitted (config `prior_weight = none`), from 0 (the MLP's order) to inf (recall's order cut
to `keep`). The MLP must earn its place: w stays inf unless another weight beats it on
valid's users by 3 standard errors of the paired difference. scores["prerank"] stays the
MLP's logit: the rank stage reads it as an input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from recfunnel.artifacts import RunFileError, load_weights, read_json, require_keys
from recfunnel.blend import (
    blend_key,
    choose_weight,
    logit_scale,
    weight_from_json,
    weight_label,
    weight_to_json,
)
from recfunnel.config import param
from recfunnel.device import cpu_state, to_device, to_numpy
from recfunnel.errors import ConfigError
from recfunnel.evaluation.metrics import MOVE_Z
from recfunnel.evaluation.protocol import metric_cutoff
from recfunnel.prerank.model import PreRankMLP
from recfunnel.stage import FitData, Scorer, Stacked, Validate, require_stacked
from recfunnel.training.loop import TrainLog, fit
from recfunnel.types import Candidates, Pairs, Requests, channel_features

if TYPE_CHECKING:
    from recfunnel.prerank.fast import PreRankKernel


@dataclass(frozen=True)
class PreRankConfig:
    """The pre-rank MLP and its training."""

    keep: int = param(100, "candidates passed on to the rank stage")
    hidden: tuple[int, ...] = param((64,), "hidden layer sizes")
    use_recall_logit: bool = param(True, "read the recall logit as an input")
    use_cf: bool = param(True, "read the item-to-item (EASE) score as an input")
    use_channels: bool = param(
        True, "read the recall channels' scores and reciprocal ranks (recall.<channel>[.rrf])"
    )
    batch_size: int = param(2048, "examples per batch")
    epochs: int = param(4, "maximum epochs (early stopping on valid may end sooner)")
    patience: int = param(2, "epochs without valid improvement before stopping")
    lr: float = param(2e-3, "Adam learning rate")
    weight_decay: float = param(0.0, "Adam weight decay")
    valid_metric: str = param("recall@100", "valid metric of its output list (warm users)")
    prior_weight: float | None = param(
        None,
        "w in the kept list's order logit / scale + w * -log(1 + incoming position): 0 is "
        "the MLP's order, a large w (e.g. 1e6) recall's; none: chosen on valid from "
        "0, 0.25, 0.5, 1, 2, 4, inf after training, by prior_metric: inf (recall's order) "
        "unless the best weight beats it by 3 standard errors of the paired per-user "
        "difference (0 when fit has no valid metric)",
    )
    prior_metric: str = param(
        "ndcg@20",
        "prior_weight none: the valid metric of the kept list that chooses w (the report "
        "judges every stage's list by NDCG@20; early stopping keeps valid_metric)",
    )
    seed: int = param(0, "seed for weights and shuffling")

    def validate(self) -> None:
        if min(self.keep, self.batch_size, self.epochs, self.patience) <= 0:
            raise ConfigError("prerank keep, batch_size, epochs and patience must be > 0")
        if self.lr <= 0 or self.weight_decay < 0 or any(h <= 0 for h in self.hidden):
            raise ConfigError("prerank lr must be > 0, weight_decay >= 0, hidden sizes > 0")
        metric_cutoff(self.valid_metric, "prerank.valid_metric")
        metric_cutoff(self.prior_metric, "prerank.prior_metric")
        if self.prior_weight is not None and not 0 <= self.prior_weight < float("inf"):
            raise ConfigError(
                f"prerank.prior_weight must be a finite number >= 0 or none, got "
                f"{self.prior_weight}"
            )


class PreRankStage(Scorer):
    """Train and serve the pre-rank MLP. Learned attributes end with `_`.

    It reads the pairs' recall embeddings and the scores named in `scalars`; it scores every
    candidate and keeps the best `keep` by the logit blended with the incoming order
    (`prior_weight_`, `logit_scale_`; see `recfunnel.blend`).
    """

    name = "prerank"
    config_class = PreRankConfig
    fitted_attribute = "model_"

    @property
    def scalars(self) -> tuple[str, ...]:
        """The earlier stages' scores this stage reads, in order: the recall logit, the
        item-to-item score, then the channel features it found when it was fitted."""
        names = ("recall",) if self.config.use_recall_logit else ()
        names += ("item_to_item",) if self.config.use_cf else ()
        return names + getattr(self, "channel_features_", ())

    def fit(
        self,
        data: FitData | None,
        stacked: Stacked | None = None,
        validate: Validate | None = None,
        *,
        choose: Validate | None = None,
        epochs: int | None = None,
        device: str | None = None,
    ) -> PreRankStage:
        """Train on the stacked pairs (labels (n,) float32 in {0, 1}). `validate(stage) ->
        float` early-stops on valid; without it the model trains for `epochs` (default
        config.epochs) and keeps the last epoch. `choose(stage)` (config prior_metric on
        valid, one number per valid user (n,), or their mean; default `validate`) chooses the
        blend weight (`_choose_prior_weight`). `device`
        (default data.device, else the CPU) is where it trains and scores."""
        stacked = require_stacked(stacked, self.name)
        pairs = stacked.pairs
        if pairs.embeddings is None:
            raise ConfigError("prerank reads the recall embeddings: the pairs carry none")
        cfg = self.config
        cfg.validate()
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        self.channel_features_ = channel_features(pairs) if cfg.use_channels else ()
        # Standardise the scalars with train statistics, so their scale matches the vectors'.
        raw = self._raw_scalars(pairs)
        self.scalar_mean_ = raw.mean(0).tolist()
        self.scalar_std_ = (raw.std(0) + 1e-6).tolist()
        self.dim_ = int(pairs.embeddings.users.shape[1])
        self.device_ = torch.device(device or (data.device if data is not None else "cpu"))
        self.model_ = PreRankMLP(self.dim_, cfg.hidden, len(self.scalars)).to(self.device_)
        # While the MLP trains, valid (early stopping) sees its own order: w = 0.
        self.prior_weight_, self.logit_scale_ = 0.0, 1.0
        self.prior_choice_: dict[str, Any] | None = None
        # The whole training set moves once; batches are index tensors into it.
        user_t, item_t, scalar_t, rows_t, pos_t, labels_t = to_device(
            (
                torch.from_numpy(pairs.embeddings.users).float(),
                torch.from_numpy(pairs.embeddings.items).float(),
                torch.from_numpy(self._standardise(raw)),
                torch.from_numpy(pairs.rows),
                torch.from_numpy(pairs.items),
                torch.from_numpy(np.asarray(pairs.labels, dtype=np.float32)),
            ),
            self.device_,
        )

        def batches(epoch: int) -> Iterator[torch.Tensor]:
            order = to_device(torch.from_numpy(rng.permutation(len(labels_t))), self.device_)
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
            progress=data.progress if data is not None else False,
            description="pre-rank",
        )
        self._choose_prior_weight(
            stacked,
            choose or validate,
            self.config.prior_metric if choose is not None else self.config.valid_metric,
        )
        self._fitted()
        return self

    def _choose_prior_weight(
        self, stacked: Stacked, validate: Validate | None, metric: str
    ) -> None:
        """Set `prior_weight_`, the config's or, when it is none, the grid weight chosen by
        the valid `metric`: inf, recall's order, unless the best weight beats it clearly
        (`blend.choose_weight` with anchor inf: with per-user results, by 3 standard errors
        of the paired difference; what was tried goes to `prior_choice_`),
        and `logit_scale_`, the logits' spread on the training candidates (measured only
        when a blend may use it: the cross-fitted models keep w = 0 and score nothing
        more)."""
        weight = self.config.prior_weight
        choose = weight is None and validate is not None
        if choose or weight:
            logits = self.score_pairs(stacked.requests, stacked.pairs).scores[self.name]
            self.logit_scale_ = logit_scale(logits)
        if choose:
            assert validate is not None

            def at(w: float) -> float:
                self.prior_weight_ = w
                return validate(self)

            weight, grid = choose_weight(at, anchor=math.inf)
            self.prior_choice_ = {
                "weight": weight_label(weight),
                "best_mean": max(grid, key=grid.__getitem__),  # the first best: the smallest
                "kept_unless_clearly_beaten": "inf",
                "move_z": MOVE_Z,
                "metric": metric,
                "holdout": "valid, warm users",
                "grid": grid,
                "logit_scale": self.logit_scale_,
            }
        self.prior_weight_ = float(weight) if weight is not None else 0.0

    def score_pairs(self, requests: Requests, pairs: Pairs, batch_size: int = 1 << 20) -> Pairs:
        """scores["prerank"] (n,): the logit of each pair, `batch_size` pairs at a time (the
        inputs are ~1 KB a pair: 6 M candidates of ML-20M's valid users would need ~20 GB at
        once; ML-1M's lists fit in one batch)."""
        self.check_fitted()
        emb = pairs.embeddings
        if emb is None:
            raise ConfigError("prerank reads the recall embeddings: the pairs carry none")
        scalars = self._raw_scalars(pairs)
        logits = np.empty(len(pairs.rows), dtype=np.float64)
        with torch.no_grad():
            for start in range(0, len(logits), batch_size):
                part = slice(start, start + batch_size)
                inputs = (
                    torch.from_numpy(emb.users[pairs.rows[part]]).float(),
                    torch.from_numpy(emb.items[pairs.items[part]]).float(),
                    torch.from_numpy(self._standardise(scalars[part])),
                )
                logits[part] = to_numpy(self.model_(*to_device(inputs, self.device_)))
        return pairs.with_scores(self.name, logits)

    def select(self, candidates: Candidates, *, keep: int | None = None, **_: Any) -> Candidates:
        """The best `keep` (default config.keep) of each list by the pre-rank logit blended
        with the incoming order (`blend.blend_key`; w = 0: by the logit alone)."""
        key = blend_key(candidates.scores[self.name], self.prior_weight_, self.logit_scale_)
        return candidates.top_by(key, keep or self.config.keep)

    def serving_kernel(self) -> PreRankKernel:
        """The one-request fast path (`prerank.fast`)."""
        from recfunnel.prerank.fast import PreRankKernel

        return PreRankKernel(self)

    def _raw_scalars(self, pairs: Pairs) -> np.ndarray:
        if not self.scalars:
            return np.zeros((len(pairs.rows), 0))
        return np.stack([np.asarray(pairs.scores[name], np.float64) for name in self.scalars], 1)

    def _standardise(self, raw: np.ndarray) -> np.ndarray:
        mean, std = np.asarray(self.scalar_mean_), np.asarray(self.scalar_std_)
        return ((raw - mean) / std).astype(np.float32)

    def _save(self, directory: Path) -> None:
        torch.save(cpu_state(self.model_), directory / "model.pt")
        state = {
            "mean": self.scalar_mean_,
            "std": self.scalar_std_,
            "dim": self.dim_,
            "channel_features": list(self.channel_features_),
            "prior_weight": weight_to_json(self.prior_weight_),
            "logit_scale": self.logit_scale_,
        }
        (directory / "state.json").write_text(json.dumps(state, indent=2))
        (directory / "train_log.json").write_text(json.dumps(self.log_.to_dict(), indent=2))

    def _load(self, directory: Path, data: FitData) -> None:
        path = directory / "state.json"
        state = read_json(path)
        require_keys(state, path, mean=list, std=list, dim=int, channel_features=list)
        self.channel_features_ = tuple(str(name) for name in state["channel_features"])
        n = len(self.scalars)
        if len(state["mean"]) != n or len(state["std"]) != n or state["dim"] <= 0:
            raise RunFileError(f"{path}: expected {n} means and stds and a positive dim")
        self.scalar_mean_, self.scalar_std_ = state["mean"], state["std"]
        self.dim_ = state["dim"]
        # A run saved before the blend existed kept the best by the logit alone: w = 0.
        self.prior_weight_, self.logit_scale_ = 0.0, 1.0
        if "prior_weight" in state:
            require_keys(state, path, logit_scale=(int, float))
            weight = weight_from_json(state["prior_weight"])
            if weight is None or not state["logit_scale"] > 0:
                raise RunFileError(
                    f'{path}: expected a prior_weight >= 0 (or "inf") and a positive logit_scale'
                )
            self.prior_weight_, self.logit_scale_ = weight, float(state["logit_scale"])
        self.model_ = PreRankMLP(self.dim_, self.config.hidden, n)
        load_weights(
            self.model_, directory / "model.pt", built_from=(path, directory / "config.json")
        )
        self.device_ = torch.device(data.device)
        self.model_.to(self.device_)  # loaded on the CPU (map_location), then moved
        self.log_ = TrainLog.read(directory / "train_log.json")
