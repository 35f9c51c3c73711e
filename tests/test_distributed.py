"""torchrun data parallelism: sharding, the DDP loop against one process, and `recfunnel train`
under `torchrun --nproc-per-node 2` (gloo on 127.0.0.1, a free port) on the synthetic data.

Every launch runs in its own process group with a deadline; on timeout the whole group is
killed, so no worker outlives its test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recfunnel.training import distributed
from recfunnel.training.distributed import World

HERE = Path(__file__).resolve().parent
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def torchrun(args: list[str], *, nproc: int = 2, timeout: float = 100.0) -> str:
    """Run `torchrun --nproc-per-node nproc ARGS` on 127.0.0.1; its output (stdout+stderr).
    Fails the test (after killing every process it started) past `timeout` seconds."""
    if not TORCHRUN.exists():
        pytest.fail(f"torchrun not found next to {sys.executable}")
    command = [
        str(TORCHRUN),
        "--nnodes=1",
        f"--nproc-per-node={nproc}",
        "--master-addr=127.0.0.1",
        f"--master-port={_free_port()}",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: one killpg stops every worker
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout:.0f} s:\n{output[-3000:]}")
    if proc.returncode != 0:
        pytest.fail(f"torchrun exited {proc.returncode}:\n{output[-3000:]}")
    return output


# --- sharding -----------------------------------------------------------------------------


def test_one_process_gets_the_batches_unchanged() -> None:
    batches = [np.arange(5), np.arange(3)]
    assert list(distributed.sharded(iter(batches), lambda b, s: b[s])) == batches


@pytest.mark.parametrize("rank", [0, 1])
def test_two_processes_split_every_batch_and_skip_a_tiny_one(
    rank: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(distributed, "world", lambda: World(rank, 2))
    batches = [np.arange(10), np.arange(10, 15), np.array([99])]  # the last: one row, 2 ranks
    got = list(distributed.sharded(iter(batches), lambda b, s: b[s]))
    want = [[np.arange(5), np.arange(10, 12)], [np.arange(5, 10), np.arange(12, 15)]][rank]
    assert len(got) == 2
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_two_tower_batch_is_sliced_with_its_ragged_history() -> None:
    from recfunnel.recall.two_tower.sampling import RecallBatch, user_batch

    features = {k: np.arange(4, dtype=np.int64) for k in ("user", "gender", "age", "occupation")}
    features["zip"] = np.arange(4, dtype=np.int64)
    # User histories: [10, 11], [], [12], [13, 14, 15]
    users = user_batch(features, np.arange(4), np.array([10, 11, 12, 13, 14, 15]), [2, 0, 1, 3])
    batch = RecallBatch(
        users, torch.arange(4), torch.ones(4), np.arange(4), torch.arange(8).reshape(4, 2)
    )
    part = batch.rows(slice(1, 4))
    assert part.users.user.tolist() == [1, 2, 3]
    assert part.users.history.tolist() == [12, 13, 14, 15]
    assert part.users.offsets.tolist() == [0, 0, 1]
    assert part.negatives.tolist() == [[2, 3], [4, 5], [6, 7]]
    first = batch.rows(slice(0, 1))
    assert first.users.history.tolist() == [10, 11] and first.users.offsets.tolist() == [0]


# --- the loop under DDP -------------------------------------------------------------------


def test_two_processes_train_like_one(tmp_path: Path) -> None:
    """Same seed, same global batches: 2 gloo processes end within 1e-5 of one process (the
    all-reduce sums the two shard means in another order), with identical weights on both
    ranks, and between them every example once per epoch."""
    sys.path.insert(0, str(HERE))
    try:
        import ddp_worker
    finally:
        sys.path.remove(str(HERE))
    single = ddp_worker.train()
    torchrun([str(HERE / "ddp_worker.py"), str(tmp_path)], timeout=90)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    for name, value in single["state"].items():
        assert torch.equal(ranks[0]["state"][name], ranks[1]["state"][name]), name
        torch.testing.assert_close(ranks[0]["state"][name], value, atol=1e-5, rtol=0)
    # The two shards are disjoint halves of every batch; together each epoch covers all rows.
    seen = np.concatenate([r["seen"].numpy() for r in ranks])
    counts = np.bincount(seen, minlength=ddp_worker.N_EXAMPLES)
    assert (counts == 3).all()  # 3 epochs
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == len(single["seen"]) // 2
    assert ranks[0]["log"]["best_epoch"] == single["log"]["best_epoch"]
    assert ranks[0]["log"]["best_metric"] == pytest.approx(single["log"]["best_metric"], abs=1e-5)


# --- recfunnel train under torchrun -------------------------------------------------------

# The DDP stages (two-tower, sequence, rank) with tiny sizes; sequence joins the channels.
DDP_OVERRIDES = ("--recall.channels=two_tower,sequence,trending",)
# One process vs two: each DDP stage's best valid metric within this (absolute). Not bit
# equal: every process draws its own dropout masks, a two-tower softmax sees only its
# shard's in-batch negatives, and the all-reduce sums in another order. On the synthetic
# data: two-tower 0 (BCE, no dropout effect on the metric), rank 0.0001, sequence 0.019.
TOLERANCE = 0.05


def test_recfunnel_train_under_torchrun_matches_one_process(
    synthetic_dir: Path, tmp_path: Path
) -> None:
    from recfunnel.cli import main
    from recfunnel.run import SMOKE_OVERRIDES

    data = ["--data-dir", str(synthetic_dir), "--cache-dir", str(tmp_path / "cache")]
    args = ["train", *data, "--no-progress", "--device=cpu", *SMOKE_OVERRIDES, *DDP_OVERRIDES]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "--out", str(one)]) == 0
    output = torchrun(["-m", "recfunnel.cli", *args, "--out", str(two)], timeout=100)
    assert "torchrun: 2 processes" in output
    assert output.count(str(two)) == 1  # rank 0 alone printed (and wrote) the run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "one", "two"]
    for stage in ("recall/two_tower", "recall/sequence", "rank"):
        logs = [json.loads((run / stage / "train_log.json").read_text()) for run in (one, two)]
        assert logs[0]["best_metric"] == pytest.approx(logs[1]["best_metric"], abs=TOLERANCE), (
            stage,
            logs[0]["best_metric"],
            logs[1]["best_metric"],
        )
    # The DDP run is a complete run: it loads and its manifest checks out.
    assert main(["evaluate", str(two), *data, "--stage", "recall", "--no-progress"]) == 0
