"""The stage contract: every part of the funnel is a `Component`.

    component = SomeStage(SomeConfig(...))         # the constructor only stores the config
    component.fit(data)                            # recall channels, item-to-item, re-rank
    component.fit(data, stacked, validate)         # pre-rank and rank: stacked examples
    out = component(requests, candidates)          # Candidates -> new Candidates
    component.save(directory); SomeStage.load(directory, data)   # JSON, NPY, state dicts

A component that scores pairs is a `Scorer`: it also answers `score_pairs(requests, pairs)`
for arbitrary (request, item) pairs, which is how the funnel scores rated pairs for AUC and
builds the later stages' training data, and its call is "score every candidate, then
`select`" (keep the top k, re-sort, or keep all). A new recall channel, re-ranker or ranking
model is one module with such a class plus its config section; the contract tests in
`tests/test_contract.py` then cover it without new test code.

Fitted attributes end with `_` (scikit-learn's convention); using a component before `fit`
or `load` raises `NotFittedError`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from recfunnel.config import config_from_json, save_config
from recfunnel.data.dataset import MovieLens
from recfunnel.data.split import Split
from recfunnel.errors import ConfigError, NotFittedError
from recfunnel.kernel import BatchKernel, Kernel
from recfunnel.scale import ScaleConfig
from recfunnel.types import Candidates, Pairs, Requests

C = TypeVar("C", bound="Component")
Validate = Callable[["Component"], float]


@dataclass(frozen=True)
class FitData:
    """What any component may read when it fits or loads: the data set (side tables), the
    split (fit on `split.train`; `split.valid` only to early-stop) and the catalogue."""

    ml: MovieLens
    split: Split
    item_ids: np.ndarray  # (n_items,) raw movie ids, ascending: the catalogue positions
    progress: bool = True
    device: str = "cpu"  # where torch components compute: "cpu", "cuda:0" (resolved, see device.py)
    scale: ScaleConfig = field(default_factory=ScaleConfig)  # item x item models' size choice

    def with_split(self, split: Split) -> FitData:
        return FitData(self.ml, split, self.item_ids, self.progress, self.device, self.scale)


@dataclass(frozen=True)
class Stacked:
    """Training data of a stage after recall (see `training.stacking`): replayed requests and
    labelled pairs carrying every earlier stage's out-of-sample score and the recall
    embeddings."""

    requests: Requests
    pairs: Pairs

    def subset(self, keep: np.ndarray) -> Stacked:
        return Stacked(self.requests, self.pairs.subset(keep))


class Component(ABC):
    """One part of the funnel (see the module docstring)."""

    name: ClassVar[str]  # its folder in a run directory, its score's key in Candidates
    config_class: ClassVar[type]
    fitted_attribute: ClassVar[str] = "config_"  # set by fit and load

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.config_class()

    @abstractmethod
    def fit(
        self,
        data: FitData,
        stacked: Stacked | None = None,
        validate: Validate | None = None,
    ) -> Component:
        """Learn from `data` (and, for the stages after recall, the `stacked` examples);
        `validate(component) -> float` early-stops where the component trains in epochs.
        Returns self."""

    @abstractmethod
    def __call__(self, requests: Requests, candidates: Candidates, **options: Any) -> Candidates:
        """The new candidate lists of the B requests, given the incoming lists (B rows)."""

    # --- persistence ------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """config.json plus the component's own files (JSON, NPY, state dicts)."""
        self.check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_config(self.config, directory / "config.json")
        self._save(directory)

    @classmethod
    def load(cls: type[C], directory: Path, data: FitData) -> C:
        """Rebuild from `save`'s files; side tables come from `data` (the run's data check
        guarantees it is the data the component was fitted on)."""
        component = cls(config_from_json(cls.config_class, Path(directory) / "config.json"))
        component._load(Path(directory), data)
        component.config_ = component.config
        return component

    def _save(self, directory: Path) -> None:  # noqa: B027 - a hook, empty by default
        """Write what `_load` reads (nothing for a component without learned state)."""

    def _load(self, directory: Path, data: FitData) -> None:  # noqa: B027 - likewise
        """Restore the fitted state from `directory` (and side tables from `data`)."""

    # --- serving fast path (recfunnel.kernel) -------------------------------------------------
    def serving_kernel(self) -> Kernel:
        """A new one-request kernel from the fitted state; by default the batch call on a
        one-row `Requests`. Components with a numpy kernel override this."""
        self.check_fitted()
        return BatchKernel(self)

    def kernel(self) -> Kernel:
        """The component's kernel, built on first use and kept (fitting drops it)."""
        kernel = self.__dict__.get("_kernel")
        if kernel is None:
            kernel = self._kernel = self.serving_kernel()
        return kernel

    def forget_kernel(self) -> None:
        """Drop the kept kernel (after the fitted state changed, e.g. a refresh)."""
        self.__dict__.pop("_kernel", None)

    # --- fitted state -----------------------------------------------------------------------
    def _fitted(self) -> None:
        """Mark the component fitted (call at the end of `fit`)."""
        self.config_ = self.config
        self.forget_kernel()

    def check_fitted(self) -> None:
        if not hasattr(self, self.fitted_attribute):
            raise NotFittedError(
                f"{type(self).__name__} is not fitted; call fit() or {type(self).__name__}.load()"
            )


class Scorer(Component):
    """A component that scores (request, item) pairs; its call scores every candidate under
    `scores[name]` (and the `carried` scores beside it) and then `select`s the list it hands
    on."""

    # Further scores of `score_pairs` that the candidates carry on to the later stages.
    carried: tuple[str, ...] = ()

    @abstractmethod
    def score_pairs(self, requests: Requests, pairs: Pairs) -> Pairs:
        """The pairs with this component's score(s) added (n,), e.g. scores[name]."""

    def __call__(self, requests: Requests, candidates: Candidates, **options: Any) -> Candidates:
        self.check_fitted()
        if len(candidates) != len(requests):
            raise ConfigError(
                f"{self.name}: {len(candidates)} candidate lists for {len(requests)} requests"
            )
        scored = self.score_pairs(requests, candidates.pairs())
        for name in (self.name, *self.carried):
            candidates = candidates.with_scores(name, scored.scores[name])
        return self.select(candidates, **options)

    def select(self, candidates: Candidates, **options: Any) -> Candidates:
        """The list handed on, from the scored one: by default all of it, in its order."""
        return candidates


def require_stacked(stacked: Stacked | None, name: str) -> Stacked:
    """The stacked examples a stage after recall trains on; a clear error without them."""
    if stacked is None or stacked.pairs.labels is None:
        raise ConfigError(f"{name} trains on stacked, labelled examples: fit(data, stacked)")
    return stacked
