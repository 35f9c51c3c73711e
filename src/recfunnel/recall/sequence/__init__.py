"""The sequence recall channel: a self-attentive next-item model over each user's ratings.

recall/sequence/model.py     SASRec / BERT4Rec encoders (pure nn.Modules)
recall/sequence/channel.py   SequenceConfig and SequenceChannel: sequences, training, serving
"""

from recfunnel.recall.sequence.channel import SequenceChannel, SequenceConfig
from recfunnel.recall.sequence.model import SequenceEncoder

__all__ = ["SequenceChannel", "SequenceConfig", "SequenceEncoder"]
