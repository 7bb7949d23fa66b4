"""Parts the built-in experiments share: heads from text, a Dense trunk."""

import keras

import heads as heads_lib


def heads_from_text(text, weighting="static", weight_schedules=None, weighting_options=None):
  """`heads.parse_heads` of the experiment parameters `heads`, `weighting`,
  `weight_schedules` ({head: schedule text}) and `weighting_options`
  (gradnorm_alpha, dwa_temperature, dwa_period)."""
  if not isinstance(text, str):
    raise ValueError(f"experiment_params heads: expected text name:kind:size[:weight],...; "
                     f"received {text!r}.")
  if weight_schedules is not None and not isinstance(weight_schedules, dict):
    raise ValueError("experiment_params weight_schedules: expected a dict such as "
                     f"{{'box': 'linear:0:0.25:1000:100'}}; received {weight_schedules!r}.")
  options = dict(weighting_options or {})
  known = ("gradnorm_alpha", "dwa_temperature", "dwa_period")
  if set(options) - set(known):
    raise ValueError(f"experiment_params weighting_options: expected keys among {known}; "
                     f"received {sorted(options)}.")
  return heads_lib.parse_heads(text, flag="experiment_params heads", weighting=weighting,
                               schedules=weight_schedules, **options)


def units(value, name="hidden_units"):
  """A tuple of positive layer widths from an int or a sequence of ints."""
  widths = (value,) if isinstance(value, int) else tuple(value) if isinstance(
      value, (tuple, list)) else None
  if not widths or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0
                           for w in widths):
    raise ValueError(f"experiment_params {name}: expected positive integers such as (128, 128);"
                     f" received {value!r}.")
  return widths


def dense_trunk(hidden_units):
  """ReLU Dense layers of these widths."""
  return keras.Sequential([keras.layers.Dense(width, activation="relu")
                           for width in units(hidden_units)], name="trunk")
