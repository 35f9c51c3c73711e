"""Data-parallel training under torchrun: who this process is, and its shard of a batch.

    torchrun --nproc-per-node 2 -m recfunnel.cli train ...     # gloo on CPU, nccl on GPUs

`init_from_env` joins the process group torchrun describes in the environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); without it, or with WORLD_SIZE=1,
everything here is the single-process identity, so one process computes exactly what it
computed before this module existed.

Sharding is per batch, not per epoch: every process draws the same shuffled global batch
of `batch_size` examples (same seed), keeps its contiguous 1/N of it (`sharded`), and DDP
averages the N gradients. For a loss that is a mean over examples and shards of equal size
that average is the gradient of the whole global batch, so N processes take the same steps
as one, on the same examples (DistributedSampler instead gives each process its own
batches, which multiplies the batch size by N and changes the optimisation). The result
still differs from one process in the last bits and a little more (see README, "Several
processes"): the all-reduce sums in another order, the last batch's shards differ by one
example, each process draws its own dropout masks, and a loss with in-batch negatives sees
only its shard's items.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

from recfunnel.errors import ConfigError

B = TypeVar("B")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0


def world() -> World:
    """The current process group's rank and size, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def init_from_env(device: torch.device, timeout_s: float = 1800.0) -> World:
    """Join the process group of a torchrun launch (nccl for cuda, else gloo); a no-op for
    one process. `timeout_s` bounds how long a collective waits for a missing peer."""
    if env_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return world()
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; run one process")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE is set but {', '.join(missing)} is not: launch with torchrun"
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return world()


def shutdown() -> None:
    """Leave the process group (if any), so the process exits without a warning."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (a no-op for one)."""
    if world().size > 1:
        dist.barrier()


def sharded(
    batches: Iterable[B], take: Callable[[B, slice], B], size: Callable[[B], int] = len
) -> Iterator[B]:
    """This process's contiguous share of every global batch: `take(batch, rows)` with
    `rows` its slice of the batch's `size(batch)` examples. One process gets `batches`
    unchanged. A batch with fewer examples than processes is skipped by all of them, since
    DDP needs each process to take every step (and an empty shard has no mean loss)."""
    w = world()
    if w.size == 1:
        yield from batches
        return
    for batch in batches:
        n = size(batch)
        if n < w.size:
            continue
        bounds = np.linspace(0, n, w.size + 1).round().astype(int)
        yield take(batch, slice(int(bounds[w.rank]), int(bounds[w.rank + 1])))


def broadcast_float(value: float) -> float:
    """Rank 0's `value` on every process (so all take the same early-stopping decision)."""
    w = world()
    if w.size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def mean_over_processes(value: float) -> float:
    """The mean of `value` over the processes (e.g. an epoch's training loss)."""
    w = world()
    if w.size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return float(tensor.item()) / w.size


def _collective_device() -> torch.device:
    """nccl only moves GPU tensors; gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
