"""Experiments: what a run trains, picked by name or loaded from a user's module.

An experiment is a function of keyword parameters (`Config.experiment_params`)
returning an `Experiment`: the trunk, the heads, the data and optionally an
optimizer. `build(config)` makes the strategy, then the experiment and the
Trainer under its scope, the way the scripts do; research code may call it
too, or make a Trainer directly.

    def my_experiment(width=64):
      return engine.Experiment(trunk=..., heads=[...],
                               train_data=lambda batch_size, seed: ...,
                               eval_data=lambda batch_size: ...)

    python scripts/train.py --experiment=my_package.my_module:my_experiment \
        --experiment_params=width=128 --model_dir=runs/mine
"""

import dataclasses
import importlib
import inspect
from typing import Any, Callable, Optional

import keras

from engine import distribution
from engine import optimizers
from engine import precision
from engine.config import Config
from engine.config import format_params

# Registered names and the functions they stand for.
BUILT_IN = {
    "synthetic": "engine.experiments.synthetic:synthetic",
    "tfrecord": "engine.experiments.tfrecord:tfrecord",
    "images": "engine.experiments.images:images",
    "sequences": "engine.experiments.sequences:sequences",
}


@dataclasses.dataclass
class Experiment:
  """What a run trains.

  Attributes:
    trunk: a Keras layer or model from the features to what the heads read
      (one tensor, or a dict the heads select from with their `input`).
    heads: a list of `heads.Head`.
    train_data: `(batch_size, seed) -> tf.data.Dataset` of global batches of
      `(features, labels[, sample_weights])`, repeated; features may be a dict.
    eval_data: `(batch_size) -> tf.data.Dataset`, finite, of the same
      structure; None when there is no evaluation data.
    calibration_data: like `eval_data`, a held-out split distinct from it,
      that calibrate.py fits on; None when there is none.
    optimizer: a Keras optimizer; None: the one the Config's optimizer
      settings describe.
  """

  trunk: Any
  heads: list
  train_data: Callable
  eval_data: Optional[Callable]
  optimizer: Optional[keras.optimizers.Optimizer] = None
  calibration_data: Optional[Callable] = None


def function_of(name: str) -> Callable:
  """The experiment function `name` stands for (registered, or module:function)."""
  target = BUILT_IN.get(name, name)
  if target.count(":") != 1:
    raise ValueError(f"experiment={name!r} is neither a registered experiment "
                     f"({', '.join(sorted(BUILT_IN))}) nor package.module:function.")
  module_name, function_name = target.split(":")
  try:
    module = importlib.import_module(module_name)
  except ImportError as error:
    raise ValueError(f"experiment={name!r}: cannot import {module_name!r} ({error}); is its "
                     "package on PYTHONPATH?") from error
  function = getattr(module, function_name, None)
  if not callable(function):
    raise ValueError(f"experiment={name!r}: module {module_name!r} has no function "
                     f"{function_name!r}.")
  return function


def resolved_params(name: str, given: dict) -> dict:
  """Every keyword parameter of the experiment: the given values over its defaults."""
  parameters = inspect.signature(function_of(name)).parameters
  takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
  named = {key: p for key, p in parameters.items() if p.kind is not p.VAR_KEYWORD}
  unknown = sorted(set(given) - set(named))
  if unknown and not takes_any:
    raise ValueError(f"experiment_params: experiment {name!r} has no parameter "
                     f"{', '.join(unknown)}; its parameters are {', '.join(named) or 'none'}.")
  missing = [key for key, p in named.items() if p.default is p.empty and key not in given]
  if missing:
    raise ValueError(f"experiment_params: experiment {name!r} needs {', '.join(missing)} "
                     "(e.g. --experiment_params=" + ",".join(f"{m}=..." for m in missing) + ").")
  resolved = {key: p.default for key, p in named.items() if p.default is not p.empty}
  resolved.update(given)
  return resolved


def resolve(config: Config) -> Config:
  """`config` with every experiment parameter written out (the defaults too)."""
  params = resolved_params(config.experiment, config.params)
  return dataclasses.replace(config, experiment_params=format_params(params))


def build(config: Config):
  """The strategy, then (under its scope) the experiment and its Trainer.

  Returns `(trainer, experiment)`; `trainer.config` has the resolved
  experiment parameters. Precision and seeds are set before any layer is made.
  """
  from engine.trainer import Trainer  # pylint: disable=g-import-not-at-top (cycle)
  config = resolve(config)
  strategy = distribution.create_strategy(config.strategy, config.tpu,
                                          config.num_cpu_devices)  # Before any other op.
  precision.set_precision(config.precision)  # Before any layer is made.
  if config.seed is not None:
    keras.utils.set_random_seed(config.seed)  # Initializers draw their seeds when made.
  with strategy.scope():
    experiment = function_of(config.experiment)(**config.params)
    if not isinstance(experiment, Experiment):
      raise ValueError(f"experiment={config.experiment!r} returned "
                       f"{type(experiment).__name__}; expected an engine.Experiment.")
    optimizer = experiment.optimizer or optimizers.create(config)
    trainer = Trainer(trunk=experiment.trunk, heads=experiment.heads, optimizer=optimizer,
                      config=config)
  return trainer, experiment


def features_spec(experiment: Experiment, batch_size: int):
  """The features' spec, from the eval data (else the training data), read no further."""
  dataset = (experiment.eval_data(batch_size) if experiment.eval_data is not None
             else experiment.train_data(batch_size, 0))
  return dataset.element_spec[0]
