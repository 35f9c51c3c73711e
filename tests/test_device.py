"""`--device auto|cpu|cuda`: resolution, the CLI's errors, moving batches, and weights saved on
one device loading on another. No test here needs a GPU: torch.cuda is mocked where the logic
branches on it, a "GPU-saved" file is made by tagging its storages as cuda:0, and loading
onto another device is checked with torch's data-less "meta" device."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from recfunnel.artifacts import load_weights
from recfunnel.cli import main
from recfunnel.config import load_config
from recfunnel.data.split import make_split
from recfunnel.device import cpu_state, resolve_device, to_device, to_numpy
from recfunnel.errors import ConfigError
from recfunnel.evaluation.protocol import catalogue
from recfunnel.prerank import PreRankStage
from recfunnel.rank import RankStage
from recfunnel.recall.two_tower.channel import TwoTowerChannel
from recfunnel.run import PipelineConfig, load_run
from recfunnel.stage import FitData


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


# --- resolution ---------------------------------------------------------------------------


def test_auto_is_cpu_without_cuda(no_cuda: None) -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_is_cuda_when_available(two_gpus: None) -> None:
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")  # an explicit cpu wins over a GPU


def test_cuda_without_cuda_is_a_config_error(no_cuda: None) -> None:
    with pytest.raises(ConfigError, match="device cuda was requested but torch sees no CUDA"):
        resolve_device("cuda")


def test_unknown_device_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="device must be one of auto, cpu, cuda"):
        resolve_device("gpu")


def test_each_torchrun_process_takes_its_local_gpu(
    two_gpus: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "2")  # a third process per node, two GPUs
    with pytest.raises(ConfigError, match="LOCAL_RANK 2 but only 2 CUDA GPU"):
        resolve_device("cuda")


def test_config_field_defaults_to_auto_and_checks_its_values() -> None:
    assert PipelineConfig().device == "auto"
    assert load_config(PipelineConfig, None, ["--device=cpu"]).device == "cpu"
    with pytest.raises(ConfigError, match="device: expected one of 'auto', 'cpu', 'cuda'"):
        load_config(PipelineConfig, None, ["--device=tpu"])


# --- the command line ---------------------------------------------------------------------


def test_train_with_cuda_on_a_cpu_machine_is_one_line_and_status_2(
    no_cuda: None, synthetic_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["train", "--data-dir", str(synthetic_dir), "--out", str(tmp_path / "r2"), "--device=cuda"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("recfunnel: error: device cuda was requested")
    assert not (tmp_path / "r2").exists()  # refused before loading data or training


@pytest.mark.parametrize("command", ["evaluate", "recommend", "bench"])
def test_loading_commands_refuse_cuda_without_it(
    no_cuda: None,
    smoke_run: tuple[Path, list[str]],
    command: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run, data = smoke_run
    extra = ["--user", "1"] if command == "recommend" else []
    code = main([command, str(run), *data, *extra, "--device", "cuda"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("recfunnel: error: device cuda was requested")
    assert not any("Traceback" in line for line in err)


def test_a_device_flag_outside_the_choices_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--device", "gpu"])
    assert exit_.value.code == 2
    assert "invalid choice: 'gpu'" in capsys.readouterr().err


# --- moving tensors -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Batch:
    ids: torch.Tensor
    times: np.ndarray
    parts: tuple[torch.Tensor, ...]


def test_to_device_on_the_cpu_returns_the_same_tensors() -> None:
    ids, other = torch.arange(3), torch.ones(2)
    batch = _Batch(ids, np.arange(3), (other,))
    moved = to_device({"b": batch, "n": 3}, torch.device("cpu"))
    assert moved["b"].ids is ids and moved["b"].parts[0] is other  # no copy on the CPU
    assert moved["b"].times is batch.times and moved["n"] == 3


def test_to_device_moves_every_nested_tensor() -> None:
    batch = _Batch(torch.arange(3), np.arange(3), (torch.ones(2), torch.zeros(1)))
    moved = to_device([batch], "meta")[0]
    assert moved.ids.device.type == "meta"
    assert all(t.device.type == "meta" for t in moved.parts)
    assert isinstance(moved.times, np.ndarray)


def test_to_numpy_detaches() -> None:
    x = torch.ones(2, requires_grad=True) * 2
    assert to_numpy(x).tolist() == [2.0, 2.0]


# --- saving on one device, loading on another ---------------------------------------------


def test_cpu_state_on_the_cpu_is_the_state_dict_itself() -> None:
    module = nn.Linear(3, 2)
    state = cpu_state(module)
    assert state.keys() == module.state_dict().keys()
    assert hasattr(state, "_metadata")  # the same OrderedDict type torch writes
    for a, b in zip(state.values(), module.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_weights_saved_on_a_gpu_load_on_a_cpu_only_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_cuda: None
) -> None:
    source = nn.Linear(4, 3)
    path = tmp_path / "model.pt"
    # What torch.save of a state dict living on a GPU writes: every storage tagged cuda:0.
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(source.state_dict(), path)
    with pytest.raises(RuntimeError, match="CUDA"):  # the file really is a "GPU" file
        torch.load(path, weights_only=True)
    target = nn.Linear(4, 3)
    load_weights(target, path)  # map_location="cpu"
    assert all(p.device.type == "cpu" for p in target.parameters())
    for a, b in zip(source.parameters(), target.parameters(), strict=True):
        assert torch.equal(a.detach(), b.detach())


def test_a_cpu_run_loads_its_torch_stages_onto_another_device(
    smoke_run: tuple[Path, list[str]], synthetic_ml, tmp_path: Path
) -> None:
    """Each torch stage of a CPU-trained run, loaded with another device, has its model
    there (meta stands in for a GPU: same code path, no data), and on the CPU it scores
    exactly as before."""
    run, _ = smoke_run
    split = make_split(synthetic_ml.ratings)
    data = FitData(synthetic_ml, split, catalogue(synthetic_ml.ratings), False, "meta")
    stages = {
        "recall/two_tower": TwoTowerChannel,
        "prerank": PreRankStage,
        "rank": RankStage,
    }
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    for folder, cls in stages.items():
        stage = cls.load(copy / folder, data)
        devices = {p.device.type for p in stage.model_.parameters()}
        assert devices == {"meta"}, (folder, devices)
        assert stage.device_ == torch.device("meta")
    on_cpu = load_run(run, synthetic_ml, "cpu")
    assert all(
        p.device.type == "cpu"
        for name in ("prerank", "rank")
        for p in on_cpu.funnel[name].model_.parameters()
    )
