"""Contract tests: every component of the funnel, and every recall channel, passes them.

The cases are read from the package itself: the trained funnel's stages (`Funnel.stages`)
and every registered recall channel (`recall.CHANNELS`; a channel the default funnel does
not run is fitted here from its config section). A new stage, re-ranker or channel is
covered as soon as it is registered: no new test code. Each component gets, as its input,
the output of the chain before it.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recfunnel.config import load_config
from recfunnel.errors import NotFittedError
from recfunnel.evaluation.protocol import Evaluator
from recfunnel.funnel import COMPONENTS, Funnel
from recfunnel.recall import CHANNELS
from recfunnel.recall.channel import Channel
from recfunnel.run import SMOKE_OVERRIDES, PipelineConfig
from recfunnel.stage import Component, FitData
from recfunnel.training.recipe import train_funnel
from recfunnel.types import Candidates, History, Requests

OPTIONS = {"recall": {"k": 30}, "prerank": {"keep": 20}, "rerank": {"k": 10}}


def _train(ml, split) -> tuple[Funnel, dict[str, Channel]]:
    """A smoke funnel, and every registered channel (the funnel's own where it runs one)."""
    config = load_config(PipelineConfig, None, SMOKE_OVERRIDES)
    funnel, _ = train_funnel(ml, split, config, progress=False)
    data = FitData(ml, split, funnel.item_ids, progress=False)
    channels = {
        name: funnel["recall"].channels.get(name) or cls(getattr(config.recall, name)).fit(data)
        for name, cls in CHANNELS.items()
    }
    return funnel, channels


@pytest.fixture(scope="module")
def world(synthetic_ml):
    """Two funnels trained with the same seeds, the data, and warm test requests."""
    from recfunnel.data.split import make_split

    split = make_split(synthetic_ml.ratings)
    (first, channels), (second, channels_again) = (
        _train(synthetic_ml, split),
        _train(synthetic_ml, split),
    )
    data = FitData(synthetic_ml, split, first.item_ids, progress=False)
    users = Evaluator(split, first.item_ids, ks=(10,)).users("test", "warm")
    requests = first.requests(users)[np.arange(min(12, len(users.user_ids)))]
    return {
        "funnels": (first, second),
        "channels": {id(first): channels, id(second): channels_again},
        "data": data,
        "requests": requests,
    }


# Every stage of the funnel, with every registered channel after "recall".
STAGE_NAMES = list(COMPONENTS)
CASES = [STAGE_NAMES[0], *(f"recall.{c}" for c in CHANNELS), *STAGE_NAMES[1:]]


def _component(world: dict, funnel: Funnel, case: str) -> Component:
    """The component of `case` in `funnel`; a channel from that funnel's channel set."""
    stage, _, channel = case.partition(".")
    return world["channels"][id(funnel)][channel] if channel else funnel[stage]


def _input(funnel: Funnel, case: str, requests: Requests) -> Candidates:
    """What the chain hands this component: nothing for recall and its channels."""
    stage = case.partition(".")[0]
    names = list(funnel.stages)
    if names.index(stage) == 0:
        return Candidates.empty(len(requests))
    before = names[names.index(stage) - 1]
    return funnel.run(requests, upto=before, topk_recall=30, keep=20)[before]


def _call(component: Component, case: str, requests: Requests, cands: Candidates) -> Candidates:
    options = OPTIONS.get(case.partition(".")[0], {})
    if isinstance(component, Channel):
        options = {"k": 30}
    return component(requests, cands, **options)


def _assert_same(a: Candidates, b: Candidates) -> None:
    np.testing.assert_array_equal(a.items, b.items)
    assert set(a.scores) == set(b.scores)
    for name in a.scores:
        np.testing.assert_array_equal(a.scores[name], b.scores[name])


def test_the_cases_are_the_funnels_stages_and_every_channel(world):
    funnel = world["funnels"][0]
    assert list(funnel.stages) == STAGE_NAMES
    assert set(funnel["recall"].channels) <= set(CHANNELS) and len(CHANNELS) >= 2


@pytest.mark.parametrize("case", CASES)
def test_unknown_and_cold_users_get_lists(world, case):
    funnel, requests = world["funnels"][0], world["requests"]
    n = len(funnel.item_ids)
    empty = History(sp.csr_matrix((2, n)), sp.csr_matrix((2, n)))
    cold = Requests(np.array([10**6, 10**6 + 1]), empty, np.full(2, funnel.now))
    both = requests.concat(cold)
    out = _call(_component(world, funnel, case), case, both, _input(funnel, case, both))
    assert len(out) == len(both)
    valid = out.valid
    assert valid[-2:].any(), "a user with no history still gets candidates"
    assert ((out.items >= -1) & (out.items < n)).all()
    for name, score in out.scores.items():
        assert np.isfinite(score[valid]).all(), name


@pytest.mark.parametrize("case", CASES)
def test_empty_batch_and_empty_lists(world, case):
    funnel, requests = world["funnels"][0], world["requests"]
    component = _component(world, funnel, case)
    none = requests[np.arange(0)]
    out = _call(component, case, none, _input(funnel, case, none))
    assert len(out) == 0
    if case.partition(".")[0] != "recall":  # a later stage given empty lists returns empty ones
        blank = Candidates.empty(len(requests))
        incoming = _input(funnel, case, requests)
        blank = Candidates(
            np.full_like(incoming.items, -1),
            {k: np.full(v.shape, np.nan) for k, v in incoming.scores.items()},
            {k: np.zeros_like(v) for k, v in incoming.channels.items()},
            incoming.embeddings,
        )
        assert not _call(component, case, requests, blank).valid.any()


@pytest.mark.parametrize("case", CASES)
def test_using_a_component_before_fit_is_a_clear_error(world, case, tmp_path):
    component = _component(world, world["funnels"][0], case)
    fresh = type(component)(component.config)
    requests = world["requests"]
    with pytest.raises(NotFittedError, match="not fitted"):
        _call(fresh, case, requests, Candidates.empty(len(requests)))
    with pytest.raises(NotFittedError):
        fresh.save(tmp_path / "c")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("case", CASES)
def test_save_load_round_trip_gives_identical_lists(world, case, tmp_path):
    funnel, requests, data = world["funnels"][0], world["requests"], world["data"]
    component = _component(world, funnel, case)
    cands = _input(funnel, case, requests)
    component.save(tmp_path / "c")
    loaded = type(component).load(tmp_path / "c", data)
    _assert_same(_call(component, case, requests, cands), _call(loaded, case, requests, cands))


@pytest.mark.parametrize("case", CASES)
def test_same_seed_same_output(world, case):
    first, second = world["funnels"]
    requests = world["requests"]
    cands = _input(first, case, requests)
    _assert_same(
        _call(_component(world, first, case), case, requests, cands),
        _call(_component(world, second, case), case, requests, cands),
    )


@pytest.mark.parametrize("case", CASES)
def test_no_known_item_is_ever_returned(world, case):
    funnel, requests = world["funnels"][0], world["requests"]
    out = _call(_component(world, funnel, case), case, requests, _input(funnel, case, requests))
    known = requests.history.ratings.tocsr()
    assert known.nnz
    for row, items in enumerate(out.items):
        seen = set(known.indices[known.indptr[row] : known.indptr[row + 1]].tolist())
        assert not seen & set(items[items >= 0].tolist())


@pytest.mark.parametrize("case", CASES)
def test_ratings_dated_after_the_request_change_nothing(world, case):
    """Causality: append ratings after each request's moment to its history (liked, on
    items it has not rated); no list or score of that request may move."""
    funnel, requests = world["funnels"][0], world["requests"]
    history = requests.history
    ratings, times = history.ratings.tolil(), history.timestamps.tolil()
    rng = np.random.default_rng(0)
    for row in range(len(requests)):
        unseen = np.setdiff1d(np.arange(ratings.shape[1]), ratings.rows[row])
        for item in rng.choice(unseen, size=5, replace=False):
            ratings[row, item] = 5
            times[row, item] = requests.now[row] + 86_400 * (1 + item % 30)
    future = Requests(requests.user_ids, History(ratings.tocsr(), times.tocsr()), requests.now)
    component = _component(world, funnel, case)
    _assert_same(
        _call(component, case, requests, _input(funnel, case, requests)),
        _call(component, case, future, _input(funnel, case, future)),
    )
