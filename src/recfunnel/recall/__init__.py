"""The recall stage: a two-tower model whose item vectors go into a top-K index."""

from recfunnel.recall.stage import RecallConfig, RecallStage

__all__ = ["RecallConfig", "RecallStage"]
