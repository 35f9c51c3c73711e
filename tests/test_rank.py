"""The funnel's value type and the pre-rank / rank modules, on hand-sized tensors."""

import numpy as np
import pytest
import torch

from recfunnel.errors import ConfigError
from recfunnel.prerank.model import PreRankMLP
from recfunnel.rank.features import DENSE
from recfunnel.rank.model import CrossNetwork, RankModel, RankSizes, TargetAttention
from recfunnel.rank.stage import RankConfig, RankStage
from recfunnel.types import Pairs


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

    def __init__(self, logits: np.ndarray) -> None:
        super().__init__(RankConfig())
        self.logits, self.model_ = logits, object()
        self._fitted()

    def score_pairs(self, requests, pairs, batch_size: int = 8192):
        like = self.logits / self.temperature_
        return pairs.with_scores("rank.like", like)


def test_calibration_recovers_an_overconfident_temperature():
    rng = np.random.default_rng(0)
    true = rng.normal(0.0, 1.5, 20_000)
    labels = (rng.random(true.size) < 1 / (1 + np.exp(-true))).astype(np.float32)
    # The head is overconfident by a factor 2: its logits are twice the true ones.
    stage = _FixedLogits(2.0 * true)
    pairs = Pairs(np.zeros(true.size, np.int64), np.zeros(true.size, np.int64), labels=labels)
    out = stage.calibrate(None, pairs)
    assert out["temperature"] == pytest.approx(2.0, rel=0.05)
    assert out["logloss_after"] < out["logloss_before"]
    # Afterwards the head's scores are divided by it.
    scaled = stage.score_pairs(None, pairs).scores["rank.like"]
    np.testing.assert_allclose(scaled, 2.0 * true / stage.temperature_)
    with pytest.raises(ConfigError, match="labelled"):
        stage.calibrate(None, Pairs(np.zeros(3, np.int64), np.zeros(3, np.int64)))
