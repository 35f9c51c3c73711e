"""The rank stage: config, training and serving of the deep CTR model (`rank.model`)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize, minimize_scalar

from recfunnel.artifacts import RunFileError, load_weights, read_json, require_keys
from recfunnel.blend import (
    GRID,
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
from recfunnel.kernel import Kernel
from recfunnel.rank.features import DENSE, SCORE_OF, RankFeatureSpace, RequestFeatures
from recfunnel.rank.model import RankModel, RankSizes
from recfunnel.stage import FitData, Scorer, Stacked, Validate, require_stacked
from recfunnel.training import distributed
from recfunnel.training.loop import TrainLog, fit
from recfunnel.types import Candidates, Pairs, Requests, channel_features


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
    deep: tuple[int, ...] = param(
        (128, 64),
        "hidden sizes of the deep (MLP) part. (128, 64) with attention_hidden 16 replaced "
        "(256, 128) with 32: the lists tie on valid and the backtest, and the fast path is "
        "~10 % quicker (README, 'A slimmer rank model')",
    )
    cross_layers: int = param(2, "DCN-v2 cross layers (0: no explicit crosses)")
    cross_rank: int | None = param(
        32,
        "rank r of DCN-v2's low-rank cross layers, W = U V^T (2 r width multiply-adds a pair "
        "instead of width^2; none: full-rank). 32 was chosen on valid over none, 64 and 16 "
        "(three seeds each; README, 'Low-rank crosses')",
        saved_without=None,  # runs saved before the field were trained full-rank
    )
    attention_hidden: int = param(16, "hidden size of DIN's attention unit (see deep)")
    use_din: bool = param(
        True, "read the liked-items sequence, through rank.interest (false: no sequence field)"
    )
    interest: Literal["din", "dien"] = param(
        "din",
        "how the sequence is read: din, target attention pooling; dien, a GRU in time order "
        "with an auxiliary next-item loss, then an attention-gated GRU (AUGRU)",
    )
    aux_loss_weight: float = param(
        1.0, "weight of DIEN's auxiliary next-behaviour loss in the training loss (0: none)"
    )
    max_sequence: int = param(50, "most recent liked items in the behaviour sequence")
    use_user_id: bool = param(False, "a user-id embedding (memorises the training period)")
    use_recall_logit: bool = param(True, "read the recall logit")
    use_prerank_logit: bool = param(True, "read the (cross-fitted) pre-rank logit")
    use_cf: bool = param(True, "read the item-to-item (EASE, fitted on the early part) score")
    use_rating: bool = param(
        True,
        "read the item-to-item component's predicted stars (item_to_item.rating_dim), the "
        "like head's view of this user's taste for this movie",
        saved_without=False,  # runs saved before the rating score did not read it
    )
    use_channels: bool = param(
        True, "read the recall channels' scores and reciprocal ranks (recall.<channel>[.rrf])"
    )
    like_stopping: bool = param(
        True,
        "stop training the like head (its loss weight drops to 0) after the first epoch whose "
        "valid LogLoss on valid's rated pairs is no better than the best so far; the watch "
        "head trains on, early-stopped by valid_metric. One early-stopping point cannot serve "
        "both heads: the list gains for epochs over which the like head over-fits",
        saved_without=False,  # runs saved before the field trained the like head throughout
    )
    calibrate: bool = param(
        True,
        "calibrate the like head's logit on valid's rated pairs (lowest LogLoss; see "
        "calibration): rank.like and rank.prob become calibrated probabilities; the ranking "
        "score, and so every list, stays the trained one",
    )
    calibration: Literal["platt", "temperature"] = param(
        "platt",
        "platt: logit / T + b, a scale and a shift (Platt 1999): the head's mean can be off "
        "too, which no temperature fixes; temperature: logit / T alone (Guo et al. 2017)",
        saved_without="temperature",  # runs saved before the field scaled by T alone
    )
    prior_weight: float = param(
        1.0,
        "blend of the model's order with the order it is handed (pre-rank's): the list is "
        "sorted by score / spread + w x (-log(1 + position)), recfunnel.blend; 0: the model's "
        "order alone. 1 was chosen on the backtest, where the model alone loses to recall's "
        "fusion (README, 'Rank, blended with the order it is handed')",
        saved_without=0.0,  # runs saved before the field sorted by the model alone
    )
    prior_raise: bool = param(
        True,
        "after training, valid's warm users may raise prior_weight (w > 0) to a larger "
        "weight of 2, 4, inf (inf: the incoming order), one that beats it by 3 standard "
        "errors of the paired per-user difference in valid_metric (NDCG@20): a safeguard "
        "for data where the model hurts the list it is handed. Never lowered: valid's 27 "
        "days prefer the model's own order, the test-like backtest does not (README)",
        saved_without=False,  # runs saved before the field kept prior_weight as configured
    )
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
        if self.cross_rank is not None and self.cross_rank < 1:
            raise ConfigError(f"rank.cross_rank must be >= 1 (or none), got {self.cross_rank}")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.dropout < 1:
            raise ConfigError("rank.lr must be > 0, weight_decay >= 0, 0 <= dropout < 1")
        if not self.use_din and self.interest != "din":
            raise ConfigError(
                f"rank.interest={self.interest} reads the sequence, but rank.use_din=false "
                "turns the sequence field off; drop one of the two"
            )
        if not (0 <= self.prior_weight < math.inf):
            raise ConfigError(
                f"rank.prior_weight must be a finite number >= 0, got {self.prior_weight}"
            )
        if not (self.aux_loss_weight >= 0 and math.isfinite(self.aux_loss_weight)):
            raise ConfigError(f"rank.aux_loss_weight must be >= 0, got {self.aux_loss_weight}")
        metric_cutoff(self.valid_metric, "rank.valid_metric")

    @property
    def dense(self) -> tuple[str, ...]:
        skip = {"recall"} if not self.use_recall_logit else set()
        skip |= {"prerank"} if not self.use_prerank_logit else set()
        skip |= {"cf"} if not self.use_cf else set()
        skip |= {"rating"} if not self.use_rating else set()
        return tuple(name for name in DENSE if name not in skip)


class RankStage(Scorer):
    """Train and serve the rank model. Learned attributes end with `_`.

    It scores every candidate (scores["rank"]; scores["rank.like"] is its P(liked | rated)
    logit, the classic CTR quantity) and re-sorts the list by the ranking score. With
    rank.prior_weight w > 0 a list's scores["rank"] is the model's score blended with the
    incoming order (`recfunnel.blend`; `logit_scale_`, its spread on the training
    candidates), the key the list is sorted by and the re-ranker's relevance; a pair's score
    (`score_pairs`) is the model's own.
    """

    name = "rank"
    carried = ("rank.prob",)  # the re-ranker's calibrated relevance
    config_class = RankConfig
    fitted_attribute = "model_"

    def fit(
        self,
        data: FitData,
        stacked: Stacked | None = None,
        validate: Validate | None = None,
        *,
        like_holdout: tuple[Requests, Pairs] | None = None,
    ) -> RankStage:
        """Train on the stacked examples, whose pairs carry the recall, (cross-fitted)
        pre-rank and item-to-item scores. The causal feature tables are fitted on
        data.split.train; `validate(stage)` early-stops on the funnel's valid metric.
        `like_holdout` (requests, labelled rated pairs scored by the earlier stages: valid's)
        gives the like head's LogLoss after every validated epoch, logged, and with
        rank.like_stopping the epoch after which the like head stops learning."""
        stacked = require_stacked(stacked, self.name)
        requests, examples = stacked.requests, stacked.pairs
        cfg = self.config
        cfg.validate()
        read = [SCORE_OF[name] for name in cfg.dense if name in SCORE_OF]
        if missing := [score for score in read if score not in examples.scores]:
            raise ConfigError(
                f"the rank model reads {missing}, which no earlier component scored "
                "(rank.use_rating=true needs item_to_item.rating_dim)"
            )
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        self.features_ = self._feature_space(data)
        self.channel_features_ = channel_features(examples) if cfg.use_channels else ()
        self.device_ = torch.device(data.device)
        self.model_ = self._build_model().to(self.device_)
        self.temperature_ = 1.0  # until `calibrate` chooses one
        self.bias_ = 0.0  # Platt's shift, added after the temperature (0: none)
        self.logit_scale_ = 1.0  # measured on the training candidates (rank.prior_weight)
        self.prior_weight_ = cfg.prior_weight  # until `raise_prior` raises it
        # The spread of the ranking score is measured on a seeded sample of the training
        # candidates (its std to ~0.5 %), after every epoch (the list validated then is
        # blended with it) and once more for the best epoch's weights.
        # A generator of its own, so the batches are those of a run without the blend.
        on_candidates = np.flatnonzero(examples.candidate)
        picked = np.random.default_rng([cfg.seed, 1]).choice(
            on_candidates, min(len(on_candidates), 1 << 15), replace=False
        )
        spread_sample = examples.subset(np.sort(picked))
        if cfg.objective == "like":
            # Rated pairs that recall missed would teach "low recall logit => liked", the
            # opposite of what holds among candidates, so the one-head model sees candidates.
            examples = examples.subset(examples.candidate)
        req = self.features_.requests(requests)
        table = self._pair_table(req, examples)
        # Standardise dense inputs with the training pairs' statistics (kept for serving).
        self.dense_stats_ = {
            name: (float(table[name].mean()), float(table[name].std() + 1e-6))
            for name in self.dense_
        }
        labels = torch.from_numpy(examples.labels)
        rated = torch.from_numpy(examples.rated)
        watch_like = cfg.objective == "watch_like"
        like_weight = 1.0  # 0 once the like head has stopped (rank.like_stopping)
        like_losses: list[float] = []  # the like head's valid LogLoss after each epoch
        self.like_stopped_after_: int | None = None
        candidate = torch.from_numpy(examples.candidate)

        def batches(epoch: int) -> Iterator[torch.Tensor]:
            order = torch.from_numpy(rng.permutation(len(examples)))
            # Under torchrun each process keeps its rows of every (identically drawn) batch.
            global_batches = (
                order[start : start + cfg.batch_size]
                for start in range(0, len(order), cfg.batch_size)
            )
            yield from distributed.sharded(global_batches, lambda idx, part: idx[part])

        def loss(idx: torch.Tensor) -> torch.Tensor:
            # idx stays on the CPU: it indexes the numpy feature tables.
            logits, aux = self.model_.logits_and_aux(
                to_device(self._batch(table, req, idx.numpy()), self.device_),
                aux=cfg.aux_loss_weight > 0,
            )
            # DIEN's next-behaviour loss (0 for DIN) trains the interest extractor GRU.
            return heads_loss(idx, logits) + cfg.aux_loss_weight * aux

        def heads_loss(idx: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
            batch_labels = to_device(labels[idx], logits.device)
            if cfg.objective == "like":
                return F.binary_cross_entropy_with_logits(logits[:, 0], batch_labels)
            # watch head: every candidate, label "rated"; like head: rated pairs, label liked.
            cand, was_rated = to_device((candidate[idx], rated[idx]), logits.device)
            watch = F.binary_cross_entropy_with_logits(
                logits[cand, 0], was_rated[cand].float(), reduction="sum"
            ) / max(int(cand.sum()), 1)
            if like_weight == 0.0:
                return watch
            like = F.binary_cross_entropy_with_logits(
                logits[was_rated, 1], batch_labels[was_rated], reduction="sum"
            ) / max(int(was_rated.sum()), 1)
            return watch + like_weight * like

        def epoch_end() -> float:
            nonlocal like_weight
            assert validate is not None  # only passed to `fit` with a valid metric
            self._measure_spread(requests, spread_sample)
            metric = validate(self)
            if like_holdout is not None and watch_like:
                # Every process computes it; rank 0's decides, as for the valid metric.
                value = distributed.broadcast_float(self.like_log_loss(*like_holdout))
                worse = bool(like_losses) and value >= min(like_losses)
                if cfg.like_stopping and like_weight > 0 and worse:
                    like_weight, self.like_stopped_after_ = 0.0, len(like_losses) + 1
                like_losses.append(value)
            return metric

        self.log_: TrainLog = fit(
            self.model_,
            batches,
            loss,
            epoch_end if validate is not None else None,
            epochs=cfg.epochs,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            patience=cfg.patience,
            schedule="cosine",
            metric_name=cfg.valid_metric,
            steps_per_epoch=-(-len(examples) // cfg.batch_size),
            progress=data.progress,
            description="rank",
            sharded=True,
        )
        for entry, value in zip(self.log_.epochs, like_losses, strict=False):
            entry["like_logloss"] = value
        self._measure_spread(requests, spread_sample)
        self._fitted()
        return self

    def raise_prior(self, validate: Validate) -> dict[str, Any] | None:
        """Set `prior_weight_`: rank.prior_weight w, or a larger weight of the blend grid
        (`blend.GRID` above w, up to inf, the incoming order) that beats it on the holdout
        by 3 standard errors of the paired per-user difference (`blend.choose_weight` with
        anchor w). `validate(stage)` gives the holdout's per-user metric of the list (n,).
        None (nothing tried) with rank.prior_raise off or w = 0 (the model's own order, as
        configured, has no spread to blend with). Returns what was tried, for the manifest.

        Why only upwards: the model learns from a few hundred replayed requests, and on
        data where its order hurts the list it is handed (ML-1M's per-user split: valid
        NDCG@20 0.1198 at w = 1, 0.1229 at inf) the list should fall back to its input. On
        ML-1M's global split valid prefers a lower w, but there the backtest and test
        prefer w = 1 (README, "Rank, blended with the order it is handed"), so valid may
        not lower it."""
        self.check_fitted()
        weight = self.config.prior_weight
        if not (self.config.prior_raise and weight > 0):
            return None
        grid = (weight, *(w for w in GRID if w > weight))

        def at(w: float) -> Any:
            self.prior_weight_ = w
            return validate(self)

        chosen, means = choose_weight(at, grid, anchor=weight)
        self.prior_weight_ = chosen
        self.forget_kernel()  # a serving kernel reads the weight when it is built
        return {
            "weight": weight_label(chosen),
            "configured": weight_label(weight),
            "best_mean": max(means, key=means.__getitem__),
            "move_z": MOVE_Z,
            "grid": means,
        }

    def _measure_spread(self, requests: Requests, sample: Pairs) -> None:
        """Set `logit_scale_`, the std of the ranking score on `sample` (training
        candidates), which `select` divides the score by before the blend."""
        if self.config.prior_weight > 0 and len(sample):
            self.logit_scale_ = logit_scale(self.score_pairs(requests, sample).scores[self.name])

    def like_log_loss(self, requests: Requests, pairs: Pairs) -> float:
        """The like head's LogLoss (at the current temperature) on labelled rated pairs."""
        if pairs.labels is None or not len(pairs.rows):
            raise ConfigError("the like head's LogLoss needs labelled rated pairs")
        logits = self.score_pairs(requests, pairs).scores[f"{self.name}.like"]
        return _log_loss(logits, np.asarray(pairs.labels, dtype=np.float64))

    def calibrate(self, requests: Requests, pairs: Pairs) -> dict[str, Any]:
        """Calibrate the like head on labelled rated `pairs` (valid's): sigmoid(logit / T + b)
        with the T (and, for rank.calibration = platt, the b) of the lowest LogLoss. A
        monotone map of the logit, fitted after training, so it moves probabilities and never
        the order of a list. Why the shift: the head learns from the replayed slice, whose
        like share and features are not those of later requests, so its mean probability can
        be off on a later holdout (ML-1M, seed 0: 0.608 on valid's rated pairs, liked 0.533),
        and a temperature only sharpens or flattens around 0.5."""
        self.check_fitted()
        if pairs.labels is None or not len(pairs.rows):
            raise ConfigError("rank.calibrate needs labelled rated pairs")
        self.temperature_, self.bias_ = 1.0, 0.0
        logits = self.score_pairs(requests, pairs).scores[f"{self.name}.like"]
        labels = np.asarray(pairs.labels, dtype=np.float64)

        def log_loss(log_t: float, bias: float = 0.0) -> float:
            return _log_loss(logits / np.exp(log_t) + bias, labels)

        if self.config.calibration == "temperature":
            best = minimize_scalar(log_loss, bounds=(-3.0, 3.0), method="bounded")
            log_t, bias, after = float(best.x), 0.0, float(best.fun)
        else:  # a logistic regression on the logit alone (convex in 1 / T and b)
            fit = minimize(
                lambda x: log_loss(x[0], x[1]),
                np.zeros(2),
                method="L-BFGS-B",
                bounds=[(-3.0, 3.0), (-10.0, 10.0)],
            )
            (log_t, bias), after = (float(v) for v in fit.x), float(fit.fun)
        self.temperature_, self.bias_ = float(np.exp(log_t)), bias
        return {
            "method": self.config.calibration,
            "temperature": self.temperature_,
            "bias": self.bias_,
            "pairs": float(len(labels)),
            "logloss_before": log_loss(0.0),
            "logloss_after": after,
        }

    @property
    def dense_(self) -> tuple[str, ...]:
        """The dense inputs: the configured ones, then the channel features of the fit."""
        return self.config.dense + self.channel_features_

    def _feature_space(self, data: FitData) -> RankFeatureSpace:
        return RankFeatureSpace(
            data.ml,
            data.split.train,
            data.item_ids,
            window_days=self.config.popularity_window_days,
            max_sequence=self.config.max_sequence,
        )

    def _build_model(self) -> RankModel:
        cfg, space = self.config, self.features_.space
        return RankModel(
            RankSizes(len(space.users), len(space.items)),
            dim=cfg.dim,
            deep=cfg.deep,
            cross_layers=cfg.cross_layers,
            cross_rank=cfg.cross_rank,
            attention_hidden=cfg.attention_hidden,
            interest=cfg.interest if cfg.use_din else None,
            use_user_id=cfg.use_user_id,
            dense=self.dense_,
            dropout=cfg.dropout,
            heads=1 if cfg.objective == "like" else 2,
        )

    def _pair_table(self, req: RequestFeatures, pairs: Pairs) -> dict[str, np.ndarray]:
        table = self.features_.pairs(req, pairs.rows, pairs.items)
        table["rows"] = pairs.rows
        # The earlier stages' scores, under the model's names for its dense inputs.
        for name, score in SCORE_OF.items():
            if name in self.config.dense:
                table[name] = np.asarray(pairs.scores[score], dtype=np.float32)
        for name in self.channel_features_:
            table[name] = np.asarray(pairs.scores[name], dtype=np.float32)
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
        for name in self.dense_:
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

    def score_pairs(self, requests: Requests, pairs: Pairs, batch_size: int = 8192) -> Pairs:
        """scores["rank"] (n,), the ranking score (a logit, or log P(rated) + log P(liked |
        rated) for watch_like); scores["rank.like"] (n,), the logit of P(liked | rated),
        calibrated (/ T + b, `calibrate`), for AUC / LogLoss / ECE on rated pairs;
        scores["rank.prob"] (n,), P(liked) in [0, 1] from the calibrated like head (times
        P(rated) for watch_like): the re-ranker's probability relevance."""
        self.check_fitted()
        req = self.features_.requests(requests)
        table = self._pair_table(req, pairs)
        rank = np.empty(len(pairs.rows), dtype=np.float64)
        like = np.empty(len(pairs.rows), dtype=np.float64)
        watch = np.empty(len(pairs.rows), dtype=np.float64)  # log P(rated | candidate)
        with torch.inference_mode():
            for start in range(0, len(rank), batch_size):
                idx = np.arange(start, min(start + batch_size, len(rank)))
                logits = self.model_(to_device(self._batch(table, req, idx), self.device_))
                if self.config.objective == "like":
                    rank[idx] = like[idx] = to_numpy(logits[:, 0])
                    watch[idx] = 0.0
                else:
                    score = F.logsigmoid(logits[:, 0]) + F.logsigmoid(logits[:, 1])
                    rank[idx], like[idx] = to_numpy(score), to_numpy(logits[:, 1])
                    watch[idx] = to_numpy(F.logsigmoid(logits[:, 0]))
        like /= self.temperature_
        like += self.bias_  # (0.0 unless Platt's: x + 0.0 is x)
        # log P(liked) = log P(rated) + log sigmoid(like), with log P(rated) = 0 for "like".
        prob = np.exp(watch - np.logaddexp(0.0, -like))
        return (
            pairs.with_scores(self.name, rank)
            .with_scores(f"{self.name}.prob", prob)
            .with_scores(f"{self.name}.like", like)
        )

    def serving_kernel(self) -> Kernel:
        """The one-request fast path: numpy DIN + DCN-v2 (`rank.fast`); DIEN's GRUs keep
        the batch call."""
        if self.config.use_din and self.config.interest == "dien":
            return super().serving_kernel()
        from recfunnel.rank.fast import RankKernel

        return RankKernel(self)

    def select(self, candidates: Candidates, **_: Any) -> Candidates:
        """The whole list (B, N), re-sorted by the ranking score blended with the incoming
        order (`prior_weight_`: rank.prior_weight, or the larger weight `raise_prior` chose;
        `blend.blend_key` over the list's positions), which becomes scores["rank"]; w = 0:
        by the model's score as it is."""
        weight = self.prior_weight_
        if weight:
            key = blend_key(candidates.scores[self.name], weight, self.logit_scale_)
            candidates = candidates.with_scores(self.name, key)
        return candidates.top(self.name, candidates.items.shape[1])

    def _save(self, directory: Path) -> None:
        torch.save(cpu_state(self.model_), directory / "model.pt")
        (directory / "dense_stats.json").write_text(json.dumps(self.dense_stats_, indent=2))
        (directory / "train_log.json").write_text(json.dumps(self.log_.to_dict(), indent=2))
        calibration = {
            "temperature": self.temperature_,
            "bias": self.bias_,
            "logit_scale": self.logit_scale_,
            "prior_weight": weight_to_json(self.prior_weight_),
        }
        (directory / "calibration.json").write_text(json.dumps(calibration, indent=2))

    def _load(self, directory: Path, data: FitData) -> None:
        """The weights, and the feature tables refitted on the same train data."""
        self.features_ = self._feature_space(data)
        path = directory / "dense_stats.json"
        stats = read_json(path)
        try:
            self.dense_stats_ = {name: (float(m), float(s)) for name, (m, s) in stats.items()}
        except (TypeError, ValueError, AttributeError):
            raise RunFileError(f"{path}: expected {{name: [mean, std]}}") from None
        # The channel features the model was trained with follow the configured inputs.
        self.channel_features_ = tuple(n for n in self.dense_stats_ if n.startswith("recall."))
        if set(self.dense_stats_) != set(self.dense_):
            raise RunFileError(f"{path} does not list the dense inputs {list(self.config.dense)}")
        self.model_ = self._build_model()
        load_weights(
            self.model_, directory / "model.pt", built_from=(directory / "config.json", path)
        )
        self.device_ = torch.device(data.device)
        self.model_.to(self.device_)  # loaded on the CPU (map_location), then moved
        self.log_ = TrainLog.read(directory / "train_log.json")
        # A run saved before calibration existed has no file: its like head is uncalibrated.
        path = directory / "calibration.json"
        self.temperature_ = 1.0
        calibration = read_json(path) if path.exists() else {}
        if path.exists():
            require_keys(calibration, path, temperature=(int, float))
            if not calibration["temperature"] > 0:
                raise RunFileError(f"{path}: expected a positive temperature")
            self.temperature_ = float(calibration["temperature"])
        # Platt's shift; runs saved before it scaled by the temperature alone.
        self.bias_ = 0.0
        if "bias" in calibration:
            require_keys(calibration, path, bias=(int, float))
            if not math.isfinite(calibration["bias"]):
                raise RunFileError(f"{path}: expected a finite bias")
            self.bias_ = float(calibration["bias"])
        # The ranking score's spread, for the blend; runs saved before it sort by the model
        # alone (rank.prior_weight 0), so they never read it.
        self.logit_scale_ = 1.0
        if self.config.prior_weight > 0:
            require_keys(calibration, path, logit_scale=(int, float))
            if not calibration["logit_scale"] > 0:
                raise RunFileError(f"{path}: expected a positive logit_scale")
            self.logit_scale_ = float(calibration["logit_scale"])
        # The weight the lists are sorted with: rank.prior_weight, or the larger one
        # `raise_prior` chose (saved since then; a run saved before sorts as configured).
        self.prior_weight_ = self.config.prior_weight
        if "prior_weight" in calibration:
            weight = weight_from_json(calibration["prior_weight"])
            if weight is None or weight < self.config.prior_weight:
                raise RunFileError(
                    f'{path}: expected a prior_weight >= rank.prior_weight (or "inf")'
                )
            self.prior_weight_ = weight


def _log_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary LogLoss of logits (n,) against 0/1 labels (n,): log(1 + e^-z) for a
    positive, log(1 + e^z) for a negative, computed stably."""
    return float(np.mean(np.logaddexp(0.0, np.where(labels > 0, -logits, logits))))
