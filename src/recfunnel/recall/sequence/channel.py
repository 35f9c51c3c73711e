"""The sequence recall channel: config, training, serving, and save/load.

Each user's train ratings (the liked ones, or all of them), ordered by (timestamp, movie id),
form one item sequence; a SASRec or BERT4Rec encoder (`model.py`) learns to predict the next
item from the ones before it, with a full softmax over the catalogue at every position (no
sampled negatives: on a 3.7k-movie catalogue the exact loss is affordable on a CPU, and it is
the variant recent reproductions find strongest). Serving reads the request's history in time
order and scores every catalogue position with the logits of the next item; the known items
are removed by `CatalogueChannel`. scores["sequence"] is that logit.

The token vocabulary is the catalogue itself (token = position + 1, 0 = padding), so there is
no id mapping to save: a movie that has no train rating keeps its initial embedding and, being
a negative at every position, a low bias.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from recfunnel.artifacts import RunFileError, load_array, load_weights
from recfunnel.config import param, require_positive
from recfunnel.data.schema import ITEM, LIKE_THRESHOLD, RATING, TIME, USER
from recfunnel.device import cpu_state, to_device, to_numpy
from recfunnel.errors import ConfigError
from recfunnel.evaluation.protocol import metric_cutoff
from recfunnel.recall.channel import CatalogueChannel
from recfunnel.recall.sequence.model import PAD, SequenceEncoder
from recfunnel.stage import FitData, Stacked, Validate
from recfunnel.training import distributed
from recfunnel.training.loop import TrainLog, fit
from recfunnel.types import History, Requests


@dataclass(frozen=True)
class SequenceConfig:
    """Self-attentive next-item recall (SASRec, or BERT4Rec) and its training."""

    model: Literal["sasrec", "bert4rec"] = param(
        "sasrec",
        "sasrec: causal attention, next-item loss at every position; bert4rec: bidirectional, "
        "masked-item loss, serving appends [MASK]",
    )
    history: Literal["liked", "rated"] = param(
        "liked", "which ratings form a user's sequence (liked: rating >= 4)"
    )
    max_len: int = param(100, "most recent items a sequence keeps (and positions learned)")
    dim: int = param(64, "size of the item and position embeddings")
    blocks: int = param(2, "transformer blocks")
    heads: int = param(1, "attention heads (dim must be a multiple)")
    ffn_dim: int = param(256, "hidden size of each block's feed-forward layer")
    norm: Literal["pre", "post"] = param(
        "pre", "pre-LN (stable without warm-up) or post-LN (the original layout) blocks"
    )
    dropout: float = param(0.2, "dropout on embeddings, attention and feed-forward outputs")
    mask_prob: float = param(0.2, "bert4rec: share of the items replaced by [MASK] in training")
    batch_size: int = param(128, "sequences per batch")
    epochs: int = param(4, "maximum epochs (early stopping on valid may end sooner)")
    patience: int = param(2, "epochs without valid improvement before stopping")
    lr: float = param(2e-3, "Adam learning rate")
    weight_decay: float = param(0.0, "Adam weight decay")
    lr_schedule: Literal["constant", "cosine"] = param(
        "cosine", "learning rate: constant, or cosine decay to 0 over the epochs"
    )
    valid_metric: str = param("recall@200", "valid metric (warm users) for early stopping")
    seed: int = param(0, "seed for weights, batches, dropout and masks")
    threads: int = param(2, "torch CPU threads")

    def validate(self) -> None:
        require_positive(
            max_len=self.max_len,
            dim=self.dim,
            blocks=self.blocks,
            heads=self.heads,
            ffn_dim=self.ffn_dim,
            batch_size=self.batch_size,
            epochs=self.epochs,
            patience=self.patience,
            threads=self.threads,
        )
        if self.model not in ("sasrec", "bert4rec"):
            raise ConfigError(f"model must be 'sasrec' or 'bert4rec', got {self.model!r}")
        if self.history not in ("liked", "rated"):
            raise ConfigError(f"history must be 'liked' or 'rated', got {self.history!r}")
        if self.norm not in ("pre", "post"):
            raise ConfigError(f"norm must be 'pre' or 'post', got {self.norm!r}")
        if self.dim % self.heads:
            raise ConfigError(f"dim {self.dim} must be a multiple of heads {self.heads}")
        if self.model == "bert4rec" and self.max_len < 2:
            raise ConfigError("bert4rec needs max_len >= 2 (the history and [MASK])")
        if not 0 <= self.dropout < 1 or not 0 < self.mask_prob < 1:
            raise ConfigError("dropout must be in [0, 1) and mask_prob in (0, 1)")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError("lr must be > 0 and weight_decay >= 0")
        metric_cutoff(self.valid_metric, "valid_metric")


class SequenceChannel(CatalogueChannel):
    """Train and serve the sequence model. Learned attributes end with `_`."""

    name = "sequence"
    config_class = SequenceConfig
    fitted_attribute = "model_"
    serve_batch = 256  # users encoded at once when scoring

    # ------------------------------------------------------------------ training
    def fit(
        self, data: FitData, stacked: Stacked | None = None, validate: Validate | None = None
    ) -> SequenceChannel:
        """Train on data.split.train; early-stop on the valid metric of warm valid users."""
        cfg = self.config
        cfg.validate()
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        self.item_ids_ = np.asarray(data.item_ids, dtype=np.int64)
        self.device_ = torch.device(data.device)
        self.model_ = self._build_model().to(self.device_)

        items, starts = self._train_sequences(data.split.train)
        # sasrec: max_len + 1 items give max_len (input, next) pairs; the next window starts
        # on this one's first item, so every item after a run's first is a target once.
        sasrec = cfg.model == "sasrec"
        windows = training_windows(starts, cfg.max_len + sasrec, step=cfg.max_len)
        n_batches = math.ceil(len(windows) / cfg.batch_size)

        def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            # Every process draws the same batches (and masks); under torchrun each keeps
            # its rows of every batch.
            drawn = (
                self._batch(items, windows[rows], rng)
                for rows in bucketed_batches(windows[:, 1] - windows[:, 0], cfg.batch_size, rng)
            )
            for batch in distributed.sharded(drawn, _rows, lambda batch: len(batch[0])):
                yield to_device(batch, self.device_)

        validate_ = self.valid_metric(data, cfg.valid_metric)

        self.log_: TrainLog = fit(
            self.model_,
            batches,
            self._loss,
            validate_,
            epochs=cfg.epochs,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            patience=cfg.patience,
            schedule=cfg.lr_schedule,
            metric_name=cfg.valid_metric,
            steps_per_epoch=max(n_batches, 1),
            progress=data.progress,
            description=f"recall ({cfg.model})",
            sharded=True,
        )
        self._fitted()
        return self

    def _build_model(self) -> SequenceEncoder:
        cfg = self.config
        return SequenceEncoder(
            len(self.item_ids_),
            max_len=cfg.max_len,
            dim=cfg.dim,
            blocks=cfg.blocks,
            heads=cfg.heads,
            ffn_dim=cfg.ffn_dim,
            dropout=cfg.dropout,
            causal=cfg.model == "sasrec",
            norm_first=cfg.norm == "pre",
        )

    def _train_sequences(self, train: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(items (n,) catalogue positions of every kept rating, user by user in time order,
        starts (n_users + 1,) offsets of each user's run)."""
        if self.config.history == "liked":
            train = train[train[RATING] >= LIKE_THRESHOLD]
        raw = train[ITEM].to_numpy()
        cols = np.minimum(np.searchsorted(self.item_ids_, raw), len(self.item_ids_) - 1)
        keep = self.item_ids_[cols] == raw  # ratings of movies outside the catalogue: none
        users = train[USER].to_numpy()[keep]
        user_rows = np.unique(users, return_inverse=True)[1]
        return ordered_runs(user_rows, cols[keep], train[TIME].to_numpy()[keep])

    def _batch(
        self, items: np.ndarray, windows: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (B, T), targets (B, T)) of some windows; a target is a catalogue position,
        -1 where no loss is taken (padding; for bert4rec, every unmasked item)."""
        begin, end = windows[:, 0], windows[:, 1]
        if self.config.model == "sasrec":
            # Input items [begin, end - 1) predict their successors [begin + 1, end).
            tokens = left_padded(items, begin, end - 1)
            targets = left_padded(items, begin + 1, end) - 1
            return torch.from_numpy(tokens), torch.from_numpy(targets)
        tokens = left_padded(items, begin, end)
        real = tokens != PAD
        masked = real & (rng.random(tokens.shape) < self.config.mask_prob)
        # Every window predicts at least one item: its last when the draw masked none.
        none = ~masked.any(axis=1)
        masked[none, -1] = True
        targets = np.where(masked, tokens - 1, -1)
        tokens = np.where(masked, self.model_.mask_token, tokens)
        return torch.from_numpy(tokens), torch.from_numpy(targets)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over the catalogue at every target position of the batch."""
        tokens, targets = batch
        hidden = self.model_(tokens)  # (B, T, d)
        at = targets >= 0
        # Only the P target positions go through the (P, n_items) output layer.
        return F.cross_entropy(self.model_.logits(hidden[at]), targets[at])

    # ------------------------------------------------------------------ serving
    def score(self, user_ids: np.ndarray, history: History) -> np.ndarray:
        """(n_users, n_items) float64 next-item logits given each user's history; a user with
        no history of the configured kind gets the learned item bias (a popularity prior)."""
        self.check_fitted()
        items, starts = self._history_sequences(history)
        n = len(history)
        bias = to_numpy(self.model_.bias).astype(np.float64)
        out = np.broadcast_to(bias, (n, len(bias))).copy()
        width = self.config.max_len - (self.config.model == "bert4rec")
        end = starts[1:]
        begin = np.maximum(starts[:-1], end - width)
        rows = np.flatnonzero(end > begin)
        with torch.no_grad():
            for chunk in np.array_split(rows, math.ceil(len(rows) / self.serve_batch) or 1):
                if not len(chunk):
                    continue
                tokens = left_padded(items, begin[chunk], end[chunk])
                if self.model_.mask_token is not None:  # bert4rec: predict the [MASK] after
                    mask = np.full((len(chunk), 1), self.model_.mask_token)
                    tokens = np.hstack([tokens, mask])
                logits = self.model_.next_item_logits(torch.from_numpy(tokens).to(self.device_))
                out[chunk] = to_numpy(logits)
        return out

    def catalogue_scores(self, requests: Requests) -> np.ndarray:
        return self.score(requests.user_ids, requests.history)

    def _history_sequences(self, history: History) -> tuple[np.ndarray, np.ndarray]:
        """The history's entries of the configured kind as runs in time order: (items (n,)
        catalogue positions, starts (B + 1,))."""
        ratings, times = history.ratings.tocoo(), history.timestamps.tocoo()
        if not (np.array_equal(ratings.row, times.row) and np.array_equal(ratings.col, times.col)):
            raise ConfigError("history ratings and timestamps must share one sparsity pattern")
        liked_only = self.config.history == "liked"
        keep = ratings.data >= LIKE_THRESHOLD if liked_only else ratings.data > 0
        return ordered_runs(
            ratings.row[keep], ratings.col[keep], times.data[keep], n_rows=len(history)
        )

    # ------------------------------------------------------------------ persistence
    def _save(self, directory: Path) -> None:
        """Catalogue ids, weights (state dict) and the training log."""
        np.save(directory / "catalogue.npy", self.item_ids_)
        torch.save(cpu_state(self.model_), directory / "model.pt")
        (directory / "train_log.json").write_text(json.dumps(self.log_.to_dict(), indent=2))

    def _load(self, directory: Path, data: FitData) -> None:
        """Weights load with weights_only=True (no pickle)."""
        self.item_ids_ = load_array(directory / "catalogue.npy", shape=(None,), kind="i")
        if not np.array_equal(self.item_ids_, data.item_ids):
            raise RunFileError(f"{directory / 'catalogue.npy'} is not this data's catalogue")
        torch.set_num_threads(self.config.threads)
        self.model_ = self._build_model()
        load_weights(self.model_, directory / "model.pt", built_from=(directory / "config.json",))
        self.device_ = torch.device(data.device)
        self.model_.to(self.device_)  # loaded on the CPU (map_location), then moved
        self.log_ = TrainLog.read(directory / "train_log.json")


