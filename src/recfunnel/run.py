"""Run directories: the resolved config, a manifest and each trained stage, written atomically.

    RUN_DIR/
      config.json     the resolved PipelineConfig (defaults + TOML file + overrides)
      manifest.json   package version, data checksum, split, seed, stages, training time,
                      and the size and SHA-256 of every file below
      recall/         the recall stage's config; one folder per channel:
        two_tower/    config, vocabularies, weights, training curve, and index/ (item
                      embeddings and ids + index.json, rebuildable for other backends)
      item_to_item/   the EASE weights of the item-to-item score
      prerank/        the pre-rank MLP (config, weights, input scaling, training curve)
      rank/           the rank model (config, weights, input scaling, training curve)
      rerank/         the MMR config
      report.md, report.json, *.png   written by `recfunnel evaluate RUN_DIR`

Every file is JSON, NPY or a torch state dict loaded with weights_only=True: no pickle.

A run is built in a hidden sibling folder and swapped into place only when complete, so an
interrupted `train` never leaves a directory that looks finished, and `--overwrite` never
deletes a folder that is not a run. The manifest lists every file with its size and SHA-256;
loading checks them, then the version and the data: a damaged run, or one made by another
package version or on other data, is refused with one clear line, not silently mis-scored.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno as _errno
import fnmatch
import functools
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from recfunnel import __version__
from recfunnel.artifacts import RunFileError, digest_files, verify_files
from recfunnel.atomic import umask_mode
from recfunnel.config import config_from_json, param, save_config, section
from recfunnel.data.dataset import MovieLens
from recfunnel.data.movielens import load_movielens
from recfunnel.data.split import Split, make_split
from recfunnel.device import resolve_device
from recfunnel.errors import ConfigError, RecfunnelError
from recfunnel.evaluation.protocol import catalogue
from recfunnel.features import serving_time
from recfunnel.funnel import Funnel, FunnelConfig
from recfunnel.item_to_item import ItemToItemConfig
from recfunnel.manifest import MANIFEST, OLD, read_manifest
from recfunnel.prerank import PreRankConfig
from recfunnel.rank import RankConfig
from recfunnel.recall import RecallConfig
from recfunnel.recall.index import ItemIndex, make_index
from recfunnel.rerank import RerankConfig
from recfunnel.scale import ScaleConfig
from recfunnel.scale import plan as scale_plan
from recfunnel.stage import FitData
from recfunnel.training.recipe import TrainReport
from recfunnel.training.stacking import StackingConfig

RUN_FORMAT = 3  # 2: every file listed with size and SHA-256; 3: a folder per component
INDEX_DIR = "recall/two_tower/index"  # the ANN index; without it recall searches exactly
# Files `recfunnel evaluate` and `bench` add to a run after training (relative paths).
GENERATED = (
    "report.md",
    "report.json",
    "*.png",
    "recall_metrics.json",
    "bench.json",
    "report-*/report.md",
    "report-*/report.json",
    "report-*/*.png",
)
_PARTIAL = ".partial-"  # hidden build folder of a run: .NAME.partial-<random>
_PARTIAL_MARKER = ".recfunnel-partial"  # inside it until the run is complete

log = logging.getLogger(__name__)

# Tiny models for smoke runs on the synthetic data: the test suite and the notebook's fast mode
# train with these overrides (a few seconds on two cores). Not a config to report numbers of.
SMOKE_OVERRIDES: tuple[str, ...] = (
    "--recall.two_tower.epochs=2",
    "--recall.two_tower.dim=16",
    "--recall.two_tower.out_dim=16",
    "--recall.two_tower.hidden=32",
    "--recall.two_tower.batch_size=512",
    "--recall.two_tower.threads=1",
    "--recall.two_tower.valid_metric=recall@50",
    "--recall.lightgcn.epochs=3",
    "--recall.lightgcn.dim=16",
    "--recall.lightgcn.threads=1",
    "--recall.sequence.epochs=2",
    "--recall.sequence.dim=16",
    "--recall.sequence.ffn_dim=32",
    "--recall.sequence.max_len=50",
    "--recall.sequence.threads=1",
    "--recall.sequence.valid_metric=recall@50",
    "--funnel.topk_recall=50",
    "--prerank.keep=30",
    "--prerank.epochs=2",
    "--prerank.valid_metric=recall@30",
    "--rank.epochs=2",
    "--rank.dim=8",
    "--rank.deep=32",
    "--rank.max_sequence=10",
    "--index.backend=exact",
)


# `index.backend = "auto"` searches exactly up to this many catalogue items. One query's
# exact search is a (1, d) @ (d, n) product, linear in n: ~0.03 ms at ML-1M's 3,706 items
# (HNSW: ~0.2 ms for the same list, approximately) and ~3.8 ms at 1M items (`make bench-ann`:
# 266 one-thread queries/s), so about 0.4 ms at 100,000, where an HNSW or IVF search of a
# few hundred candidates costs about as much; beyond it an ANN index is the faster one.
AUTO_EXACT_MAX_ITEMS = 100_000


@dataclass(frozen=True)
class IndexConfig:
    """The top-K index that serves the recall stage's item vectors."""

    backend: Literal["auto", "exact", "hnsw", "ivf"] = param(
        "auto",
        "exact, hnsw or ivf (FAISS); auto: exact search for a catalogue of at most "
        "index.exact_max_items items (the faster one there, and the exact list), hnsw beyond",
    )
    exact_max_items: int = param(
        AUTO_EXACT_MAX_ITEMS, "auto: the largest catalogue searched exactly"
    )
    hnsw_m: int = param(32, "HNSW: neighbours per node")
    ef_construction: int = param(200, "HNSW: candidate list size while building")
    ef_search: int = param(256, "HNSW: candidate list size while searching")
    ivf_nlist: int | None = param(None, "IVF: number of clusters (none: about sqrt(n_items))")
    ivf_nprobe: int = param(16, "IVF: clusters visited per query")

    def validate(self) -> None:
        if self.exact_max_items < 0:
            raise ConfigError(f"index.exact_max_items must be >= 0, got {self.exact_max_items}")

    def resolved(self, n_items: int | None) -> str:
        """The backend for a catalogue of `n_items` items: `backend` itself unless it is
        "auto": exact up to `exact_max_items` items, hnsw beyond or when the size is unknown."""
        if self.backend != "auto":
            return self.backend
        return "exact" if n_items is not None and n_items <= self.exact_max_items else "hnsw"

    def build(self, n_items: int | None) -> ItemIndex:
        """An unbuilt index of the configured backend for a catalogue of `n_items` items
        (which "auto" reads, so it is asked for: None, unknown, means hnsw). The batch and
        serving paths both search the index built here, so their lists stay equal."""
        self.validate()  # a config built in code has not been through load_config's checks
        backend = self.resolved(n_items)
        params: dict[str, Any] = {
            "exact": {},
            "hnsw": {
                "M": self.hnsw_m,
                "ef_construction": self.ef_construction,
                "ef_search": self.ef_search,
            },
            "ivf": {"nlist": self.ivf_nlist, "nprobe": self.ivf_nprobe},
        }[backend]
        return make_index(backend, **params)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything `recfunnel train` needs; written to RUN_DIR/config.json."""

    dataset: Literal["ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m"] = param(
        "ml-1m",
        "MovieLens release to train on (data.datasets; `recfunnel train --dataset` sets it); "
        "the run's manifest records it, so evaluate and serve reload the same data",
    )
    split: Literal["global", "per_user", "backtest"] = param(
        "global",
        "split protocol (protocol.md); backtest: a holdout inside train + valid for choosing "
        "defaults (its test part ends where the real valid part does)",
    )
    funnel: FunnelConfig = section(FunnelConfig, "list sizes of the funnel")
    recall: RecallConfig = section(RecallConfig, "recall channels and their merge")
    index: IndexConfig = section(IndexConfig, "top-K index over the two-tower item vectors")
    stacking: StackingConfig = section(StackingConfig, "leakage-free data for pre-rank and rank")
    item_to_item: ItemToItemConfig = section(ItemToItemConfig, "item-to-item (EASE) score")
    scale: ScaleConfig = section(
        ScaleConfig, "item x item models at large catalogues (dense or sparse EASE, RP3beta)"
    )
    prerank: PreRankConfig = section(PreRankConfig, "pre-rank MLP")
    rank: RankConfig = section(RankConfig, "rank model (DIN + DCN-v2)")
    rerank: RerankConfig = section(RerankConfig, "MMR re-rank")
    device: Literal["auto", "cpu", "cuda"] = param(
        "auto",
        "where the torch parts (two-tower, LightGCN, sequence, pre-rank, rank) train: auto is "
        "cuda when torch sees a GPU, else cpu; cuda without one is an error (`--device` on "
        "train sets it; evaluate, recommend, serve and bench load a run on their own --device)",
    )
    seed: int | None = param(
        None,
        "one seed for every trained part: when set, it replaces recall.two_tower.seed, "
        "recall.lightgcn.seed, recall.sequence.seed, prerank.seed and rank.seed (each 0 by "
        "default, so seed 0 is the default run)",
    )

    def seeded(self) -> PipelineConfig:
        """The config with `seed` written into every stage's and channel's own seed field
        (itself when `seed` is none), so the saved config says what each part used."""
        if self.seed is None:
            return self
        seed, replace = self.seed, dataclasses.replace
        recall = replace(
            self.recall,
            two_tower=replace(self.recall.two_tower, seed=seed),
            lightgcn=replace(self.recall.lightgcn, seed=seed),
            sequence=replace(self.recall.sequence, seed=seed),
        )
        return replace(
            self,
            recall=recall,
            prerank=replace(self.prerank, seed=seed),
            rank=replace(self.rank, seed=seed),
        )


def write_run(
    out: Path,
    config: PipelineConfig,
    ml: MovieLens,
    funnel: Funnel,
    report: TrainReport,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a complete run directory at `out`, atomically.

    The run is built in a hidden sibling folder, its manifest (with the size and SHA-256 of
    every file) written last, then swapped into place: at every instant `out` holds the
    complete old run or the complete new one. `overwrite` only ever replaces a run
    directory (see `check_out`); stale folders of interrupted writes are removed first.
    """
    config = config.seeded()
    out = Path(out)
    check_out(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{_PARTIAL}", dir=out.parent))
    try:
        (tmp / _PARTIAL_MARKER).touch()
        # The config as served: settings that training chose (the re-ranker's lambda) are
        # written in, so the run reloads with them.
        if "rerank" in funnel.stages:
            config = dataclasses.replace(config, rerank=funnel["rerank"].config)
        save_config(config, tmp / "config.json")
        funnel.save(tmp)
        manifest = {
            "package": "recfunnel",
            "format": RUN_FORMAT,
            "version": __version__,
            "dataset": ml.dataset,
            "data_sha256": ml.checksum,
            "item_item": scale_plan(len(catalogue(ml.ratings)), config.scale),
            "split": config.split,
            "seed": config.recall.two_tower.seed,
            "stages": list(funnel.stages),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "train_seconds": report.seconds,
            "stacking_examples": report.examples,
            "chosen_on_holdout": report.choices,
            "trained_on": report.trained_on,
            "files": digest_files(tmp, skip=(_PARTIAL_MARKER,)),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        # From here on the folder is a complete run, recognised as ours by its manifest.
        (tmp / _PARTIAL_MARKER).unlink()
        tmp.chmod(umask_mode(directory=True))
        replace_dir(tmp, out)
    except BaseException:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def check_out(out: Path, *, overwrite: bool) -> None:
    """Refuse an `--out` that training must not write to: an existing folder without
    `overwrite`; with it, anything but a run directory that holds only files this project
    wrote; and always the current folder, an ancestor of it, the home folder or a file."""
    out = Path(out)
    resolved = out.expanduser().resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise ConfigError(
            f"--out {out} is the current folder or one of its parents; "
            "name a new folder for the run, e.g. runs/default"
        )
    if resolved == Path.home().resolve():
        raise ConfigError(f"--out {out} is the home folder; name a new folder for the run")
    # write_run creates the missing folders above `out` and builds the run beside it: the
    # nearest existing one must be a folder it can write into.
    ancestor = out.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"--out {out}: {ancestor} is not a folder; choose another --out")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: cannot write into {ancestor}; choose another --out")
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise ConfigError(f"--out {out} exists and is not a folder; choose another --out")
    if not overwrite:
        raise ConfigError(f"{out} already exists; choose another --out or pass --overwrite")
    foreign = foreign_file(out)
    if foreign is not None:
        raise ConfigError(
            f"--overwrite refused: {out} {foreign}; only a run directory made by "
            "`recfunnel train` is replaced. Choose another --out or move that folder away"
        )


def foreign_file(directory: Path) -> str | None:
    """Why `directory` is not a run that may be deleted, or None when it is one: it has a
    manifest this project wrote, and every file in it is listed there or is an output of
    `recfunnel evaluate` / `bench`."""
    try:
        manifest = read_manifest(directory)
    except RecfunnelError:
        return "is not a recfunnel run directory (no valid manifest.json)"
    files = manifest.get("files")
    if manifest.get("package") != "recfunnel" or not isinstance(files, dict):
        return "has a manifest.json that recfunnel did not write"
    for path in sorted(directory.rglob("*")):
        name = path.relative_to(directory).as_posix()
        if path.is_symlink() or not (path.is_dir() or path.is_file()):
            return f"holds {name}, which is not a plain file"
        if path.is_file() and name != MANIFEST and name not in files and not _generated(name):
            return f"holds {name}, which recfunnel did not write"
    return None


def _generated(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in GENERATED)


def replace_dir(new: Path, out: Path) -> None:
    """Move the folder `new` to `out`, replacing the folder there, so that `out` always
    holds one of the two whole. Linux swaps them in one step (renameat2 RENAME_EXCHANGE);
    elsewhere the old folder is renamed aside first, leaving a short gap."""
    if not out.exists():
        os.rename(new, out)
        return
    if _exchange(new, out):
        shutil.rmtree(new)  # `new` now holds the old run
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}{OLD}", dir=out.parent))
    os.rename(out, aside / "run")
    os.rename(new, out)
    shutil.rmtree(aside)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False when unsupported."""
    libc = _libc()
    renameat2 = getattr(libc, "renameat2", None) if libc is not None else None
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if result == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (_errno.ENOSYS, _errno.EINVAL, _errno.ENOTSUP):  # kernel or filesystem
        return False
    raise OSError(errno, f"cannot swap {a} and {b}: {os.strerror(errno)}")


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def clean_stale(out: Path) -> list[Path]:
    """Remove what interrupted writes of `out` left beside it: build folders (marked as
    ours) and set-aside or swapped-out old runs. Returns the folders removed."""
    removed = []
    for path in sorted(Path(out).parent.glob(f".{out.name}.*")):
        name = path.name[len(out.name) + 1 :]
        if not path.is_dir() or path.is_symlink():
            continue
        if name.startswith(_PARTIAL):
            ours = (path / _PARTIAL_MARKER).is_file() or foreign_file(path) is None
        elif name.startswith(OLD):
            inner = path / "run"
            ours = set(os.listdir(path)) <= {"run"} and (
                not inner.exists() or foreign_file(inner) is None
            )
        else:
            continue
        if ours:
            shutil.rmtree(path)
            removed.append(path)
            log.warning("removed %s, left by an interrupted write of %s", path, out)
        else:
            log.warning("left %s in place: it holds files recfunnel did not write", path)
    return removed


@dataclass
class Run:
    """A loaded run directory."""

    path: Path
    config: PipelineConfig
    manifest: dict[str, Any]
    split: Split
    funnel: Funnel
    index_missing: bool = False  # the index/ folder was deleted: recall uses exact search


def load_run_data(*run_dirs: Path, data_dir: str | Path | None = None) -> MovieLens:
    """The data set the runs `run_dirs` were trained on, for the scripts under bench/. Every
    manifest is read first, so a wrong RUN_DIR is one clear error before seconds of loading
    (or a missing-data error that hides it); runs of different data sets are an error."""
    datasets = {str(read_manifest(Path(p)).get("dataset", "ml-1m")): Path(p) for p in run_dirs}
    if len(datasets) > 1:
        named = ", ".join(f"{path} ({name})" for name, path in datasets.items())
        raise RecfunnelError(f"the runs were trained on different data sets: {named}")
    return load_movielens(data_dir, dataset=next(iter(datasets), "ml-1m"), progress=False)


def load_run(path: Path, ml: MovieLens, device: str = "auto") -> Run:
    """Load a run made by this package version on exactly this data, or refuse. Its torch
    parts compute on `device` (auto, cpu or cuda), wherever it was trained.

    Every file the manifest lists is checked (size and SHA-256) before anything is read, and
    each reader checks its file's type and shape, so a damaged run is one clear error. A
    run whose whole `index/` folder is gone is served with exact search, with a warning.
    """
    path = Path(path)
    manifest = read_manifest(path)
    if manifest.get("version") != __version__:
        raise RecfunnelError(
            f"{path} was made by recfunnel {manifest.get('version')}, this is {__version__}; "
            "retrain it with this version (weights and features may not match)"
        )
    if manifest.get("format") != RUN_FORMAT:
        raise RecfunnelError(
            f"{path} is a run directory of format {manifest.get('format')}; this version reads "
            f"format {RUN_FORMAT}. Train it again"
        )
    trained_on = manifest.get("dataset", "ml-1m")  # runs from before datasets: ML-1M
    if trained_on != ml.dataset:
        raise RecfunnelError(
            f"{path} was trained on {trained_on}, this data is {ml.dataset}; load "
            f"--dataset {trained_on}"
        )
    if manifest.get("data_sha256") != ml.checksum:
        raise RecfunnelError(
            f"{path} was trained on other data (sha256 {str(manifest.get('data_sha256'))[:12]}"
            f", this data {ml.checksum[:12]}); point --data-dir at the data it was trained on"
        )
    files = manifest["files"]
    index_missing = not (path / INDEX_DIR).exists() and any(
        f.startswith(f"{INDEX_DIR}/") for f in files
    )
    if index_missing:
        log.warning("%s has no %s/ folder: serving recall with exact search", path, INDEX_DIR)
        files = {k: v for k, v in files.items() if not k.startswith(f"{INDEX_DIR}/")}
    verify_files(path, files, where=str(path / MANIFEST))
    config = config_from_json(PipelineConfig, path / "config.json")
    if config.split != manifest["split"]:
        raise RunFileError(
            f"{path / 'config.json'} says split {config.split!r} but {MANIFEST} says "
            f"{manifest['split']!r}; the run was edited after training"
        )
    split = make_split(ml.ratings, config.split)
    torch_device = str(resolve_device(device))
    data = FitData(
        ml, split, catalogue(ml.ratings), progress=False, device=torch_device, scale=config.scale
    )
    funnel = Funnel.load(path, data, config.funnel, now=serving_time(split.train))
    return Run(
        path=path,
        config=config,
        manifest=manifest,
        split=split,
        funnel=funnel,
        index_missing=index_missing,
    )
