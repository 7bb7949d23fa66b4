"""The training engine: compiled multi-head training loops for TF 2 + Keras 3."""

from engine import atomic
from engine import calibration
from engine import config
from engine import data
from engine import distribution
from engine import precision
from engine import progress
from engine import summaries
from engine.config import Config
from engine.distribution import create_strategy as _create_strategy
from engine.precision import set_precision
from engine.preemption import Preempted
from engine.trainer import Trainer


def create_strategy(config: Config):
  """The tf.distribute strategy `config` names; make the model under its scope."""
  return _create_strategy(config.strategy, config.tpu, config.num_cpu_devices)


__all__ = ["Config", "Preempted", "Trainer", "calibration", "config", "create_strategy", "data",
           "distribution", "precision", "progress", "set_precision", "summaries"]
