r"""Fits one temperature per classification head on held-out data (Guo et al., 2017).

  python scripts/calibrate.py --model_dir=runs/demo

Restores the latest checkpoint, prints ECE and NLL per head before and
after, then stores the temperatures with the model: a checkpoint of the same
step is rewritten (every other variable, and the input position, as they
were), and a new export version is written (model_dir/export/<step>, or the
next free number if that step was exported before).
The held-out set is the experiment's eval data; the model and the data
come from the settings the run kept (model_dir/config.flags).
"""

from absl import app
from absl import flags
from absl import logging

import common  # pylint: disable=g-bad-import-order
import engine

# --help and --helpshort list the engine's flags (one per engine.Config field).
flags.adopt_module_key_flags(engine.config_flags)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  trainer, experiment = common.make_trainer()
  common.restore_latest(trainer, experiment)
  if experiment.eval_data is None:
    raise app.UsageError(f"experiment {trainer.config.experiment!r} has no held-out data to "
                         "calibrate on (its eval data).")
  held_out = experiment.eval_data(trainer.config.batch_size)
  before = trainer.evaluate(held_out)
  temperatures = engine.calibration.calibrate(trainer.model, trainer.heads, held_out,
                                              trainer.config.eval_steps)
  if not temperatures:
    raise app.UsageError(f"No head of {trainer.model.head_names} has a temperature to fit "
                         "(only softmax heads do).")
  after = trainer.evaluate(held_out)
  print(engine.calibration.report(before, after, temperatures))
  # Keeps the training input's position in the rewritten checkpoint.
  trainer.save_checkpoint(experiment.train_data(trainer.config.batch_size, trainer.config.seed))
  print(trainer.export())


if __name__ == "__main__":
  app.run(main)
