"""The re-rank stage: MMR or a DPP for diversity over the ranked list (see rerank/stage.py)."""

from recfunnel.rerank.dpp import dpp
from recfunnel.rerank.mmr import cosine_similarity, mmr, relevance_scale
from recfunnel.rerank.stage import MMRReranker, RerankConfig

__all__ = ["MMRReranker", "RerankConfig", "cosine_similarity", "dpp", "mmr", "relevance_scale"]
