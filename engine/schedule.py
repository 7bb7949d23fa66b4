"""Where training loops end, and when the profiler traces.

Loops end at the last step, every `steps_per_loop` steps, at multiples of
`checkpoint_every`, `eval_every` and (with the head diagnostics)
`diagnostics_every` (so checkpoints, evaluations and diagnostic steps land
on those steps), and where profiling starts and ends.
"""

import os

from absl import logging
import tensorflow as tf


def loop_length(step: int, steps: int, config) -> int:
  """Steps in the next loop from global step `step` towards `steps`."""
  boundaries = [steps, step + config.steps_per_loop,
                next_multiple(step, config.checkpoint_every)]
  if config.eval_every:
    boundaries.append(next_multiple(step, config.eval_every))
  if config.head_diagnostics:
    boundaries.append(next_multiple(step, config.diagnostics_every))
  if config.profile_steps:
    boundaries.extend(b for b in config.profile_steps if b > step)
  return min(boundaries) - step


def next_multiple(step: int, every: int) -> int:
  return (step // every + 1) * every


def diagnosed(end_step: int, loops_run: int, config) -> bool:
  """Whether the loop ending at `end_step` runs its last step with the head
  diagnostics: at multiples of `diagnostics_every`, never in the Trainer's
  first loop (which compiles one program only)."""
  return (config.head_diagnostics and loops_run > 0
          and end_step % config.diagnostics_every == 0)


class Profiler:
  """TensorFlow's profiler over steps start+1 .. end (`Config.profile_steps`).

  Traces go to `model_dir/train/plugins/profile/<time>`, beside the training
  summaries (as Keras's TensorBoard callback puts them), where TensorBoard's
  Profile tab (the tensorboard-plugin-profile dependency) lists them as the
  run `train/<time>`.
  """

  def __init__(self, profile_steps, model_dir: str):
    self._steps = profile_steps
    self._model_dir = os.path.join(model_dir, "train")
    self._running = False

  def maybe_start(self, step: int):
    """Starts when the loop about to run from `step` is the first profiled one."""
    if not self._steps or self._running:
      return
    start, end = self._steps
    if start <= step < end:
      tf.profiler.experimental.start(self._model_dir)
      self._running = True
      logging.info("Profiling steps %d to %d into %s/plugins/profile.", step + 1, end,
                   self._model_dir)

  def maybe_stop(self, step: int, force: bool = False):
    """Stops once `step` reaches the end of the profiled steps (or when forced)."""
    if self._running and (force or step >= self._steps[1]):
      tf.profiler.experimental.stop()
      self._running = False
