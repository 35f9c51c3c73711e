"""Pre-rank's list shrunk towards the incoming order (`recfunnel.blend`): the weight chosen
on a holdout, kept through save / load, and applied alike by the batch call and the kernel.

Synthetic lists, no MovieLens: B requests of N candidates drawn at random from a catalogue,
random recall vectors, one scalar input (scores["recall"]). Which of the two signals holds
the labels (the incoming position, or the scalar the MLP reads) is set per test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from recfunnel.artifacts import RunFileError
from recfunnel.blend import blend_key, choose_weight, position_prior
from recfunnel.errors import ConfigError
from recfunnel.kernel import Row
from recfunnel.prerank import PreRankConfig, PreRankStage
from recfunnel.stage import Stacked
from recfunnel.types import Candidates, Embeddings, History, Pairs, Requests

N_ITEMS, N, KEEP, DIM = 300, 40, 10, 8


def _requests(b: int) -> Requests:
    empty = sp.csr_matrix((b, N_ITEMS))
    return Requests(np.arange(b), History(empty, empty.copy()), np.zeros(b, np.int64))


def _lists(
    b: int, signal: str, rng: np.random.Generator, items: np.ndarray
) -> tuple[Candidates, np.ndarray]:
    """B lists (B, N) and their labels (B, N): the first KEEP positions (`signal`
    "position": the incoming order is right, the scalar is noise) or the KEEP highest
    scalars ("scalar": the MLP can learn it, the incoming order is random)."""
    chosen = np.stack([rng.permutation(N_ITEMS)[:N] for _ in range(b)])
    scalar = rng.normal(size=(b, N))
    labels = np.zeros((b, N), np.float32)
    if signal == "position":
        labels[:, :KEEP] = 1
    else:
        top = np.argsort(-scalar, axis=1)[:, :KEEP]
        np.put_along_axis(labels, top, 1.0, axis=1)
    users = rng.normal(size=(b, DIM)).astype(np.float32)
    cands = Candidates(chosen, {"recall": scalar}, {}, Embeddings(users, items))
    return cands, labels


def _stacked(cands: Candidates, labels: np.ndarray) -> Stacked:
    flat = cands.pairs()
    n = len(flat)
    pairs = Pairs(
        flat.rows,
        flat.items,
        flat.scores,
        flat.embeddings,
        labels[cands.valid].astype(np.float32),
        np.ones(n, bool),
        np.ones(n, bool),
    )
    return Stacked(_requests(len(cands)), pairs)


def _recall_at_keep(stage: PreRankStage, cands: Candidates, labels: np.ndarray) -> float:
    """Share of the liked candidates in the kept KEEP, averaged over the lists."""
    kept = stage(_requests(len(cands)), cands, keep=KEEP).items
    hits = [np.isin(kept[r], cands.items[r][labels[r] > 0]).sum() for r in range(len(cands))]
    return float(np.mean(np.asarray(hits) / labels.sum(1)))


def _config(**changes: object) -> PreRankConfig:
    base = dict(keep=KEEP, use_cf=False, use_channels=False, epochs=3, batch_size=256)
    return PreRankConfig(**{**base, **changes})  # type: ignore[arg-type]


def _fit(signal: str, seed: int = 0, **changes: object) -> tuple[PreRankStage, Candidates]:
    """A stage fitted on 300 lists where `signal` holds the labels, w chosen (unless fixed
    by `changes`) on 200 more: the valid callback of `train_funnel`'s shape."""
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    train, train_labels = _lists(300, signal, rng, items)
    valid, valid_labels = _lists(200, signal, rng, items)
    stage = PreRankStage(_config(**changes)).fit(
        None,
        _stacked(train, train_labels),
        lambda s: _recall_at_keep(s, valid, valid_labels),  # type: ignore[arg-type]
    )
    return stage, valid


def test_choose_weight_takes_the_best_and_breaks_ties_to_the_smaller() -> None:
    weight, grid = choose_weight(lambda w: {0.5: 2.0, 1.0: 2.0}.get(w, 1.0))
    assert weight == 0.5 and list(grid) == ["0", "0.25", "0.5", "1", "2", "4", "inf"]
    assert choose_weight(lambda w: float(math.isinf(w)))[0] == math.inf
    assert choose_weight(lambda w: 0.0)[0] == 0.0


