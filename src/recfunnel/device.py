"""Where the torch stages compute: `--device auto|cpu|cuda`, resolved once per process.

    device = resolve_device("auto")        # cuda when torch sees a GPU, else cpu
    batch = to_device(batch, device)       # tensors (in dicts, tuples, dataclasses) moved
    scores = to_numpy(logits)              # back to a CPU numpy array

Weights are always saved from CPU tensors and loaded with map_location="cpu" (see
`artifacts.load_weights`), then moved: a run trained on a GPU loads on a CPU-only machine
and the other way round. On the CPU every helper here returns its input unchanged, so the
CPU path computes exactly what it did before devices existed.
"""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from typing import Literal, TypeVar

import numpy as np
import torch

from recfunnel.errors import ConfigError

DeviceName = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
T = TypeVar("T")


def resolve_device(name: str) -> torch.device:
    """The torch device for `name`: "auto" is cuda when available, else cpu; "cuda" without
    CUDA is a ConfigError (the CLI prints it as one line and exits 2). Under torchrun each
    process takes the GPU of its LOCAL_RANK."""
    if name not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(
            "device cuda was requested but torch sees no CUDA GPU "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
            "use --device cpu or auto"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA GPU(s): "
            "start at most one process per GPU on each node"
        )
    return torch.device("cuda", local_rank)


def to_device(obj: T, device: torch.device | str) -> T:
    """`obj` with every tensor inside moved to `device`: a tensor, or a dict, list, tuple or
    dataclass of them (nested); other values are kept. Objects already there come back
    as they are (the same tensor, not a copy)."""
    device = torch.device(device)
    if isinstance(obj, torch.Tensor):
        return obj if obj.device == device else obj.to(device)  # type: ignore[return-value]
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}  # type: ignore[return-value]
    if isinstance(obj, tuple | list):
        return type(obj)(to_device(v, device) for v in obj)  # type: ignore[return-value]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: to_device(getattr(obj, f.name), device) for f in dataclasses.fields(obj)}
        return dataclasses.replace(obj, **changes)
    return obj


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A detached CPU numpy view (on the CPU) or copy (from a GPU) of `tensor`."""
    return tensor.detach().cpu().numpy()


def describe_device(device: torch.device) -> str:
    """ "cpu", or the GPU's index and name, for logs and the manifest."""
    if device.type == "cuda":
        return f"cuda:{device.index or 0} ({torch.cuda.get_device_name(device)})"
    return str(device)


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`module`'s state dict with every tensor on the CPU, for `torch.save`: a file written
    on a GPU then loads on a machine without one. On the CPU it is the state dict itself."""
    state = module.state_dict()
    if all(t.device.type == "cpu" for t in state.values()):
        return state
    out = OrderedDict((name, t.detach().cpu()) for name, t in state.items())
    out._metadata = getattr(state, "_metadata", None)  # type: ignore[attr-defined]
    return out
