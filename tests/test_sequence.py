"""The sequence channel (SASRec / BERT4Rec) on tiny tensors and a synthetic chain data set."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from recfunnel.config import load_config
from recfunnel.data.split import Split
from recfunnel.errors import ConfigError
from recfunnel.recall.sequence.channel import (
    SequenceChannel,
    SequenceConfig,
    left_padded,
    ordered_runs,
    training_windows,
)
from recfunnel.recall.sequence.model import SequenceEncoder
from recfunnel.run import PipelineConfig
from recfunnel.stage import FitData
from recfunnel.types import History, Requests

N_ITEMS = 16
DAY = 86_400

# Small enough to train in about a second on one thread.
TINY = SequenceConfig(
    max_len=6,
    dim=16,
    ffn_dim=32,
    blocks=1,
    dropout=0.0,
    batch_size=32,
    epochs=15,
    patience=15,
    lr=1e-2,
    threads=1,
    history="rated",
    valid_metric="recall@1",
)


def test_ordered_runs_sorts_by_time_then_item():
    rows = np.array([1, 0, 1, 0])
    cols = np.array([5, 6, 7, 8])
    times = np.array([2, 1, 1, 1])
    items, starts = ordered_runs(rows, cols, times, n_rows=3)
    # row 0: (6, t1), (8, t1) -> the tie goes to the smaller item; row 1: 7 (t1), 5 (t2).
    assert items.tolist() == [6, 8, 7, 5]
    assert starts.tolist() == [0, 2, 4, 4]  # row 2 has no events


def test_training_windows_make_every_later_item_a_target_once():
    # Runs [0, 5) and [5, 6): sasrec windows of 3 items, one every 2 back from the end.
    windows = training_windows(np.array([0, 5, 6]), width=3, step=2)
    assert windows.tolist() == [[2, 5], [0, 3]]  # the single-item run predicts nothing
    # Targets are each window's items after its first: 3, 4 and 1, 2.
    targets = sorted(i for b, e in windows for i in range(b + 1, e))
    assert targets == [1, 2, 3, 4]


def test_left_padding_aligns_the_last_item():
    out = left_padded(np.array([10, 11, 12, 13]), np.array([0, 2]), np.array([3, 3]))
    assert out.tolist() == [[11, 12, 13], [0, 0, 13]]  # token = position + 1, 0 pads


def _encoder(causal: bool) -> SequenceEncoder:
    torch.manual_seed(0)
    return SequenceEncoder(N_ITEMS, max_len=8, dim=16, heads=2, ffn_dim=32, causal=causal).eval()


def test_sasrec_output_at_t_does_not_see_later_items():
    model = _encoder(causal=True)
    a = torch.tensor([[1, 2, 3, 4, 5]])
    b = torch.tensor([[1, 2, 3, 9, 7]])  # the same first three items
    with torch.no_grad():
        ha, hb = model(a), model(b)
    torch.testing.assert_close(ha[:, :3], hb[:, :3])
    assert not torch.allclose(ha[:, 3:], hb[:, 3:])
    bidirectional = _encoder(causal=False)
    with torch.no_grad():
        assert not torch.allclose(bidirectional(a)[:, :3], bidirectional(b)[:, :3])


@pytest.mark.parametrize("causal", [True, False])
def test_left_padding_changes_nothing(causal):
    model = _encoder(causal)
    with torch.no_grad():
        short = model(torch.tensor([[3, 4]]))
        padded = model(torch.tensor([[0, 0, 3, 4], [5, 6, 7, 8]]))
    torch.testing.assert_close(padded[:1, 2:], short)


def _chain_data() -> FitData:
    """Users who watch 3 to 6 consecutive items: s, s+1, ..., s+n-1 (then s+n in valid)."""
    rng = np.random.default_rng(0)
    rows, valid_rows = [], []
    for user in range(1, 121):
        n = int(rng.integers(3, 7))
        start = int(rng.integers(0, N_ITEMS - n))
        # item_id = position + 1 (the catalogue is 1..N_ITEMS)
        rows += [(user, start + step + 1, 5, step * DAY) for step in range(n)]
        valid_rows.append((user, start + n + 1, 5, 10 * DAY))
    columns = ["user_id", "item_id", "rating", "timestamp"]
    train = pd.DataFrame(rows, columns=columns)
    valid = pd.DataFrame(valid_rows, columns=columns)
    split = Split(train, valid, valid.iloc[:0], "global")
    item_ids = np.arange(1, N_ITEMS + 1)
    return FitData(None, split, item_ids, progress=False)  # type: ignore[arg-type]


def _requests(sequences: list[list[int]]) -> Requests:
    """One request per sequence of catalogue positions, rated 5 on consecutive days."""
    rows = [r for r, seq in enumerate(sequences) for _ in seq]
    cols = [c for seq in sequences for c in seq]
    times = [DAY * (1 + t) for seq in sequences for t in range(len(seq))]
    shape = (len(sequences), N_ITEMS)
    ratings = sp.csr_matrix((np.full(len(cols), 5.0), (rows, cols)), shape)
    stamps = sp.csr_matrix((np.array(times, dtype=np.float64), (rows, cols)), shape)
    return Requests(
        np.arange(len(sequences)), History(ratings, stamps), np.full(shape[0], 99 * DAY)
    )


@pytest.fixture(scope="module")
def chain() -> FitData:
    return _chain_data()


@pytest.fixture(scope="module")
def sasrec(chain) -> SequenceChannel:
    return SequenceChannel(TINY).fit(chain)


def test_sasrec_learns_that_the_next_item_follows(sasrec):
    # Histories 2, 3, 4 and 7, 8: the next items are 5 and 9; 11 alone: 12. An empty
    # history gets the learned bias and still a full list.
    out = sasrec(_requests([[2, 3, 4], [7, 8], [11], []]), k=3)
    assert out.items[:3, 0].tolist() == [5, 9, 12]
    assert (out.items[3] >= 0).all()
    np.testing.assert_array_equal(
        np.sort(out.scores["sequence"][3])[::-1],
        np.sort(sasrec.model_.bias.detach().numpy())[::-1][:3],
    )
    # Valid recall@1 (the item after each user's run); a valid item that is never a train
    # target (the last movies of the catalogue) cannot be learned, hence not 1.
    assert sasrec.log_.best_metric > 0.8


def test_scores_of_pairs_are_the_retrieval_logits(sasrec):
    requests = _requests([[2, 3, 4], [7, 8]])
    out = sasrec(requests, k=4)
    pairs = sasrec.score_pairs(requests, out.pairs())
    np.testing.assert_array_equal(out.unflatten(pairs.scores["sequence"]), out.scores["sequence"])


def test_bert4rec_trains_and_retrieves(chain):
    config = dataclasses.replace(TINY, model="bert4rec", mask_prob=0.3, epochs=25, patience=25)
    channel = SequenceChannel(config).fit(chain)
    assert channel.log_.epochs[-1]["loss"] < channel.log_.epochs[0]["loss"]
    requests = _requests([[2, 3, 4], [7, 8], []])
    out = channel(requests, k=3)
    assert out.items.shape == (3, 3) and (out.items >= 0).all()
    assert not {2, 3, 4} & set(out.items[0].tolist())  # known items are removed
    # A bidirectional model has to learn the direction from the positions alone, so the
    # item after the history need not come first, but it is among the top 3.
    assert 5 in out.items[0] and 9 in out.items[1]


def test_save_load_round_trip_gives_identical_scores(sasrec, chain, tmp_path):
    sasrec.save(tmp_path / "sequence")
    loaded = SequenceChannel.load(tmp_path / "sequence", chain)
    requests = _requests([[2, 3, 4], [7, 8], [], [0, 1, 2, 3, 4, 5, 6, 7, 8]])
    np.testing.assert_array_equal(
        loaded.catalogue_scores(requests), sasrec.catalogue_scores(requests)
    )
    assert loaded.log_.best_epoch == sasrec.log_.best_epoch


@pytest.mark.parametrize(
    "change",
    [
        {"dim": 30, "heads": 4},
        {"max_len": 0},
        {"mask_prob": 0.0},
        {"dropout": 1.0},
        {"model": "gru"},
        {"history": "watched"},
        {"valid_metric": "auc"},
        {"lr": 0.0},
    ],
)
def test_bad_config_values_raise(change):
    with pytest.raises(ConfigError):
        dataclasses.replace(SequenceConfig(), **change).validate()


def test_bad_override_is_a_config_error():
    with pytest.raises(ConfigError):
        load_config(PipelineConfig, None, ["--recall.sequence.model=gru"])
    config = load_config(PipelineConfig, None, ["--recall.sequence.model=bert4rec"])
    assert config.recall.sequence.model == "bert4rec"
    assert "sequence" not in config.recall.channels  # off by default