def _rows(
    batch: tuple[torch.Tensor, torch.Tensor], part: slice
) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows `part` of a (tokens, targets) batch: a process's shard under torchrun."""
    return batch[0][part], batch[1][part]


# ---------------------------------------------------------------------- sequence helpers
def ordered_runs(
    rows: np.ndarray, cols: np.ndarray, times: np.ndarray, n_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Events (row, col, time) -> (cols (n,) sorted by (row, time, col), starts (n_rows + 1,)
    offsets of each row's run). Ties in time go to the smaller column, so it is deterministic."""
    order = np.lexsort((cols, times, rows))
    rows, cols = rows[order], cols[order]
    n_rows = int(rows.max()) + 1 if n_rows is None and len(rows) else n_rows or 0
    starts = np.searchsorted(rows, np.arange(n_rows + 1), side="left")
    return cols.astype(np.int64), starts.astype(np.int64)


def training_windows(starts: np.ndarray, width: int, step: int) -> np.ndarray:
    """(n_windows, 2) [begin, end) ranges of <= `width` items, one every `step` items back
    from each run's end (so the last window holds the most recent items). Runs of fewer
    than 2 items predict nothing and give no window."""
    out = []
    for begin, end in zip(starts[:-1], starts[1:], strict=True):
        b = end
        while b - begin >= 2:
            out.append((max(begin, b - width), b))
            b -= step
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def bucketed_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, pool: int = 32
) -> Iterator[np.ndarray]:
    """Row indices of batches over all windows, in random order, of similar lengths: rows
    are shuffled, sorted by length within pools of `pool` batches, cut into batches, and the
    batches shuffled, so little compute goes to padding and every epoch differs."""
    order = rng.permutation(len(lengths))
    size = batch_size * pool
    batches = []
    for start in range(0, len(order), size):
        group = order[start : start + size]
        group = group[np.argsort(lengths[group], kind="stable")]
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    for i in rng.permutation(len(batches)):
        yield batches[i]


def left_padded(items: np.ndarray, begin: np.ndarray, end: np.ndarray) -> np.ndarray:
    """(B, T) int64 tokens of items[begin[b]:end[b]] (token = position + 1), right-aligned,
    0 on the left; T = the longest range (at least 1)."""
    lengths = end - begin
    width = max(int(lengths.max()) if len(lengths) else 0, 1)
    out = np.zeros((len(begin), width), dtype=np.int64)
    row = np.repeat(np.arange(len(begin)), lengths)
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[row, width - np.repeat(lengths, lengths) + within] = (
        items[np.repeat(begin, lengths) + within] + 1
    )
    return out
