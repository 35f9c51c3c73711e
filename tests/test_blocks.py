"""Dense per-request work runs in blocks of requests (`types.request_blocks`), so memory stays
bounded on large catalogues; the results are the same as in one block."""

from __future__ import annotations

import numpy as np
import pytest

import recfunnel.types as types
from recfunnel.data import load_movielens
from recfunnel.run import load_run
from recfunnel.types import request_blocks


def test_request_blocks_cover_the_requests_in_order():
    # ML-1M's catalogue: one block for every warm user set the protocol has.
    assert request_blocks(6040, 3706) == [slice(0, 6040)]
    blocks = request_blocks(30_000, 26_050)  # ML-20M-sized: ~1,288 requests a block
    assert blocks[0] == slice(0, 1288) and blocks[-1].stop == 30_000
    assert all(a.stop == b.start for a, b in zip(blocks, blocks[1:], strict=False))
    assert request_blocks(0, 100) == [slice(0, 0)]


@pytest.fixture(scope="module")
def funnel_and_requests(smoke_run):
    out, data = smoke_run
    ml = load_movielens(data[1], cache_dir=data[3], progress=False)
    run = load_run(out, ml)
    from recfunnel.evaluation.protocol import Evaluator

    users = Evaluator(run.split, run.funnel.item_ids, ks=(10,)).users("test", "warm")
    return run.funnel, run.funnel.requests(users)


def test_blocked_funnel_gives_the_same_lists_and_scores(funnel_and_requests, monkeypatch):
    funnel, requests = funnel_and_requests
    whole = funnel.run(requests)
    n_items = requests.history.ratings.shape[1]
    # Blocks of 7 requests: every channel's retrieval and pair scores go block by block.
    monkeypatch.setattr(types, "BLOCK_BYTES", 7 * 32 * n_items)
    assert len(request_blocks(len(requests), n_items)) > 1
    blocked = funnel.run(requests)
    for stage, cands in whole.items():
        assert np.array_equal(cands.items, blocked[stage].items), stage
        for name, values in cands.scores.items():
            np.testing.assert_allclose(
                blocked[stage].scores[name], values, rtol=1e-6, atol=1e-9, err_msg=name
            )


def test_prerank_scores_the_same_in_small_batches(funnel_and_requests):
    funnel, requests = funnel_and_requests
    pairs = funnel.run(requests, upto="item_to_item")["item_to_item"].pairs()
    prerank = funnel["prerank"]
    whole = prerank.score_pairs(requests, pairs).scores["prerank"]
    small = prerank.score_pairs(requests, pairs, batch_size=7).scores["prerank"]
    assert len(pairs) > 7
    np.testing.assert_allclose(small, whole, rtol=1e-6, atol=1e-6)
