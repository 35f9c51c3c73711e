"""Run directories: the resolved config, a manifest and each trained stage, written atomically.

    RUN_DIR/
      config.json     the resolved PipelineConfig (defaults + TOML file + overrides)
      manifest.json   package version, data checksum, split, seed, stages, training time
      recall/         the two-tower stage (config, vocabularies, weights, training curve)
      index/          item embeddings and ids + index.json (rebuildable for other backends)
      prerank/        the pre-rank MLP (config, weights, input scaling, training curve)
      rank/           the rank model (config, weights, input scaling, training curve) and the
                      item-to-item weights it reads
      report.md, report.json, *.png   written by `recfunnel evaluate RUN_DIR`

Every file is JSON, NPY or a torch state dict loaded with weights_only=True: no pickle.

A run is built in a hidden sibling folder and renamed into place only when complete, so an
interrupted `train` never leaves a directory that looks finished. Loading checks the manifest:
a run made by another package version or on other data is refused, not silently mis-scored.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from recfunnel import __version__
from recfunnel.atomic import umask_mode
from recfunnel.config import config_from_json, param, save_config, section
from recfunnel.data.dataset import MovieLens
from recfunnel.data.split import Split, make_split
from recfunnel.errors import ConfigError, RecfunnelError
from recfunnel.index import ItemIndex, make_index
from recfunnel.pipeline import Funnel, FunnelConfig, TrainReport
from recfunnel.prerank import PreRankConfig
from recfunnel.rank import RankConfig
from recfunnel.recall import RecallConfig
from recfunnel.rerank import RerankConfig
from recfunnel.stacking import StackingConfig

MANIFEST = "manifest.json"

# Tiny models for smoke runs on the synthetic data: the test suite and the notebook's fast mode
# train with these overrides (a few seconds on two cores). Not a config to report numbers of.
SMOKE_OVERRIDES: tuple[str, ...] = (
    "--recall.epochs=2",
    "--recall.dim=16",
    "--recall.out_dim=16",
    "--recall.hidden=32",
    "--recall.batch_size=512",
    "--recall.threads=1",
    "--recall.valid_metric=recall@50",
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


@dataclass(frozen=True)
class IndexConfig:
    """The top-K index that serves the recall stage's item vectors."""

    backend: Literal["exact", "hnsw", "ivf"] = param("hnsw", "exact, hnsw or ivf (FAISS)")
    hnsw_m: int = param(32, "HNSW: neighbours per node")
    ef_construction: int = param(200, "HNSW: candidate list size while building")
    ef_search: int = param(256, "HNSW: candidate list size while searching")
    ivf_nlist: int | None = param(None, "IVF: number of clusters (none: about sqrt(n_items))")
    ivf_nprobe: int = param(16, "IVF: clusters visited per query")

    def build(self) -> ItemIndex:
        """An unbuilt index of the configured backend."""
        params: dict[str, Any] = {
            "exact": {},
            "hnsw": {
                "M": self.hnsw_m,
                "ef_construction": self.ef_construction,
                "ef_search": self.ef_search,
            },
            "ivf": {"nlist": self.ivf_nlist, "nprobe": self.ivf_nprobe},
        }[self.backend]
        return make_index(self.backend, **params)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything `recfunnel train` needs; written to RUN_DIR/config.json."""

    split: Literal["global", "per_user"] = param("global", "split protocol (protocol.md)")
    funnel: FunnelConfig = section(FunnelConfig, "list sizes of the funnel")
    recall: RecallConfig = section(RecallConfig, "two-tower recall model")
    index: IndexConfig = section(IndexConfig, "top-K index over the recall item vectors")
    stacking: StackingConfig = section(StackingConfig, "leakage-free data for pre-rank and rank")
    prerank: PreRankConfig = section(PreRankConfig, "pre-rank MLP")
    rank: RankConfig = section(RankConfig, "rank model (DIN + DCN-v2)")
    rerank: RerankConfig = section(RerankConfig, "MMR re-rank")


def write_run(
    out: Path,
    config: PipelineConfig,
    ml: MovieLens,
    funnel: Funnel,
    report: TrainReport,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a complete run directory at `out`, atomically (temp folder, then rename)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        save_config(config, tmp / "config.json")
        funnel.save(tmp)
        manifest = {
            "package": "recfunnel",
            "version": __version__,
            "data_sha256": ml.checksum,
            "split": config.split,
            "seed": config.recall.seed,
            "stages": ["recall", "prerank", "rank", "rerank"],
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "train_seconds": report.seconds,
            "stacking_examples": report.examples,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        tmp.chmod(umask_mode(directory=True))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@dataclass
class Run:
    """A loaded run directory."""

    path: Path
    config: PipelineConfig
    manifest: dict[str, Any]
    split: Split
    funnel: Funnel


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a run directory; a clear error when it is not one."""
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        raise RecfunnelError(
            f"{path} is not a complete run directory (no {MANIFEST}); "
            "create one with `recfunnel train`"
        )
    try:
        return json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        raise RecfunnelError(f"{manifest_path} is not valid JSON: {error}") from None


def load_run(path: Path, ml: MovieLens) -> Run:
    """Load a run made by this package version on exactly this data, or refuse."""
    path = Path(path)
    manifest = read_manifest(path)
    if manifest.get("version") != __version__:
        raise RecfunnelError(
            f"{path} was made by recfunnel {manifest.get('version')}, this is {__version__}; "
            "retrain it with this version (weights and features may not match)"
        )
    if manifest.get("data_sha256") != ml.checksum:
        raise RecfunnelError(
            f"{path} was trained on other data (sha256 {str(manifest.get('data_sha256'))[:12]}"
            f", this data {ml.checksum[:12]}); point --data-dir at the data it was trained on"
        )
    config = config_from_json(PipelineConfig, path / "config.json")
    split = make_split(ml.ratings, config.split)
    funnel = Funnel.load(
        path, ml, split, rank_config=config.rank, rerank=config.rerank, funnel=config.funnel
    )
    return Run(path=path, config=config, manifest=manifest, split=split, funnel=funnel)
