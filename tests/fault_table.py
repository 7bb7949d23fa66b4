"""The fault table's machinery: rows, their outcomes as text, and what rows share.

A row's function provokes a fault and returns what happened as text: the
facts it checks (`step=10`), the warnings logged and the error
(`ErrorType: message`); the row's pattern must be found in that text
(`tests/test_faults.py` runs every row).
"""

import logging as std_logging
import os
import shutil

import tensorflow as tf

import engine
from tests.conftest import dataset_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = tf.TensorSpec([None, 32], tf.float32)
ROWS = {}


def row(expected):
  """Registers a fault: the function's name says the fault, `expected` the outcome (a regex)."""
  def register(function):
    ROWS[function.__name__] = (function, expected)
    return function
  return register


class _Logs(std_logging.Handler):
  def __init__(self):
    super().__init__(std_logging.WARNING)
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())


def outcome(function, *args) -> str:
  """What `function(*args)` gave: its facts, the warnings it logged and its error."""
  logs, logger = _Logs(), std_logging.getLogger("absl")
  logger.addHandler(logs)
  try:
    facts = function(*args) or ""
    error = ""
  except (Exception, SystemExit) as caught:  # pylint: disable=broad-except
    facts, error = "", f"{type(caught).__name__}: {caught} (code {getattr(caught, 'code', '')})"
  finally:
    logger.removeHandler(logs)
  return " | ".join([str(facts), *logs.lines, error])


def batches(count=64, mutate=None, weights=None, split="train", **kwargs):
  x, labels = engine.data.synthetic_arrays(split, count)
  if mutate:
    mutate(x, labels)
  return dataset_of(x, labels, weights, **kwargs)


class Context:
  """What rows share: a trainer factory, a fresh directory, a copy of the trained run."""

  def __init__(self, make_trainer, tmp_path, trained_dir, request):
    self.make_trainer, self.tmp_path, self._trained = make_trainer, tmp_path, trained_dir
    self._request = request

  def fixture(self, name):
    """A module fixture, made only for the rows that need it."""
    return self._request.getfixturevalue(name)

  def run_copy(self) -> str:
    target = str(self.tmp_path / "run")
    shutil.copytree(self._trained, target)
    return target

  def resumed(self, model_dir, **config):
    return self.make_trainer(model_dir=model_dir, checkpoint_every=5, **config)
