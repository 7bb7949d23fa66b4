"""Run configuration. Field names are the scripts' flag names."""

import dataclasses
from typing import Optional


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
    max_checkpoints: how many checkpoints to keep.
  """

  model_dir: str
  steps_per_loop: int = 100
  checkpoint_every: int = 1000
  eval_every: int = 0
  eval_steps: Optional[int] = None
  jit_compile: bool = True
  seed: Optional[int] = None
  max_checkpoints: int = 3

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
    if not isinstance(self.jit_compile, bool):
      raise ValueError(f"jit_compile must be True or False; received {self.jit_compile!r}.")


def _check_int(name, value, minimum):
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}; received {value!r}.")