def test_choose_weight_keeps_the_anchor_unless_clearly_beaten() -> None:
    """Pre-rank's rule (anchor inf, recall's order): per-user holdout results move the
    weight only when the best beats the anchor by 3 standard errors of the paired difference;
    one number per weight cannot be judged so, and the best mean wins."""
    rng = np.random.default_rng(0)
    base = rng.random(500)
    noise = rng.normal(0.0, 0.2, 500)
    noise -= noise.mean()  # so the gains below are exactly 0.005 and 0.1
    slight = {2.0: base + 0.005 + noise}  # the best mean, by 0.5 standard errors
    weight, grid = choose_weight(lambda w: slight.get(w, base), anchor=math.inf)
    assert weight == math.inf and max(grid, key=grid.__getitem__) == "2"
    clear = {2.0: base + 0.1 + noise}  # by ~11 standard errors
    assert choose_weight(lambda w: clear.get(w, base), anchor=math.inf)[0] == 2.0
    means = {2.0: 0.6}
    assert choose_weight(lambda w: means.get(w, 0.5), anchor=math.inf)[0] == 2.0
    assert choose_weight(lambda w: slight.get(w, base))[0] == 2.0  # no anchor: the best


def test_blend_key_ends_are_the_logit_and_the_incoming_order() -> None:
    logits = np.array([[0.3, 2.0, np.nan], [1.0, -1.0, 0.5]])
    assert blend_key(logits, 0.0, 7.0) is logits  # w = 0: not even a division
    cands = Candidates(np.array([[5, 6, -1], [1, 2, 3]]), {"prerank": logits})
    passed = cands.top_by(blend_key(logits, math.inf, 7.0), 3)
    np.testing.assert_array_equal(passed.items, cands.items)  # inf: the incoming order
    mixed = blend_key(logits, 2.0, 0.5)
    np.testing.assert_allclose(mixed[1], logits[1] / 0.5 + 2.0 * position_prior(3))
    # One row's key is the batch row's, bit for bit (the kernel's case).
    np.testing.assert_array_equal(blend_key(logits[1], 2.0, 0.5), mixed[1])
    row = Row(cands.items[1], {"prerank": logits[1]}, {})
    np.testing.assert_array_equal(row.top_by(mixed[1], 2).items, cands.top_by(mixed, 2).items[1])


def test_useless_logit_chooses_the_incoming_order() -> None:
    stage, valid = _fit("position")
    choice = stage.prior_choice_
    assert choice is not None and choice["weight"] == "inf" and stage.prior_weight_ == math.inf
    assert set(choice["grid"]) == {"0", "0.25", "0.5", "1", "2", "4", "inf"}
    assert choice["grid"]["inf"] == 1.0 > choice["grid"]["0"]  # the first KEEP, all liked
    np.testing.assert_array_equal(stage(_requests(len(valid)), valid).items, valid.items[:, :KEEP])


def test_useless_prior_keeps_the_learned_order() -> None:
    stage, _ = _fit("scalar")
    choice = stage.prior_choice_
    assert choice is not None and choice["weight"] == "0" and stage.prior_weight_ == 0.0
    assert choice["grid"]["0"] > choice["grid"]["inf"] + 0.3


def test_a_fixed_weight_is_not_chosen_and_no_holdout_means_zero() -> None:
    stage, _ = _fit("position", prior_weight=1.5)
    assert stage.prior_weight_ == 1.5 and stage.prior_choice_ is None
    rng = np.random.default_rng(1)
    cands, labels = _lists(50, "position", rng, rng.normal(size=(N_ITEMS, DIM)).astype("f4"))
    unvalidated = PreRankStage(_config()).fit(None, _stacked(cands, labels), epochs=1)
    assert unvalidated.prior_weight_ == 0.0 and unvalidated.prior_choice_ is None
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ConfigError, match="prior_weight"):
            _config(prior_weight=bad).validate()


