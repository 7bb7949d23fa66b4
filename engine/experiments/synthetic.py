"""The demo: a Dense trunk on the built-in synthetic multi-task data (`engine.data`)."""

from engine import data
from engine.experiment import Experiment
from engine.experiments import parts


def synthetic(heads=data.DEMO_HEADS, hidden_units=(128, 128), weighting="static",
              weight_schedules=None, weighting_options=None, num_train_examples=65536,
              num_eval_examples=4096):
  """Heads among digit (10 classes), parity (2) and box (4 values) on 32 features."""
  for name, value in (("num_train_examples", num_train_examples),
                      ("num_eval_examples", num_eval_examples)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"experiment_params {name}: expected an integer >= 1; received "
                       f"{value!r}.")
  return Experiment(
      trunk=parts.dense_trunk(hidden_units),
      heads=parts.heads_from_text(heads, weighting, weight_schedules, weighting_options),
      train_data=lambda batch_size, seed: data.synthetic(
          "train", batch_size, num_examples=num_train_examples, shuffle_seed=seed),
      eval_data=lambda batch_size: data.synthetic("eval", batch_size,
                                                  num_examples=num_eval_examples),
      calibration_data=lambda batch_size: data.synthetic("calibration", batch_size,
                                                         num_examples=num_eval_examples))
