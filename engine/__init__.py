"""The training engine: compiled multi-head training loops for TF 2 + Keras 3."""

from engine import atomic
from engine import calibration
from engine import config
from engine import config_flags
from engine import data
from engine import distribution
from engine import experiment
from engine import optimizers
from engine import precision
from engine import records
from engine import progress
from engine import run_config
from engine import summaries
from engine.config import Config
from engine.experiment import Experiment
from engine.distribution import create_strategy as _create_strategy
from engine.precision import set_precision
from engine.preemption import Interrupted
from engine.preemption import Preempted
from engine.trainer import Trainer


def create_strategy(config: Config):
  """The tf.distribute strategy `config` names; make the model under its scope."""
  return _create_strategy(config.strategy, config.tpu, config.num_cpu_devices)


__all__ = ["Config", "Experiment", "Interrupted", "Preempted", "Trainer", "calibration", "config",
           "config_flags", "create_strategy", "data", "distribution", "experiment", "optimizers",
           "precision", "progress", "records", "run_config", "set_precision", "summaries"]
