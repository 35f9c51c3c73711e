"""The recall stage: channels that each retrieve from the whole catalogue, merged.

recall/stage.py       RecallStage and RecallConfig: run the channels, merge their lists
recall/channel.py     what a channel is (the Channel contract)
recall/merge.py       merging the channels' lists
recall/two_tower/     the two-tower embedding channel (model, losses, sampling, channel)
recall/graph/         the LightGCN graph channel (model, channel)
recall/sequence/      the SASRec / BERT4Rec next-item channel (model, channel)
recall/index.py       the top-K item index (exact, FAISS HNSW and IVF) it searches
recall/report.py      the recall stage's report (channels, baselines, ANN backends)
"""

from recfunnel.recall.stage import CHANNELS, RecallConfig, RecallStage

__all__ = ["CHANNELS", "RecallConfig", "RecallStage"]
