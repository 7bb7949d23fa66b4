"""Heads: what is learned and measured per output of a multi-head model.

This package never imports `engine`; the engine imports it.
"""

from heads.base import Head
from heads.base import LabelSpec
from heads.ensemble import EnsembleHead
from heads.guard import DistributionHead
from heads.large_vocab import LargeVocabSoftmaxHead
from heads.regression import RegressionHead
from heads.sequence import SequenceSoftmaxHead
from heads.sigmoid import SigmoidHead
from heads.softmax import SoftmaxHead
from heads.sparse import EntmaxHead
from heads.sparse import SparsemaxHead
from heads.specs import parse_heads
from heads import guard
from heads import specs
from heads import weighting

__all__ = ["DistributionHead", "EnsembleHead", "EntmaxHead", "Head", "LabelSpec", "LargeVocabSoftmaxHead", "RegressionHead", "SequenceSoftmaxHead",
           "SigmoidHead", "SoftmaxHead", "SparsemaxHead", "guard", "parse_heads", "specs", "weighting"]
