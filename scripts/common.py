"""Flags and wiring shared by the scripts: one flag per `engine.Config` field.

Every setting not given on the command line is taken from the configuration
that `--model_dir` keeps (`config.flags`, written by the first training),
then from the field's default; so `--model_dir` is all that evaluate.py,
export.py and calibrate.py need, and a rerun of train.py resumes the same run.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags  # pylint: disable=g-import-not-at-top

import engine  # pylint: disable=g-import-not-at-top
from engine import config_flags  # pylint: disable=g-import-not-at-top
from engine import run_config  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
config_flags.define_flags()


def _valid(values):
  """Flag values that make no valid Config fail at parsing, with Config's message."""
  try:
    engine.Config(**values)
  except (ValueError, TypeError) as error:
    raise flags.ValidationError(str(error)) from None
  return True


flags.register_multi_flags_validator(list(config_flags.NAMES), _valid)


def make_trainer():
  """The Trainer and Experiment of this run: (trainer, experiment)."""
  run_config.apply_to_flags(FLAGS, FLAGS.model_dir)
  return engine.experiment.build(config_flags.config_from_flags(FLAGS))


def restore_latest(trainer, experiment):
  """Restores the newest checkpoint of --model_dir (reading no data)."""
  trainer.build(engine.experiment.features_spec(experiment, trainer.config.batch_size))
  check_restored(trainer)


def check_restored(trainer):
  """Raises unless `build` restored a checkpoint (none, or none readable: said which)."""
  if trainer.restored_checkpoint is not None:
    return
  if trainer.latest_checkpoint is None:
    raise ValueError(f"No checkpoint in --model_dir={FLAGS.model_dir}: train first "
                     "(scripts/train.py with this --model_dir).")
  raise ValueError(f"No readable checkpoint in --model_dir={FLAGS.model_dir}: every one is "
                   "damaged (see the warnings); train again to write a good one.")
