"""Graph recall: LightGCN over the liked user-item graph.

recall/graph/model.py     the normalised adjacency and the pure LightGCN module
recall/graph/channel.py   LightGCNConfig and LightGCNChannel (training, fold-in serving)
"""

from recfunnel.recall.graph.channel import LightGCNChannel, LightGCNConfig

__all__ = ["LightGCNChannel", "LightGCNConfig"]
