"""The rank stage: a deep CTR model (DIN + DCN-v2, two ESMM-style heads) over pre-rank's list.

rank/features.py   causal per-request and per-pair inputs (RankFeatureSpace)
rank/model.py      RankModel, the pure nn.Module
rank/stage.py      RankStage and RankConfig: training, scoring, save/load
"""

from recfunnel.rank.features import RankFeatureSpace
from recfunnel.rank.stage import RankConfig, RankStage

__all__ = ["RankConfig", "RankFeatureSpace", "RankStage"]