def test_the_weight_is_chosen_by_its_own_metric_not_the_early_stopping_one() -> None:
    """`choose` (prior_metric) decides w; `validate` only early-stops. Here the early-stopping
    callback prefers the MLP's order and the choosing one the incoming order."""
    rng = np.random.default_rng(3)
    items = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    train, train_labels = _lists(300, "scalar", rng, items)
    valid, valid_labels = _lists(200, "scalar", rng, items)

    def prefers_incoming(stage: PreRankStage) -> float:
        return float(math.isinf(stage.prior_weight_))

    stage = PreRankStage(_config(prior_metric="recall@10")).fit(
        None,
        _stacked(train, train_labels),
        lambda s: _recall_at_keep(s, valid, valid_labels),  # type: ignore[arg-type]
        choose=prefers_incoming,  # type: ignore[arg-type]
    )
    choice = stage.prior_choice_
    assert choice is not None and choice["weight"] == "inf" and choice["metric"] == "recall@10"
    assert stage.prior_weight_ == math.inf
    with pytest.raises(ConfigError, match="prior_metric"):
        _config(prior_metric="ndcg").validate()


def _one(cands: Candidates, r: int) -> Row:
    """List r of `cands` as the kernel's one-request Row."""
    assert cands.embeddings is not None
    emb = Embeddings(cands.embeddings.users[r : r + 1], cands.embeddings.items)
    scores = {name: s[r : r + 1] for name, s in cands.scores.items()}
    return Row.of(Candidates(cands.items[r : r + 1], scores, {}, emb))


@pytest.mark.parametrize("weight", [0.7, math.inf])
def test_kernel_keeps_the_batch_lists(weight: float) -> None:
    stage, valid = _fit("position", prior_weight=0.0)
    requests = _requests(len(valid))
    by_logit = stage(requests, valid).items
    stage.prior_weight_ = weight
    stage.forget_kernel()  # the kernel reads the weight when it is built
    batch = stage(requests, valid)
    # The blend moves lists (else this test could not tell a kernel without it).
    assert (batch.items != by_logit).any(axis=1).mean() > 0.5
    kernel = stage.kernel()
    for r in range(len(valid)):
        got = kernel.row(None, _one(valid, r))  # type: ignore[arg-type]
        np.testing.assert_array_equal(got.items, batch.items[r])
        np.testing.assert_allclose(
            got.scores["prerank"], batch.scores["prerank"][r], rtol=2e-5, atol=2e-5
        )


def _save_load(stage: PreRankStage, tmp_path: Path, edit=None) -> PreRankStage:
    stage.save(tmp_path / "prerank")
    if edit is not None:
        path = tmp_path / "prerank" / "state.json"
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    return PreRankStage.load(tmp_path / "prerank", SimpleNamespace(device="cpu"))  # type: ignore[arg-type]


@pytest.mark.parametrize("weight", [1.5, math.inf])
def test_save_load_keeps_the_weight_and_the_lists(weight: float, tmp_path: Path) -> None:
    stage, valid = _fit("position", prior_weight=0.0)
    stage.prior_weight_ = weight
    loaded = _save_load(stage, tmp_path)
    assert loaded.prior_weight_ == weight and loaded.logit_scale_ == stage.logit_scale_
    requests = _requests(len(valid))
    np.testing.assert_array_equal(loaded(requests, valid).items, stage(requests, valid).items)


def test_a_state_without_the_weight_loads_as_the_learned_order(tmp_path: Path) -> None:
    stage, valid = _fit("position")
    assert stage.prior_weight_ == math.inf  # so the old behaviour is visibly another list

    def old(state: dict) -> dict:
        return {k: v for k, v in state.items() if k not in ("prior_weight", "logit_scale")}

    requests = _requests(len(valid))
    blended = stage(requests, valid).items
    loaded = _save_load(stage, tmp_path, old)
    assert loaded.prior_weight_ == 0.0
    stage.prior_weight_ = 0.0
    np.testing.assert_array_equal(loaded(requests, valid).items, stage(requests, valid).items)
    assert not np.array_equal(loaded(requests, valid).items, blended)


@pytest.mark.parametrize(
    "bad", [{"prior_weight": -1.0}, {"prior_weight": "big"}, {"logit_scale": 0}]
)
def test_a_bad_saved_weight_is_a_run_file_error(bad: dict, tmp_path: Path) -> None:
    stage, _ = _fit("position", prior_weight=1.0)
    with pytest.raises(RunFileError, match="prior_weight"):
        _save_load(stage, tmp_path, lambda state: {**state, **bad})
