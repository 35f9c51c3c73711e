"""One process of tests/test_distributed.py's loop check, run by torchrun (or in-process as the
single-process reference): a tiny MLP trained by `training.loop.fit` on sharded batches.

    torchrun --nproc-per-node 2 tests/ddp_worker.py OUT_DIR

Each process writes OUT_DIR/rank<r>.pt: its final weights, the example rows it trained on
and its training log.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recfunnel.training import distributed
from recfunnel.training.loop import fit

N_EXAMPLES, BATCH, DIM = 320, 32, 8  # 10 batches of 32: every shard holds 16 rows


def train(seed: int = 0) -> dict[str, Any]:
    """Train the tiny model (no dropout: the per-process masks would differ) and return
    its weights, the rows this process saw, and the log."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((N_EXAMPLES, DIM)).astype(np.float32))
    w = torch.from_numpy(rng.standard_normal(DIM).astype(np.float32))
    y = (x @ w + 0.5 * torch.randn(N_EXAMPLES) > 0).float()
    model = nn.Sequential(nn.Linear(DIM, 16), nn.ReLU(), nn.Linear(16, 1))
    seen: list[np.ndarray] = []

    def batches(epoch: int) -> Iterator[torch.Tensor]:
        order = torch.from_numpy(rng.permutation(N_EXAMPLES))
        full = (order[s : s + BATCH] for s in range(0, N_EXAMPLES, BATCH))
        for idx in distributed.sharded(full, lambda b, part: b[part]):
            seen.append(idx.numpy().copy())
            yield idx

    def loss(idx: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(model(x[idx]).squeeze(-1), y[idx])

    def validate() -> float:
        return -float(F.binary_cross_entropy_with_logits(model(x).squeeze(-1), y))

    log = fit(
        model,
        batches,
        loss,
        validate,
        epochs=3,
        lr=1e-2,
        patience=3,
        steps_per_epoch=N_EXAMPLES // BATCH,
        progress=False,
        sharded=True,
    )
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "seen": np.concatenate(seen),
        "log": log.to_dict(),
    }


def main(out: Path) -> int:
    world = distributed.init_from_env(torch.device("cpu"), timeout_s=60)
    try:
        result = train()
        torch.save(
            {**result, "seen": torch.from_numpy(result["seen"]), "world": world.size},
            out / f"rank{world.rank}.pt",
        )
        distributed.barrier()
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
