"""The rank stage: a deep CTR model (DIN + DCN-v2) over the pre-rank's survivors."""

from recfunnel.rank.features import RankFeatureSpace
from recfunnel.rank.stage import RankConfig, RankStage

__all__ = ["RankConfig", "RankFeatureSpace", "RankStage"]
