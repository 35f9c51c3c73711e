"""The pre-rank stage: a small MLP that cuts recall's candidates to what rank can afford.

prerank/model.py   PreRankMLP, the pure nn.Module
prerank/stage.py   PreRankStage and PreRankConfig: training, scoring, save/load
"""

from recfunnel.prerank.stage import PreRankConfig, PreRankStage

__all__ = ["PreRankConfig", "PreRankStage"]
