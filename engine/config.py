"""Run configuration: every setting of a run, each defined once.

Each field carries its help text (and choices) in its metadata; the scripts'
flags are generated from the fields (`engine.config_flags`), with the same
names and defaults, and a run keeps its resolved configuration in
`model_dir` (`engine.run_config`).
"""

import ast
import dataclasses
import math
import re
from typing import Optional

from engine.aggregation import METHODS as AGGREGATION_METHODS
from engine.aggregation import OPTIONS as AGGREGATION_OPTIONS
from engine.distribution import STRATEGIES
from engine.precision import PRECISIONS

NONFINITE_POLICIES = ("raise", "skip")
TRAIN_METRICS = ("basic", "full")
BEST_METRIC_GOALS = ("auto", "max", "min")
OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop", "lion", "adafactor")
LR_SCHEDULES = ("constant", "cosine", "linear", "exponential", "piecewise")
_LOWER_IS_BETTER = ("loss", "nll", "ece", "adaptive_ece", "classwise_ece", "mce", "brier",
                    "mae", "mse", "rmse", "perplexity")


def _setting(default, help_text, choices=None, model=False):
  """A field: its default, its help (the flag's), its choices, and whether
  changing it changes the model (a later run on the same model_dir refuses)."""
  metadata = {"help": help_text, "choices": choices, "model": model}
  if isinstance(default, (list, dict)):
    raise TypeError("settings are immutable values; use a tuple")
  return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class Config:
  """How a run goes; validated on construction (errors name the field).

  `model_dir` is required; everything else has a default. See each field's
  help (`python scripts/train.py --help`, or `engine.config_flags.help_of`).
  """

  model_dir: str = dataclasses.field(metadata={
      "help": "Checkpoints, summaries (train/, eval/), exports and the run's config.flags.",
      "choices": None, "model": False})
  # What is trained.
  experiment: str = _setting(
      "synthetic", "A registered experiment (synthetic, tfrecord, images, sequences) or "
      "package.module:function returning an engine.Experiment.", model=True)
  experiment_params: str = _setting(
      "", "The experiment's keyword parameters: key=value,... (values are Python literals, "
      "else strings), e.g. heads=digit:softmax:10,parity:softmax:2,hidden_units=(64,64).",
      model=True)
  batch_size: int = _setting(128, "Global batch size (over all replicas).")
  train_steps: int = _setting(3000, "Train until this global step.")
  # The optimizer (unless the experiment brings its own).
  optimizer: str = _setting("adamw", "The Keras optimizer.", choices=OPTIMIZERS)
  learning_rate: float = _setting(1e-3, "Peak learning rate (after warmup).")
  lr_schedule: str = _setting(
      "constant", "Learning-rate decay after warmup, until train_steps (or lr_decay_steps).",
      choices=LR_SCHEDULES)
  warmup_steps: int = _setting(0, "Linear warmup from 0 to learning_rate over these steps "
                               "(any lr_schedule).")
  lr_decay_steps: Optional[int] = _setting(
      None, "Steps of decay after warmup; unset: train_steps - warmup_steps.")
  lr_end_fraction: float = _setting(
      0.0, "cosine and linear: the final learning rate as a fraction of learning_rate.")
  lr_decay_rate: float = _setting(
      0.1, "exponential: the factor applied to the learning rate over lr_decay_steps.")
  lr_boundaries: tuple = _setting((), "piecewise: the steps (after warmup) where the rate "
                                  "changes, e.g. 1000,2000.")
  lr_values: tuple = _setting((), "piecewise: the learning rates, one more than "
                              "lr_boundaries, e.g. 0.1,0.01,0.001.")
  weight_decay: float = _setting(
      0.0, "Decoupled weight decay (adamw, adam, sgd, rmsprop, lion, adafactor); biases and "
      "normalisation scales are excluded.")
  momentum: float = _setting(0.9, "sgd and rmsprop: momentum.")
  nesterov: bool = _setting(False, "sgd: Nesterov momentum.")
  clip_norm: Optional[float] = _setting(
      None, "Clip gradients to this global norm (of the gradient summed over replicas); "
      "unset: no clipping.")
  accumulation_steps: int = _setting(
      1, "Cut each replica's batch into this many micro-batches run one after the other; the "
      "update equals that of the whole batch.")
  # The loop.
  steps_per_loop: int = _setting(
      100, "Training steps per call of the compiled loop; summaries and the progress line "
      "are written once per loop.")
  jit_compile: bool = _setting(True, "Compile the steps with XLA.")
  steps_per_program: int = _setting(
      10, "Training steps in one XLA program (its batches fetched together and stacked): "
      "fewer program launches. Applies under jit_compile on one replica with batches of a "
      "static shape (batch(..., drop_remainder=True)); 1: one program per step.")
  train_metrics: str = _setting(
      "basic", "basic: each head's loss and main metric in training (sums inside the compiled "
      "step); full: every evaluation metric in every training step (slower).",
      choices=TRAIN_METRICS)
  max_consecutive_skips: int = _setting(
      100, "Stop with an error after this many steps in a row were skipped as NaN or infinite "
      "(nonfinite=skip, or loss-scale overflows); 0: no limit.")
  nonfinite: str = _setting(
      "raise", "A step whose loss or gradients are NaN/Inf is never applied; raise: stop, "
      "naming the heads and the step; skip: count it per head (TensorBoard) and go on.",
      choices=NONFINITE_POLICIES)
  aggregation: str = _setting(
      "sum", "How the heads' gradients on the shared trunk are combined: sum (the weighted "
      "sum, one backward pass) or a method of engine.aggregation (one extra backward pass "
      "per head at every step).", choices=("sum",) + AGGREGATION_METHODS)
  aggregation_options: str = _setting(
      "", "key=value,... for the aggregation, e.g. c=0.5 for cagrad.")
  head_diagnostics: bool = _setting(
      True, "At every multiple of diagnostics_every (from the second loop on), each head's "
      "gradient norm on the trunk, the cosines between heads' gradients and the global "
      "gradient norm (TensorBoard).")
  diagnostics_every: int = _setting(
      500, "With head_diagnostics: the step at every multiple of this step computes them "
      "(one backward pass per head more; the loops end there).")
  profile_steps: Optional[tuple] = _setting(
      None, "START,END: trace steps START+1..END with TensorFlow's profiler into "
      "model_dir/train/plugins/profile (TensorBoard's Profile tab).")
  # Checkpoints, evaluation, export.
  checkpoint_every: int = _setting(1000, "Save a checkpoint at every multiple of this step, "
                                   "and at the end of training.")
  max_checkpoints: int = _setting(3, "How many checkpoints to keep.")
  init_checkpoint: Optional[str] = _setting(
      None, "Before step 0 of a new run, initialise init_modules from this checkpoint, or "
      "from the newest checkpoint of this model_dir (warm start; ignored once the run has "
      "its own checkpoint).")
  init_modules: tuple = _setting(
      ("trunk",), "What init_checkpoint initialises: trunk and/or head names.")
  partial_restore: bool = _setting(
      False, "Resume from a checkpoint that has heads this model lacks (they are left out).")
  checkpoint_iterator: bool = _setting(
      True, "Save the training input's position (shuffle state included) in checkpoints and "
      "resume from it (one device; see BUILD.md).")
  eval_every: int = _setting(
      1000, "With eval data, evaluate at every multiple of this step (0: only at the end).")
  eval_steps: Optional[int] = _setting(
      None, "Batches per evaluation; unset: the whole eval data.")
  eval_pictures: bool = _setting(
      True, "After each evaluation, draw its figures and curves into TensorBoard (confusion "
      "matrices, reliability diagrams, PR curves, histograms; about 0.3 s per figure on a "
      "CPU); off: scalars only, for frequent evaluations.")
  best_metric: Optional[str] = _setting(
      None, "An evaluation result, e.g. digit/accuracy: after each evaluation, export the "
      "model to model_dir/export/best/<step> if this is its best value so far.")
  best_metric_goal: str = _setting(
      "auto", "max or min: whether a higher best_metric is better; auto: min for losses, nll, "
      "the calibration errors, brier, mae, rmse and perplexity.", choices=BEST_METRIC_GOALS)
  # Devices and numerics.
  precision: str = _setting(
      "float32", "float32, mixed_float16 (GPU; dynamic loss scaling) or mixed_bfloat16 (TPU, "
      "CPU); call engine.set_precision before making layers.", choices=PRECISIONS)
  strategy: str = _setting(
      "auto", "tf.distribute strategy; auto picks TPU, multi-worker (TF_CONFIG), mirrored or "
      "one device.", choices=STRATEGIES)
  tpu: str = _setting("", "TPU name or grpc:// address for strategy=tpu; empty on a TPU VM.")
  num_cpu_devices: int = _setting(
      0, "Split the CPU into this many logical devices (testing distribution without GPUs); "
      "0 leaves it whole.")
  seed: Optional[int] = _setting(
      0, "Seeds Keras, TensorFlow and NumPy before variables are made, and the input's "
      "shuffling; unset leaves the seeds alone.")
  deterministic: bool = _setting(
      False, "TensorFlow's op determinism (needs a seed): reruns and resumed runs give "
      "bitwise-identical weights (slower on GPUs).")

  def __post_init__(self):
    if not isinstance(self.model_dir, str) or not self.model_dir:
      raise ValueError(f"model_dir must be a non-empty path; received {self.model_dir!r}.")
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if isinstance(value, list):
        setattr(self, field.name, tuple(value))
      choices = field.metadata.get("choices")
      if choices and getattr(self, field.name) not in choices:
        raise ValueError(f"{field.name} must be one of {choices}; received {value!r}.")
    for name in ("batch_size", "train_steps", "steps_per_loop", "checkpoint_every",
                 "max_checkpoints", "accumulation_steps", "diagnostics_every",
               "steps_per_program"):
      _check_int(name, getattr(self, name), minimum=1)
    for name in ("eval_every", "num_cpu_devices", "warmup_steps", "max_consecutive_skips"):
      _check_int(name, getattr(self, name), minimum=0)
    for name in ("eval_steps", "lr_decay_steps"):
      if getattr(self, name) is not None:
        _check_int(name, getattr(self, name), minimum=1)
    if self.seed is not None:
      _check_int("seed", self.seed, minimum=0)
    if self.deterministic and self.seed is None:
      raise ValueError("deterministic=True needs a seed (e.g. seed=0): without one the initial "
                       "weights differ from run to run.")
    if not isinstance(self.experiment, str) or not self.experiment:
      raise ValueError(f"experiment must be a registered name or package.module:function; "
                       f"received {self.experiment!r}.")
    experiment_param_values(self.experiment_params)  # Raises naming the item.
    self.aggregation_option_values  # pylint: disable=pointless-statement  # Checks them.
    _check_float("learning_rate", self.learning_rate, minimum=0.0)
    _check_float("weight_decay", self.weight_decay, minimum=0.0)
    _check_float("lr_end_fraction", self.lr_end_fraction, minimum=0.0, maximum=1.0)
    _check_float("lr_decay_rate", self.lr_decay_rate, minimum=0.0, exclusive=True)
    _check_float("momentum", self.momentum, minimum=0.0, maximum=1.0)
    if not self.init_modules or not all(isinstance(m, str) and m for m in self.init_modules):
      raise ValueError(f"init_modules must name 'trunk' and/or heads; received "
                       f"{self.init_modules!r}.")
    self.init_checkpoint = self.init_checkpoint or None
    if self.init_checkpoint is not None and not isinstance(self.init_checkpoint, str):
      raise ValueError(f"init_checkpoint must be a checkpoint path or a model_dir; received "
                       f"{self.init_checkpoint!r}.")
    if self.clip_norm is not None:
      _check_float("clip_norm", self.clip_norm, minimum=0.0, exclusive=True)
    self._check_piecewise()
    if self.strategy == "tpu" and self.precision == "mixed_float16":
      raise ValueError("precision='mixed_float16' is for GPUs; on TPUs use 'mixed_bfloat16'.")
    if self.profile_steps is not None:
      steps = tuple(int(s) if isinstance(s, str) and s.isdigit() else s
                    for s in self.profile_steps)
      if (len(steps) != 2 or not all(isinstance(s, int) and not isinstance(s, bool)
                                     for s in steps) or not 0 <= steps[0] < steps[1]):
        raise ValueError("profile_steps must be two integers 0 <= start < end; received "
                         f"{self.profile_steps!r}.")
      self.profile_steps = steps
    if self.best_metric is not None and (not isinstance(self.best_metric, str)
                                         or not self.best_metric):
      raise ValueError(f"best_metric must be a metric name such as 'digit/accuracy'; "
                       f"received {self.best_metric!r}.")
    for field in dataclasses.fields(self):
      if field.type in (bool, "bool") and not isinstance(getattr(self, field.name), bool):
        raise ValueError(f"{field.name} must be True or False; received "
                         f"{getattr(self, field.name)!r}.")

  def _check_piecewise(self):
    self.lr_boundaries = tuple(int(b) if isinstance(b, str) else b for b in self.lr_boundaries)
    self.lr_values = tuple(float(v) if isinstance(v, str) else v for v in self.lr_values)
    for boundary in self.lr_boundaries:
      _check_int("lr_boundaries", boundary, minimum=1)
    for value in self.lr_values:
      _check_float("lr_values", value, minimum=0.0)
    if list(self.lr_boundaries) != sorted(set(self.lr_boundaries)):
      raise ValueError(f"lr_boundaries must increase; received {self.lr_boundaries!r}.")
    if self.lr_schedule == "piecewise" and (
        not self.lr_boundaries or len(self.lr_values) != len(self.lr_boundaries) + 1):
      raise ValueError(
          "lr_schedule=piecewise needs lr_boundaries and one more lr_values (the rate before "
          f"the first boundary, then after each); received lr_boundaries={self.lr_boundaries!r}"
          f", lr_values={self.lr_values!r}.")

  @property
  def aggregation_option_values(self) -> dict:
    """`aggregation_options` as a dict, checked against what the aggregation takes."""
    values = experiment_param_values(self.aggregation_options, "aggregation_options")
    allowed = [o for o in AGGREGATION_OPTIONS.get(self.aggregation, ()) if o != "seed"]
    unknown = sorted(set(values) - set(allowed))
    if unknown:
      raise ValueError(f"aggregation_options: aggregation={self.aggregation!r} takes "
                       f"{allowed or 'no options'}; received {unknown}.")
    return values

  @property
  def params(self) -> dict:
    """`experiment_params` as a dict of Python values."""
    return experiment_param_values(self.experiment_params)

  def model_settings(self) -> dict:
    """The settings that define the model: a run on the same model_dir may not change them."""
    return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
            if field.metadata.get("model")}


