"""The protocol's reference table on the real ML-1M: the split and metrics must reproduce it."""

import pytest

from recfunnel.data.split import make_split
from recfunnel.evaluation.baselines import EASE, Popularity
from recfunnel.evaluation.protocol import Evaluator, catalogue

# shared/docs/protocol.md, "Reference numbers (test, global temporal split)".
REFERENCE = {
    "pop": {
        "recall@20": 0.0897,
        "ndcg@20": 0.1949,
        "hit_rate@20": 0.7160,
        "precision@20": 0.1660,
        "recall@200": 0.4059,
    },
    "ease": {
        "recall@20": 0.1237,
        "ndcg@20": 0.2290,
        "hit_rate@20": 0.7744,
        "precision@20": 0.1875,
        "recall@200": 0.4765,
    },
}


@pytest.mark.realdata
def test_reference_table(ml1m):
    split = make_split(ml1m.ratings)
    items = catalogue(ml1m.ratings)
    assert len(items) == 3706
    ev = Evaluator(split, items, ks=(20, 200))
    warm = ev.users("test", "warm")
    assert len(warm.user_ids) == 993 and warm.truth.sum() == 43_640
    assert len(ev.users("test", "cold").user_ids) == 195
    for name, model in (("pop", Popularity()), ("ease", EASE(1000.0))):
        got = ev.evaluate(model.fit(split.train, items), "test").groups["warm"]
        for metric, expected in REFERENCE[name].items():
            assert got[metric] == pytest.approx(expected, abs=5e-4), (name, metric)
