"""The funnel's value type and the pre-rank / rank modules, on hand-sized tensors."""

import dataclasses
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recfunnel.errors import ConfigError
from recfunnel.prerank.model import PreRankMLP
from recfunnel.rank.features import DENSE
from recfunnel.rank.model import (
    AUGRUCell,
    CrossNetwork,
    InterestEvolution,
    RankModel,
    RankSizes,
    TargetAttention,
    chronological,
    next_behaviour_loss,
)
from recfunnel.rank.stage import RankConfig, RankStage
from recfunnel.types import History, Pairs, Requests


def test_target_attention_ignores_padding_and_empty_history_pools_to_zero():
    torch.manual_seed(0)
    att = TargetAttention(dim=4, hidden=8)
    keys = torch.randn(2, 3, 4)
    query = torch.randn(2, 4)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    out = att(keys, query, mask)
    changed = keys.clone()
    changed[0, 2] = 100.0  # a padded position: must not matter
    assert torch.allclose(att(changed, query, mask)[0], out[0])
    assert torch.equal(out[1], torch.zeros(4))


def test_cross_layer_is_x0_times_linear_plus_residual():
    net = CrossNetwork(width=2, layers=1)
    with torch.no_grad():
        net.layers[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        net.layers[0].bias.copy_(torch.tensor([0.5, 0.0]))
    x0 = torch.tensor([[2.0, 3.0]])
    # x1 = x0 * (W x0 + b) + x0 = [2 * 2.5 + 2, 3 * 6 + 3] = [7, 21]
    assert net(x0).tolist() == [[7.0, 21.0]]


def test_low_rank_cross_layer_is_x0_times_u_v_plus_residual():
    net = CrossNetwork(width=2, layers=1, rank=1)
    with torch.no_grad():
        net.layers[0].v.weight.copy_(torch.tensor([[1.0, 1.0]]))  # V^T (1, 2)
        net.layers[0].u.weight.copy_(torch.tensor([[1.0], [2.0]]))  # U (2, 1)
        net.layers[0].u.bias.copy_(torch.tensor([0.5, 0.0]))
    x0 = torch.tensor([[2.0, 3.0]])
    # V^T x0 = 5, U 5 + b = [5.5, 10]: x1 = [2 * 5.5 + 2, 3 * 10 + 3] = [13, 33]
    assert net(x0).tolist() == [[13.0, 33.0]]
    # 2 r width weights a layer (and the bias) instead of width^2
    wide = CrossNetwork(width=100, layers=2, rank=8)
    assert sum(p.numel() for p in wide.parameters()) == 2 * (2 * 8 * 100 + 100)


def _batch(n: int, seq: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    batch = {
        name: torch.randint(0, 3, (n,), generator=g)
        for name in ("item", "year", "recent", "total", "age", "gender", "age_group")
    }
    batch |= {
        "occupation": torch.randint(0, 5, (n,), generator=g),
        "zip": torch.randint(0, 5, (n,), generator=g),
        "user": torch.randint(0, 3, (n,), generator=g),
        "lengths": torch.randint(0, 40, (n,), generator=g),
        "genres": torch.rand(n, 18, generator=g),
        "sequence": torch.randint(0, 3, (n, seq), generator=g),
    }
    return batch | {name: torch.randn(n, generator=g) for name in DENSE}


@pytest.mark.parametrize("heads", [1, 2])
def test_rank_model_shapes_and_dense_inputs_matter(heads):
    torch.manual_seed(0)
    model = RankModel(RankSizes(n_users=4, n_items=4), dim=4, deep=(8,), heads=heads).eval()
    batch = _batch(6)
    out = model(batch)
    assert out.shape == (6, heads) and torch.isfinite(out).all()
    moved = dict(batch, recall=batch["recall"] + 5.0)
    assert not torch.allclose(model(moved), out)
    # Without the recall logit among its dense inputs the model cannot read it.
    blind = RankModel(
        RankSizes(4, 4), dim=4, deep=(8,), dense=tuple(d for d in DENSE if d != "recall")
    ).eval()
    assert torch.allclose(blind(moved), blind(batch))


def test_prerank_mlp_reads_vectors_and_scalars():
    torch.manual_seed(0)
    mlp = PreRankMLP(dim=3, hidden=(5,), n_scalars=2)
    out = mlp(torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 2))
    assert out.shape == (4,)


class _FixedLogits(RankStage):
    """A rank stage whose like head returns given logits: calibration alone under test."""

    def __init__(self, logits: np.ndarray, calibration: str = "platt") -> None:
        super().__init__(RankConfig(calibration=calibration))
        self.logits, self.model_ = logits, object()
        self._fitted()

    def score_pairs(self, requests, pairs, batch_size: int = 8192):
        like = self.logits / self.temperature_ + self.bias_
        return pairs.with_scores("rank.like", like)


def test_calibration_recovers_an_overconfident_temperature():
    rng = np.random.default_rng(0)
    true = rng.normal(0.0, 1.5, 20_000)
    labels = (rng.random(true.size) < 1 / (1 + np.exp(-true))).astype(np.float32)
    # The head is overconfident by a factor 2: its logits are twice the true ones.
    stage = _FixedLogits(2.0 * true, calibration="temperature")
    pairs = Pairs(np.zeros(true.size, np.int64), np.zeros(true.size, np.int64), labels=labels)
    out = stage.calibrate(None, pairs)
    assert out["temperature"] == pytest.approx(2.0, rel=0.05)
    assert out["bias"] == stage.bias_ == 0.0 and out["method"] == "temperature"
    assert out["logloss_after"] < out["logloss_before"]
    # Afterwards the head's scores are divided by it.
    scaled = stage.score_pairs(None, pairs).scores["rank.like"]
    np.testing.assert_allclose(scaled, 2.0 * true / stage.temperature_)
    with pytest.raises(ConfigError, match="labelled"):
        stage.calibrate(None, Pairs(np.zeros(3, np.int64), np.zeros(3, np.int64)))


def test_platt_calibration_also_removes_a_shift_no_temperature_can():
    rng = np.random.default_rng(1)
    true = rng.normal(0.0, 1.5, 20_000)
    labels = (rng.random(true.size) < 1 / (1 + np.exp(-true))).astype(np.float32)
    # Overconfident by 2 and too optimistic by 0.8 logits, as a head trained on a slice with
    # more likes than later requests would be.
    pairs = Pairs(np.zeros(true.size, np.int64), np.zeros(true.size, np.int64), labels=labels)
    platt, temperature = (
        _FixedLogits(2.0 * true + 0.8),
        _FixedLogits(2.0 * true + 0.8, "temperature"),
    )
    out, alone = platt.calibrate(None, pairs), temperature.calibrate(None, pairs)
    assert out["method"] == "platt"
    assert out["temperature"] == pytest.approx(2.0, rel=0.05)
    assert out["bias"] == pytest.approx(-0.4, abs=0.05)  # -0.8 / T
    assert out["logloss_after"] < alone["logloss_after"] < alone["logloss_before"]
    probs = 1 / (1 + np.exp(-platt.score_pairs(None, pairs).scores["rank.like"]))
    assert probs.mean() == pytest.approx(labels.mean(), abs=0.005)  # the mean is right again


# --- DIEN --------------------------------------------------------------------------------


def test_chronological_puts_the_real_items_oldest_first_and_drops_holes():
    # Newest first, 0 = padding or an item outside the vocabulary (a hole).
    sequence = torch.tensor([[5, 4, 0, 3, 0], [7, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    assert chronological(sequence).tolist() == [[3, 4, 5, 0, 0], [7, 0, 0, 0, 0], [0] * 5]


def test_augru_with_attention_zero_keeps_the_state_and_with_attention_moves_it():
    torch.manual_seed(0)
    cell = AUGRUCell(input_size=3, hidden_size=4)
    x, h = torch.randn(5, 3), torch.randn(5, 4)
    assert torch.equal(cell(x, h, torch.zeros(5)), h)
    moved = cell(x, h, torch.ones(5))
    assert not torch.allclose(moved, h)
    # Half the attention, half the step: h' - h = a * u * (h~ - h) is linear in a.
    half = cell(x, h, torch.full((5,), 0.5))
    torch.testing.assert_close(half - h, (moved - h) / 2)


def _evolution() -> tuple[InterestEvolution, torch.Tensor]:
    torch.manual_seed(0)
    return InterestEvolution(dim=4), torch.randn(2, 4)


def test_interest_evolution_ignores_padding_and_empty_history_is_zero():
    evolution, query = _evolution()
    keys = torch.randn(1, 3, 4)
    mask = torch.ones(1, 3, dtype=torch.bool)
    # The same history, alone (L = 3), then padded to L = 7 with garbage in the padding and
    # batched with an empty history: the interest must not move.
    alone, _ = evolution(keys, query[:1], mask)
    padded_keys = torch.cat([keys, 100 * torch.randn(1, 4, 4)], dim=1)
    padded_mask = torch.tensor([[True] * 3 + [False] * 4])
    batch_keys = torch.cat([padded_keys, torch.randn(1, 7, 4)])
    batch_mask = torch.cat([padded_mask, torch.zeros(1, 7, dtype=torch.bool)])
    interest, states = evolution(batch_keys, query, batch_mask)
    torch.testing.assert_close(interest[0], alone[0], rtol=1e-6, atol=1e-6)
    assert torch.equal(interest[1], torch.zeros(4))
    assert states.shape == (2, 3, 4)  # steps past the longest history are not run
    nobody, _ = evolution(torch.randn(2, 5, 4), query, torch.zeros(2, 5, dtype=torch.bool))
    assert torch.equal(nobody, torch.zeros(2, 4))


def test_interest_evolution_reads_the_order_and_the_target():
    evolution, query = _evolution()
    keys = torch.randn(1, 4, 4).expand(2, 4, 4)
    mask = torch.ones(2, 4, dtype=torch.bool)
    interest, _ = evolution(keys, query, mask)
    assert not torch.allclose(interest[0], interest[1])  # another target, another interest
    flipped, _ = evolution(keys.flip(1), query, mask)
    assert not torch.allclose(flipped, interest)  # a sequence, not a bag


def test_rank_model_dien_reads_the_sequence_in_time_order_and_ignores_padding():
    torch.manual_seed(0)
    model = RankModel(RankSizes(4, 9), dim=4, deep=(8,), interest="dien", heads=2).eval()
    batch = _batch(3, seq=4)
    batch["sequence"] = torch.tensor([[3, 2, 1, 0], [8, 0, 5, 0], [0, 0, 0, 0]])
    out = model(batch)
    longer = dict(batch, sequence=torch.cat([batch["sequence"], torch.zeros(3, 6).long()], 1))
    torch.testing.assert_close(model(longer), out, rtol=1e-6, atol=1e-6)
    # The model reverses the newest-first features itself: its interest is the evolution
    # layer's over the chronological embeddings (row 0: items 1, 2, 3; row 1: 5, 8).
    chrono = torch.tensor([[1, 2, 3, 0], [5, 8, 0, 0], [0, 0, 0, 0]])
    target = model.item_id(batch["item"])
    expected, _ = model.evolution(model.item_id(chrono), target, chrono > 0)
    seen: list[torch.Tensor] = []
    model.evolution.register_forward_hook(lambda module, args, out: seen.append(out[0]))
    model(batch)
    torch.testing.assert_close(seen[0], expected)
    assert torch.equal(expected[2], torch.zeros(4))
    reordered = dict(batch, sequence=torch.tensor([[1, 2, 3, 0], [5, 0, 8, 0], [0, 0, 0, 0]]))
    assert not torch.allclose(model(reordered)[:2], out[:2])


def test_next_behaviour_loss_by_hand():
    states = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # h_1, h_2
    positives = torch.tensor([[[2.0, 0.0], [9.0, 9.0]]])  # e_2 (and a masked row)
    negatives = torch.tensor([[[0.0, 5.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, False]])
    # One step: BCE(h_1 . e_2 = 2, 1) + BCE(h_1 . e_neg = 0, 0) = log(1 + e^-2) + log 2.
    expected = torch.log1p(torch.exp(torch.tensor(-2.0))) + torch.log(torch.tensor(2.0))
    torch.testing.assert_close(next_behaviour_loss(states, positives, negatives, mask), expected)
    none = next_behaviour_loss(states, positives, negatives, torch.zeros(1, 2, dtype=torch.bool))
    assert float(none) == 0.0


def test_dien_aux_loss_has_gradients_and_learns_a_toy_next_item_task():
    """Histories walk the items in a fixed cycle (k is followed by k + 1): the extractor
    GRU can learn to tell the real next item from a sampled one."""
    torch.manual_seed(0)
    model = RankModel(RankSizes(4, 21), dim=8, deep=(8,), interest="dien")
    starts = torch.randint(0, 20, (64, 1))
    chrono = (starts + torch.arange(6)) % 20 + 1  # (64, 6) oldest first
    batch = _batch(64, seq=6) | {"sequence": chrono.flip(1)}  # the features: newest first
    _, aux = model.logits_and_aux(batch)
    first = float(aux.detach())
    assert torch.isfinite(aux) and first > 0
    aux.backward()
    assert model.evolution.extractor.weight_hh_l0.grad.abs().sum() > 0
    assert model.item_id.weight.grad.abs().sum() > 0
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(100):
        optimiser.zero_grad()
        _, aux = model.logits_and_aux(batch)
        aux.backward()
        optimiser.step()
        losses.append(float(aux.detach()))
    # Fresh negatives every step make the curve noisy: compare the mean of the last ten.
    assert sum(losses[-10:]) / 10 < 0.4 * first  # from 2 log 2 = 1.39 to about 0.25
    # Off (no sequence field, DIN, or aux=False): exactly 0.
    assert float(model.logits_and_aux(batch, aux=False)[1].detach()) == 0.0
    din = RankModel(RankSizes(4, 21), dim=8, deep=(8,))
    assert float(din.logits_and_aux(batch)[1].detach()) == 0.0


# --- DIEN in the rank stage ----------------------------------------------------------------


@pytest.fixture(scope="module")
def dien_funnel(synthetic_ml):
    """A smoke funnel whose rank stage is DIEN, the data, warm test requests, and the stacked
    examples the rank stage was trained on (caught on their way into RankStage.fit)."""
    from recfunnel.config import load_config
    from recfunnel.data.split import make_split
    from recfunnel.evaluation.protocol import Evaluator
    from recfunnel.rank import RankStage
    from recfunnel.run import SMOKE_OVERRIDES, PipelineConfig
    from recfunnel.stage import FitData
    from recfunnel.training.recipe import train_funnel

    split = make_split(synthetic_ml.ratings)
    config = load_config(PipelineConfig, None, (*SMOKE_OVERRIDES, "--rank.interest=dien"))
    caught = {}
    fit = RankStage.fit

    def catching_fit(self, data, stacked=None, validate=None, **kwargs):
        caught["stacked"] = stacked
        caught["like_holdout"] = kwargs.get("like_holdout")
        return fit(self, data, stacked, validate, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RankStage, "fit", catching_fit)
        funnel, _ = train_funnel(synthetic_ml, split, config, progress=False)
    data = FitData(synthetic_ml, split, funnel.item_ids, progress=False)
    users = Evaluator(split, funnel.item_ids, ks=(10,)).users("test", "warm")
    requests = funnel.requests(users)[np.arange(min(12, len(users.user_ids)))]
    return funnel, data, requests, caught["stacked"], caught["like_holdout"]


def test_a_dien_rank_stage_trains_and_round_trips(dien_funnel, tmp_path):
    funnel, data, requests, *_ = dien_funnel
    rank = funnel["rank"]
    assert rank.config.interest == "dien" and rank.model_.evolution is not None
    assert rank.model_.attention is None
    assert all(np.isfinite(epoch["loss"]) for epoch in rank.log_.epochs)
    lists = funnel.run(requests)
    rank.save(tmp_path / "rank")
    loaded = type(rank).load(tmp_path / "rank", data)
    assert loaded.model_.evolution is not None
    before = rank(requests, lists["prerank"])
    after = loaded(requests, lists["prerank"])
    np.testing.assert_array_equal(before.items, after.items)
    np.testing.assert_array_equal(before.scores["rank"], after.scores["rank"])
    pairs = lists["prerank"].pairs()
    like = rank.score_pairs(requests, pairs).scores["rank.like"]
    np.testing.assert_array_equal(like, loaded.score_pairs(requests, pairs).scores["rank.like"])
    # A weight raised by `raise_prior` is saved and read back; a run saved before the key
    # existed sorts with rank.prior_weight; a weight below it is a broken file.
    import json

    from recfunnel.artifacts import RunFileError

    saved_weight, saved_bias = rank.prior_weight_, rank.bias_
    try:
        rank.prior_weight_ = math.inf
        rank.save(tmp_path / "raised")
        raised = type(rank).load(tmp_path / "raised", data)
        assert raised.prior_weight_ == math.inf
        assert not np.array_equal(raised(requests, lists["prerank"]).items, before.items)
        path = tmp_path / "raised" / "calibration.json"
        calibration = json.loads(path.read_text())
        del calibration["prior_weight"]
        path.write_text(json.dumps(calibration))
        assert type(rank).load(tmp_path / "raised", data).prior_weight_ == rank.config.prior_weight
        path.write_text(json.dumps({**calibration, "prior_weight": 0.5}))
        with pytest.raises(RunFileError, match="prior_weight"):
            type(rank).load(tmp_path / "raised", data)
        # Platt's shift is saved and read back; a run saved before it has none; a shift
        # that is not a number is a broken file.
        rank.prior_weight_ = saved_weight
        rank.bias_ = saved_bias + 0.25
        rank.save(tmp_path / "shifted")
        shifted = type(rank).load(tmp_path / "shifted", data)
        assert shifted.bias_ == rank.bias_
        moved = shifted.score_pairs(requests, pairs).scores["rank.like"]
        np.testing.assert_allclose(moved, like + 0.25)
        path = tmp_path / "shifted" / "calibration.json"
        calibration = json.loads(path.read_text())
        path.write_text(json.dumps({k: v for k, v in calibration.items() if k != "bias"}))
        assert type(rank).load(tmp_path / "shifted", data).bias_ == 0.0
        path.write_text(json.dumps({**calibration, "bias": "x"}))
        with pytest.raises(RunFileError, match="bias"):
            type(rank).load(tmp_path / "shifted", data)
    finally:
        rank.prior_weight_ = saved_weight
        rank.bias_ = saved_bias
    # A cold user (no history) gets a zero interest and finite scores.
    n = len(funnel.item_ids)
    empty = History(sp.csr_matrix((1, n)), sp.csr_matrix((1, n)))
    cold = Requests(np.array([10**6]), empty, np.full(1, funnel.now))
    pairs = Pairs(np.zeros(5, dtype=np.int64), np.arange(5))
    read = ("recall", "prerank", "item_to_item", "item_to_item.rating")
    for name in (*read, *rank.channel_features_):
        pairs = pairs.with_scores(name, np.zeros(5))
    scored = rank.score_pairs(cold, pairs)
    assert np.isfinite(scored.scores["rank"]).all()


def test_the_aux_loss_is_part_of_the_rank_training_loss(dien_funnel):
    """One epoch on the same stacked examples with the auxiliary loss weighted 0 and 1: the
    logged training loss must differ by about the aux loss (near 2 log 2 = 1.39 at first)."""
    from recfunnel.rank import RankStage

    funnel, data, _, stacked, _ = dien_funnel
    config = funnel["rank"].config
    logs = {}
    for weight in (0.0, 1.0):
        cfg = dataclasses.replace(config, epochs=1, aux_loss_weight=weight)
        logs[weight] = RankStage(cfg).fit(data, stacked).log_.epochs[0]["loss"]
    assert logs[1.0] - logs[0.0] > 0.5


def test_the_like_head_stops_learning_once_its_holdout_loss_stops_falling(dien_funnel):
    """The like head's valid LogLoss is logged after every epoch. With a holdout whose labels
    are flipped, that loss rises as the head learns, so it stops after the first epoch no
    better than the best before it; from the next epoch on the training loss is the watch
    head's alone, below the loss of the same run with rank.like_stopping off."""
    from recfunnel.rank import RankStage

    funnel, data, _, stacked, (requests, pairs) = dien_funnel
    assert pairs.labels is not None and len(pairs.rows)
    flipped = dataclasses.replace(pairs, labels=1 - pairs.labels)
    epochs = iter(range(100))  # a valid metric that always improves: no early stop

    def validate(stage):
        return float(next(epochs))

    logs, stopped = {}, {}
    for stopping in (True, False):
        cfg = dataclasses.replace(funnel["rank"].config, epochs=4, like_stopping=stopping)
        rank = RankStage(cfg).fit(data, stacked, validate, like_holdout=(requests, flipped))
        logs[stopping], stopped[stopping] = rank.log_.epochs, rank.like_stopped_after_
    losses = [epoch["like_logloss"] for epoch in logs[True]]
    assert len(losses) == 4 and all(np.isfinite(losses))
    first_worse = next(e for e in range(1, 4) if losses[e] >= min(losses[:e])) + 1
    assert stopped[True] == first_worse and stopped[False] is None
    for after in range(first_worse, 4):  # 0-based: the epochs after the stop
        assert logs[True][after]["loss"] < logs[False][after]["loss"] - 0.1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--rank.use_din=false", "--rank.interest=dien"], "use_din=false"),
        (["--rank.interest=lstm"], "rank.interest"),
        (["--rank.aux_loss_weight=-1"], "aux_loss_weight"),
        (["--rank.aux_loss_weight=nan"], "aux_loss_weight"),
    ],
)
def test_rank_interest_config_errors(overrides, message):
    from recfunnel.config import load_config
    from recfunnel.errors import ConfigError
    from recfunnel.run import PipelineConfig

    with pytest.raises(ConfigError, match=message):
        load_config(PipelineConfig, None, overrides)


@pytest.mark.parametrize("value", ["0", "-3"])
def test_rank_cross_rank_must_be_positive(value):
    from recfunnel.config import load_config
    from recfunnel.run import PipelineConfig

    with pytest.raises(ConfigError, match="cross_rank"):
        load_config(PipelineConfig, None, [f"--rank.cross_rank={value}"])
    assert load_config(PipelineConfig, None, ["--rank.cross_rank=32"]).rank.cross_rank == 32
    assert load_config(PipelineConfig, None, []).rank.cross_rank == 32  # chosen on valid
    assert load_config(PipelineConfig, None, ["--rank.cross_rank=none"]).rank.cross_rank is None


def test_the_default_is_din_and_the_other_settings_validate():
    from recfunnel.rank import RankConfig

    assert RankConfig().interest == "din" and RankConfig().use_din
    RankConfig(use_din=False).validate()  # no sequence field at all, as before DIEN
    RankConfig(interest="dien", aux_loss_weight=0.0).validate()  # DIEN without its aux loss


def test_history_row_keeps_the_newest_liked_items_ties_by_position():
    """The newest `max_sequence` liked items, ties in time by catalogue position: chosen by
    a partition before the sort, they are the full sort's first ones, tied times included."""
    from recfunnel.data.schema import LIKE_THRESHOLD
    from recfunnel.rank.features import RankFeatureSpace

    rng = np.random.default_rng(4)
    space = object.__new__(RankFeatureSpace)
    space.max_sequence = 5
    space.column_genres = rng.random((40, 18)).astype(np.float32)
    space.column_vocab = np.arange(1, 41)
    for size in (0, 1, 4, 5, 6, 12, 40):
        cols = np.sort(rng.choice(40, size, replace=False))
        vals = rng.integers(1, 6, size).astype(np.float64)
        ts = rng.integers(0, 4, size)  # few distinct times: many ties at the cut
        sequence, profile = np.zeros(5, np.int64), np.zeros(18, np.float32)
        n_liked = space._history_row(cols, vals, ts, sequence, profile)
        like = vals >= LIKE_THRESHOLD
        newest = cols[like][np.lexsort((cols[like], -ts[like]))][:5]
        assert n_liked == like.sum()
        np.testing.assert_array_equal(sequence, np.r_[newest + 1, np.zeros(5 - len(newest))])


def test_rank_select_blends_the_model_score_with_the_incoming_order():
    """rank.prior_weight w: the list is sorted by score / spread - w log(1 + position) over
    the incoming list's positions, and that key becomes scores["rank"] (the re-ranker's
    relevance); w = 0 sorts by the model's score and leaves it as it is. Padding stays last."""
    from recfunnel.types import Candidates

    items = np.array([[5, 6, 7, -1]])
    logits = np.array([[0.0, 1.0, 3.0, np.nan]])  # in the incoming order; the last pads
    candidates = Candidates(items, {"rank": logits})
    stage = RankStage(RankConfig(prior_weight=1.0))
    stage.logit_scale_, stage.prior_weight_ = 2.0, 1.0  # as fitted: the weight it sorts by
    blended = stage.select(candidates)
    # keys: 0 - log 1 = 0, 0.5 - log 2 = -0.19, 1.5 - log 3 = 0.40
    assert blended.items.tolist() == [[7, 5, 6, -1]]
    expected = [1.5 - np.log(3), 0.0, 0.5 - np.log(2)]
    np.testing.assert_allclose(blended.scores["rank"][0, :3], expected)
    assert np.isnan(blended.scores["rank"][0, 3])
    alone = RankStage(RankConfig(prior_weight=0.0))
    alone.prior_weight_ = 0.0
    alone = alone.select(candidates)
    assert alone.items.tolist() == [[7, 6, 5, -1]]
    np.testing.assert_array_equal(alone.scores["rank"][0, :3], [3.0, 1.0, 0.0])


def test_raise_prior_only_raises_the_weight_and_only_when_valid_clearly_says_so():
    """rank.prior_raise: after training, w may rise to 2, 4 or inf (the incoming order) when
    that beats the configured w on valid's users by 3 standard errors of the paired
    difference; a slightly better mean, a lower weight, w = 0 or the switch off keep it."""
    rng = np.random.default_rng(0)
    base = rng.random(600)
    noise = rng.normal(0.0, 0.2, 600)
    noise -= noise.mean()

    def stage_with(**config) -> RankStage:
        stage = RankStage(RankConfig(**config))
        stage.model_, stage.prior_weight_ = object(), stage.config.prior_weight  # as if fitted
        return stage

    def judge(gains: dict[float, float]):
        tried = []

        def validate(stage):
            tried.append(stage.prior_weight_)
            return base + gains.get(stage.prior_weight_, 0.0) + noise * (stage.prior_weight_ != 1)

        return validate, tried

    stage = stage_with(prior_weight=1.0)
    validate, tried = judge({math.inf: 0.1})  # ~10 standard errors
    choice = stage.raise_prior(validate)
    assert stage.prior_weight_ == math.inf and choice["weight"] == "inf"
    assert tried == [1.0, 2.0, 4.0, math.inf]  # never below the configured weight
    validate, _ = judge({4.0: 0.005})  # the best mean, by ~0.6 standard errors
    assert stage.raise_prior(validate)["best_mean"] == "4" and stage.prior_weight_ == 1.0
    validate, _ = judge({2.0: -0.1, 4.0: -0.1, math.inf: -0.1})
    assert stage.raise_prior(validate)["weight"] == "1" and stage.prior_weight_ == 1.0
    for off in (stage_with(prior_weight=1.0, prior_raise=False), stage_with(prior_weight=0.0)):
        assert off.raise_prior(judge({math.inf: 0.1})[0]) is None
        assert off.prior_weight_ == off.config.prior_weight


def test_the_blend_spread_is_measured_on_the_training_candidates_and_trains_nothing(dien_funnel):
    """logit_scale_ is the std of the ranking score on the training candidates, measured
    before every validation (which sorts by the blend) and for the weights kept; the blend's
    sample draws from a generator of its own, so the weights are those of a run without it."""
    from recfunnel.blend import logit_scale
    from recfunnel.rank import RankStage

    funnel, data, _, stacked, _ = dien_funnel
    seen: dict[float, list[float]] = {}
    models = {}
    for weight in (1.0, 0.0):

        def validate(stage, weight=weight):
            spreads = seen.setdefault(weight, [])
            spreads.append(stage.logit_scale_)
            return float(len(spreads))  # always better: no early stop

        cfg = dataclasses.replace(funnel["rank"].config, epochs=2, prior_weight=weight)
        models[weight] = RankStage(cfg).fit(data, stacked, validate)
    blended = models[1.0]
    on_candidates = stacked.pairs.subset(stacked.pairs.candidate)
    assert len(on_candidates) <= 1 << 15  # the sample is every candidate here
    scores = blended.score_pairs(stacked.requests, on_candidates).scores["rank"]
    assert blended.logit_scale_ == pytest.approx(logit_scale(scores), rel=1e-6)
    assert len(seen[1.0]) == 2 and seen[1.0][0] != 1.0  # measured before each validation
    assert seen[0.0] == [1.0, 1.0] and models[0.0].logit_scale_ == 1.0  # w = 0: never read
    for name, value in blended.model_.state_dict().items():
        torch.testing.assert_close(value, models[0.0].model_.state_dict()[name], msg=name)


@pytest.mark.parametrize("value", ["-1", "inf", "nan"])
def test_rank_prior_weight_must_be_finite_and_not_negative(value):
    from recfunnel.config import load_config
    from recfunnel.run import PipelineConfig

    with pytest.raises(ConfigError, match="rank.prior_weight"):
        load_config(PipelineConfig, None, [f"--rank.prior_weight={value}"])
    assert load_config(PipelineConfig, None, []).rank.prior_weight == 1.0  # the backtest's
    assert load_config(PipelineConfig, None, ["--rank.prior_weight=0"]).rank.prior_weight == 0
