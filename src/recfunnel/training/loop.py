"""One training loop for every learned stage: epochs of mini-batches, Adam, early stopping on a
validation metric, the best weights restored at the end, and a progress bar.

A stage supplies three callables, so the loop knows nothing of towers or features:
`batches(epoch)` yields batches, `loss(batch)` returns a scalar tensor, and `validate()`
returns the metric to maximise.

Under torchrun (see `training.distributed`) a stage whose `batches` yield this process's
shard of every global batch passes `sharded=True`: the loop then wraps the model in DDP, so
each step averages the processes' gradients. Every other stage trains the same way in each
process, and a single process runs exactly the plain loop.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

# Plain tqdm, not tqdm.auto: in a notebook without ipywidgets the auto version warns on import.
from tqdm import tqdm

from recfunnel.artifacts import read_json, require_keys
from recfunnel.training import distributed


@dataclass
class TrainLog:
    """Per-epoch training curve, written to the run directory."""

    metric_name: str
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_metric: float = -math.inf
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric_name,
            "best_epoch": self.best_epoch,
            "best_metric": self.best_metric,
            "seconds": self.seconds,
            "epochs": self.epochs,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainLog:
        return cls(
            data["metric"], data["epochs"], data["best_epoch"], data["best_metric"], data["seconds"]
        )

    @classmethod
    def read(cls, path: Path) -> TrainLog:
        """The log saved as JSON at `path`; a RunFileError naming it when it is damaged."""
        data = read_json(path)
        require_keys(
            data,
            path,
            metric=str,
            epochs=list,
            best_epoch=int,
            best_metric=(int, float),
            seconds=(int, float),
        )
        return cls.from_dict(data)


def fit(
    model: nn.Module,
    batches: Callable[[int], Iterable[Any]],
    loss: Callable[[Any], torch.Tensor],
    validate: Callable[[], float] | None,
    *,
    epochs: int,
    lr: float,
    weight_decay: float = 0.0,
    patience: int = 2,
    schedule: str = "constant",
    metric_name: str = "metric",
    steps_per_epoch: int | None = None,
    progress: bool = True,
    description: str = "train",
    sharded: bool = False,
) -> TrainLog:
    """Train `model` in place; returns the curve. The weights left are the best epoch's, or
    with `validate=None` (no early stopping) the last epoch's.

    schedule: "constant" learning rate, or "cosine" decay to 0 over `epochs` (needs
    `steps_per_epoch`): large steps early, small ones at the end, so the last epoch settles
    instead of jumping around the valid optimum.

    sharded: `batches` yields this process's shard of each global batch
    (`distributed.sharded`); with several processes the loss is computed through a DDP
    wrapper, which all-reduces (averages) the gradients in `backward`. Ignored for one
    process.
    """
    world = distributed.world()
    step_loss = loss
    if sharded and world.size > 1:
        # DDP only synchronises what runs through its forward; the stages' losses call
        # several methods of their model (user_vectors, logits_and_aux, ...), so the whole
        # loss becomes the forward of a wrapper that owns the model's parameters.
        # find_unused_parameters: some losses skip parts of the model (e.g. DIEN's aux head).
        step_loss = DistributedDataParallel(_LossModule(model, loss), find_unused_parameters=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = None
    if schedule == "cosine":
        if not steps_per_epoch:
            raise ValueError("a cosine schedule needs steps_per_epoch")
        total_steps = epochs * steps_per_epoch
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)),
        )
    elif schedule != "constant":
        raise ValueError(f"unknown schedule {schedule!r}")
    log = TrainLog(metric_name)
    best_state: dict[str, torch.Tensor] | None = None
    stale = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        total, count = 0.0, 0
        bar = tqdm(
            batches(epoch),
            total=steps_per_epoch,
            desc=f"{description} epoch {epoch + 1}/{epochs}",
            # A bar redrawn into a log file is noise: only draw it on a terminal.
            disable=not progress or not sys.stderr.isatty() or not world.is_main,
            mininterval=1.0,
            leave=False,
            dynamic_ncols=True,
        )
        for batch in bar:
            value = step_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += float(value.detach())
            count += 1
            if count % 20 == 0:
                bar.set_postfix(loss=f"{total / count:.4f}")
        bar.close()
        model.eval()
        with torch.no_grad():
            # Without a valid metric the epoch number stands in: the last epoch is "best".
            metric = float(validate()) if validate is not None else float(epoch + 1)
        epoch_loss = total / max(count, 1)
        if sharded and world.size > 1:
            # Every process holds the same weights, but its metric may differ in the last
            # bits; rank 0's decides, so all stop (and keep weights) at the same epoch.
            metric = distributed.broadcast_float(metric)
            epoch_loss = distributed.mean_over_processes(epoch_loss)
        log.epochs.append(
            {
                "epoch": epoch + 1,
                "loss": epoch_loss,
                metric_name: metric,
                "seconds": time.perf_counter() - start,
            }
        )
        if progress and validate is not None and world.is_main:
            tqdm.write(
                f"{description} epoch {epoch + 1}: loss {epoch_loss:.4f}, "
                f"valid {metric_name} {metric:.4f}"
            )
        if metric > log.best_metric:
            log.best_metric, log.best_epoch = metric, epoch + 1
            best_state = copy.deepcopy(model.state_dict())
            stale = 0
        else:
            stale += 1
            if stale >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    log.seconds = time.perf_counter() - start
    return log


class _LossModule(nn.Module):
    """`loss` as the forward of a module holding `model`, for DDP (see `fit`)."""

    def __init__(self, model: nn.Module, loss: Callable[[Any], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss(batch)
