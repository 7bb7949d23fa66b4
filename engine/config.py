"""Run configuration. Field names are the scripts' flag names."""

import dataclasses
from typing import Optional

from engine.distribution import STRATEGIES
from engine.precision import PRECISIONS

NONFINITE_POLICIES = ("raise", "skip")
TRAIN_METRICS = ("basic", "full")
BEST_METRIC_GOALS = ("auto", "max", "min")
_LOWER_IS_BETTER = ("loss", "nll", "ece", "mae", "mse", "rmse", "perplexity")


@dataclasses.dataclass
class Config:
  """How a Trainer runs; validated on construction.

  Attributes:
    model_dir: where checkpoints (here), summaries (`train/`, `eval/`) go.
    steps_per_loop: training steps per call of the compiled loop; summaries
      and the progress line are written once per loop.
    checkpoint_every: save a checkpoint at every multiple of this step, and
      at the end of `train`.
    eval_every: when `train` is given an eval dataset, evaluate at every
      multiple of this step (0: only at the end).
    eval_steps: batches per evaluation; None runs the eval dataset to its end.
    jit_compile: compile the step with XLA.
    seed: seeds Keras, TensorFlow and NumPy before variables are created, so
      initial weights are reproducible; None leaves the seeds alone.
    deterministic: turn on TensorFlow's op determinism (needs a seed): two
      runs, or a run and its resumption, give bitwise-identical weights.
    checkpoint_iterator: save the training input's position (shuffle state
      included) in checkpoints and resume from it (one device; see BUILD.md).
    max_checkpoints: how many checkpoints to keep.
    precision: "float32", "mixed_float16" (dynamic loss scaling) or
      "mixed_bfloat16"; call `engine.set_precision` before making layers.
    strategy: "auto", "one_device", "mirrored", "multi_worker" or "tpu".
    tpu: TPU name or address for strategy="tpu" ("" on a TPU VM).
    num_cpu_devices: split the CPU into this many logical devices (testing
      distribution without GPUs); 0 leaves it whole.
    clip_norm: clip gradients to this global norm (of the gradient summed
      over replicas); None does not clip.
    accumulation_steps: cut each replica's batch into this many micro-batches
      run one after the other; the update equals that of the whole batch.
    nonfinite: what a step whose loss or gradients are not finite does. Both
      policies leave the weights untouched; "raise" then stops with an error
      naming the heads and the step, "skip" counts it per head and goes on.
      (An overflow under mixed_float16 loss scaling is always skipped.)
    pcgrad: combine the heads' gradients on the shared trunk with PCGrad
      (Yu et al., 2020): one extra backward pass per head at every step.
    head_diagnostics: on the last step of each loop, compute each head's
      gradient norm on the shared trunk and the pairwise cosines of the
      heads' gradients (TensorBoard; negative: the heads conflict).
    train_metrics: "basic" (each head's loss and main metric, as sums inside
      the compiled step) or "full" (every metric the evaluation reports, in
      every training step: slower).
    profile_steps: (start, end): trace steps start+1 .. end with TensorFlow's
      profiler into `model_dir/plugins/profile` (TensorBoard's Profile tab).
    best_metric: an evaluation result, e.g. "digit/accuracy" or "loss"; after
      each evaluation in `train`, the model is exported to
      `model_dir/export/best/<step>` if this is its best value so far.
    best_metric_goal: "max", "min", or "auto" ("min" for losses, nll, ece,
      mae, rmse and perplexity; "max" otherwise).
  """

  model_dir: str
  steps_per_loop: int = 100
  checkpoint_every: int = 1000
  eval_every: int = 0
  eval_steps: Optional[int] = None
  jit_compile: bool = True
  seed: Optional[int] = None
  deterministic: bool = False
  checkpoint_iterator: bool = True
  max_checkpoints: int = 3
  precision: str = "float32"
  strategy: str = "auto"
  tpu: str = ""
  num_cpu_devices: int = 0
  clip_norm: Optional[float] = None
  accumulation_steps: int = 1
  nonfinite: str = "raise"
  pcgrad: bool = False
  head_diagnostics: bool = True
  train_metrics: str = "basic"
  profile_steps: Optional[tuple] = None
  best_metric: Optional[str] = None
  best_metric_goal: str = "auto"

  def __post_init__(self):
    if not isinstance(self.model_dir, str) or not self.model_dir:
      raise ValueError(f"model_dir must be a non-empty path; received {self.model_dir!r}.")
    _check_int("steps_per_loop", self.steps_per_loop, minimum=1)
    _check_int("checkpoint_every", self.checkpoint_every, minimum=1)
    _check_int("eval_every", self.eval_every, minimum=0)
    _check_int("max_checkpoints", self.max_checkpoints, minimum=1)
    if self.eval_steps is not None:
      _check_int("eval_steps", self.eval_steps, minimum=1)
    if self.seed is not None:
      _check_int("seed", self.seed, minimum=0)
    if self.deterministic and self.seed is None:
      raise ValueError("deterministic=True needs a seed (e.g. seed=0): without one the initial "
                       "weights differ from run to run.")
    if self.precision not in PRECISIONS:
      raise ValueError(f"precision must be one of {PRECISIONS}; received {self.precision!r}.")
    if self.strategy not in STRATEGIES:
      raise ValueError(f"strategy must be one of {STRATEGIES}; received {self.strategy!r}.")
    _check_int("num_cpu_devices", self.num_cpu_devices, minimum=0)
    _check_int("accumulation_steps", self.accumulation_steps, minimum=1)
    if self.clip_norm is not None and not (isinstance(self.clip_norm, (int, float))
                                           and self.clip_norm > 0):
      raise ValueError(f"clip_norm must be > 0 or None; received {self.clip_norm!r}.")
    if self.nonfinite not in NONFINITE_POLICIES:
      raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}; received "
                       f"{self.nonfinite!r}.")
    if self.train_metrics not in TRAIN_METRICS:
      raise ValueError(f"train_metrics must be one of {TRAIN_METRICS}; received "
                       f"{self.train_metrics!r}.")
    if self.strategy == "tpu" and self.precision == "mixed_float16":
      raise ValueError("precision='mixed_float16' is for GPUs; on TPUs use 'mixed_bfloat16'.")
    if self.profile_steps is not None:
      steps = tuple(self.profile_steps)
      if (len(steps) != 2 or not all(isinstance(s, int) and not isinstance(s, bool)
                                     for s in steps) or not 0 <= steps[0] < steps[1]):
        raise ValueError("profile_steps must be two integers 0 <= start < end; received "
                         f"{self.profile_steps!r}.")
      self.profile_steps = steps
    if self.best_metric_goal not in BEST_METRIC_GOALS:
      raise ValueError(f"best_metric_goal must be one of {BEST_METRIC_GOALS}; received "
                       f"{self.best_metric_goal!r}.")
    if self.best_metric is not None and (not isinstance(self.best_metric, str)
                                         or not self.best_metric):
      raise ValueError(f"best_metric must be a metric name such as 'digit/accuracy'; "
                       f"received {self.best_metric!r}.")
    for name in ("jit_compile", "pcgrad", "head_diagnostics", "deterministic",
                 "checkpoint_iterator"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"{name} must be True or False; received {getattr(self, name)!r}.")


def _check_int(name, value, minimum):
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}; received {value!r}.")


def lower_is_better(metric: str, goal: str = "auto") -> bool:
  """Whether smaller values of `metric` are better, for a `best_metric_goal`."""
  if goal != "auto":
    return goal == "min"
  last = metric.rsplit("/", 1)[-1]
  return last in _LOWER_IS_BETTER or last.endswith("_loss")
