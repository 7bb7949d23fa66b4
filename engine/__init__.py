"""The training engine: compiled multi-head training loops for TF 2 + Keras 3."""

from engine import data
from engine import progress
from engine.config import Config
from engine.trainer import Trainer

__all__ = ["Config", "Trainer", "data", "progress"]