def experiment_param_values(text: str, flag: str = "experiment_params") -> dict:
  """Parses `key=value,key=value` into a dict; values are Python literals, else strings.

  An item ends at a comma followed by `name=` (outside brackets and quotes), so a
  value may hold commas: `heads=a:softmax:2,b:softmax:3,hidden_units=(64,64)`.
  """
  if not isinstance(text, str):
    raise ValueError(f"{flag} must be text key=value,...; received {text!r}.")
  values = {}
  for item in _split_items(text):
    key, equals, value = item.partition("=")
    key = key.strip()
    if not equals or not key.isidentifier():
      raise ValueError(f"{flag}: each item is key=value; received {item!r} in "
                       f"{text!r}.")
    if key in values:
      raise ValueError(f"{flag}: {key!r} is given twice in {text!r}.")
    try:
      values[key] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      values[key] = value.strip()
  return values


def format_params(values: dict) -> str:
  """`key=value,...` text that `experiment_param_values` reads back as `values`."""
  return ",".join(f"{key}={value!r}" for key, value in values.items())


def _split_items(text):
  items, depth, quote, start = [], 0, None, 0
  for i, char in enumerate(text):
    if quote:
      quote = None if char == quote else quote
    elif char in "'\"":
      quote = char
    elif char in "([{":
      depth += 1
    elif char in ")]}":
      depth -= 1
    elif char == "," and depth == 0 and re.match(r"\s*[A-Za-z_]\w*\s*=", text[i + 1:]):
      items.append(text[start:i])
      start = i + 1
  items.append(text[start:])
  return [item for item in items if item.strip()]


def _check_int(name, value, minimum):
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}; received {value!r}.")


def _check_float(name, value, minimum, maximum=None, exclusive=False):
  ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
        and math.isfinite(value) and (value > minimum if exclusive else value >= minimum)
        and (maximum is None or value <= maximum))
  if not ok:
    bounds = f"{'>' if exclusive else '>='} {minimum}" + (
        f" and <= {maximum}" if maximum is not None else "")
    raise ValueError(f"{name} must be a finite number {bounds}; received {value!r}.")


def lower_is_better(metric: str, goal: str = "auto") -> bool:
  """Whether smaller values of `metric` are better, for a `best_metric_goal`."""
  if goal != "auto":
    return goal == "min"
  last = metric.rsplit("/", 1)[-1]
  return last in _LOWER_IS_BETTER or last.endswith("_loss")
