r"""Calibrates a trained model's heads on a held-out split; keeps the fit with the model.

  python scripts/calibrate.py --model_dir=runs/demo                     # temperature
  python scripts/calibrate.py --model_dir=runs/demo --method=vector
  python scripts/calibrate.py --model_dir=runs/images --method=platt   # sigmoid heads

--method: temperature (one per softmax head), vector (a scale and a bias per
class of each softmax head) or platt (a scale and a bias per label of each
sigmoid head); see engine.calibration. The fit is made on the experiment's
calibration split (--calibration_split=calibration, the default) and every
calibration metric (ece, adaptive_ece, classwise_ece, mce, brier, nll) is
printed before and after on its evaluation split, so the two never share
examples. Then the fit is stored with the model: a checkpoint of the same
step is rewritten (every other variable, and the input position, as they
were), and a new export version is written (model_dir/export/<step>, or the
next free number if that step was exported before). The model and the data
come from the settings the run kept (model_dir/config.flags).
"""

from absl import app
from absl import flags
from absl import logging

import common  # pylint: disable=g-bad-import-order
import engine

# --help and --helpshort list the engine's flags (one per engine.Config field).
flags.adopt_module_key_flags(engine.config_flags)
_METHOD = flags.DEFINE_enum("method", "temperature", engine.calibration.METHODS,
                            "What to fit: see engine.calibration.")
_SPLIT = flags.DEFINE_enum(
    "calibration_split", "calibration", ["calibration", "eval"],
    "The split to fit on: the experiment's calibration split, or its eval split (then the "
    "'after' metrics are measured on the examples fitted, and flatter than they will be).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  trainer, experiment = common.make_trainer()
  common.restore_latest(trainer, experiment)
  name, batch_size = trainer.config.experiment, trainer.config.batch_size
  if experiment.eval_data is None:
    raise app.UsageError(f"experiment {name!r} has no eval data to measure calibration on.")
  if _SPLIT.value == "calibration" and experiment.calibration_data is None:
    raise app.UsageError(
        f"experiment {name!r} has no calibration split; give it one (the tfrecord "
        "experiment: --experiment_params=calibration_data=PATTERN) or pass "
        "--calibration_split=eval.")
  if _SPLIT.value == "eval":
    logging.warning("Fitting on the eval split: the metrics after are measured on the "
                    "examples fitted.")
  fit_on = (experiment.calibration_data if _SPLIT.value == "calibration"
            else experiment.eval_data)(batch_size)
  evaluation = experiment.eval_data(batch_size)
  before = trainer.evaluate(evaluation)
  fitted = engine.calibration.calibrate(trainer.model, trainer.heads, fit_on,
                                        trainer.config.eval_steps, method=_METHOD.value)
  if not fitted:
    kind = "sigmoid" if _METHOD.value == "platt" else "softmax"
    raise app.UsageError(f"--method={_METHOD.value} fits {kind} heads; none of "
                         f"{trainer.model.head_names} is one.")
  after = trainer.evaluate(evaluation)
  print(engine.calibration.report(before, after, fitted))
  # Keeps the training input's position in the rewritten checkpoint.
  trainer.save_checkpoint(experiment.train_data(batch_size, trainer.config.seed))
  print(trainer.export())


if __name__ == "__main__":
  app.run(main)
