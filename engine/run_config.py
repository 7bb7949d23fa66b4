"""The configuration a run keeps in its model_dir (`config.flags`).

The first `train` writes every setting there, as a flagfile (`--flagfile`
reads it back), atomically. Scripts that only read a run (evaluate, export,
calibrate) take every setting they are not given from it, so `--model_dir`
is all they need; `train.py` does the same, so a resumed run keeps its
settings. A later run may change how it trains (steps, cadence, learning
rate: the file then records the new values) but not the model: a change of
a model setting (`Config` fields marked `model`: the experiment and each of
its parameters) is refused, naming each one with its old and new value.
"""

from absl import logging
import tensorflow as tf

from engine import atomic
from engine import config_flags
from engine.config import Config
from engine.config import experiment_param_values
from engine.config import format_params

FILENAME = "config.flags"


def path(model_dir: str) -> str:
  return tf.io.gfile.join(model_dir, FILENAME)


def read(model_dir: str):
  """The settings kept in `model_dir` ({field: value}), or None if it keeps none."""
  file_path = path(model_dir)
  if not tf.io.gfile.exists(file_path):
    return None
  with tf.io.gfile.GFile(file_path) as handle:
    text = handle.read()
  try:
    return config_flags.parse_flagfile(text)
  except Exception as error:  # absl's parse errors have several types.
    raise ValueError(f"{file_path}: cannot read the run's configuration ({error}); "
                     "fix or remove the file.") from error


def differences(kept: dict, config: Config) -> list:
  """`name: old -> new` for each model setting of `config` that differs from `kept`."""
  found = []
  for name, value in config.model_settings().items():
    old = kept.get(name)
    if name == "experiment_params":
      old_params, new_params = experiment_param_values(old or ""), config.params
      for key in sorted(set(old_params) | set(new_params)):
        if old_params.get(key, "(unset)") != new_params.get(key, "(unset)"):
          found.append(f"experiment_params {key}: {old_params.get(key, '(unset)')!r} -> "
                       f"{new_params.get(key, '(unset)')!r}")
    elif old != value:
      found.append(f"{name}: {old!r} -> {value!r}")
  return found


def record(config: Config) -> None:
  """Checks `config` against the settings `config.model_dir` keeps, then keeps `config`.

  Raises ValueError naming every model setting that changed.
  """
  kept = read(config.model_dir)
  if kept is not None:
    changed = differences(kept, config)
    if changed:
      raise ValueError(
          f"model_dir={config.model_dir} holds a run of another model ({path(config.model_dir)}"
          f"); these settings differ (kept -> now): {'; '.join(changed)}. Use another "
          "model_dir, or the kept settings (scripts take them when the flags are not given).")
    kept_config = Config(**{**kept, "model_dir": config.model_dir})
    others = [f"{name}: {getattr(kept_config, name)!r} -> {getattr(config, name)!r}"
              for name in config_flags.NAMES
              if getattr(kept_config, name) != getattr(config, name)]
    if others:
      logging.info("Settings changed since this run was last trained (recorded in %s): %s",
                   path(config.model_dir), "; ".join(others))
  atomic.write_text(path(config.model_dir), config_flags.flagfile_text(config))


def apply_to_flags(flag_values, model_dir: str) -> None:
  """Sets every flag not given on the command line to the value `model_dir` keeps.

  Experiment parameters given for the kept experiment are merged over the
  kept ones (a change names only those).
  """
  kept = read(model_dir) or {}
  for name, value in kept.items():
    flag = flag_values[name]
    if name == "model_dir":
      continue
    if not flag.present:
      flag.value = value
    elif name == "experiment_params" and flag_values["experiment"].value == kept.get(
        "experiment"):
      merged = {**experiment_param_values(value or ""), **experiment_param_values(flag.value)}
      flag.value = format_params(merged)


def hparams(config: Config) -> dict:
  """The settings as TensorBoard HParams: every field, each experiment parameter on its own."""
  values = {name: getattr(config, name) for name in config_flags.NAMES
            if name not in ("model_dir", "experiment_params")}
  values.update({f"experiment_params/{key}": value for key, value in config.params.items()})
  return values
