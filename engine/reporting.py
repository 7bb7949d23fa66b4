"""What the host learns after each loop, in one call, and the errors raised from it.

`report` reads the loop's results, the counters and summaries, and the
halting record, then resets the loop's state; a training loop's
`tf.function` ends with it and returns it (`engine.loop`): one call and one
transfer from the device per loop, nothing per metric variable. The
Trainer writes summaries and the progress line from it, and `raise_if_halted`
turns the halting record into the error a user reads: the head (or
feature), what was expected, what came, and the step.
"""

import numpy as np
import tensorflow as tf

from engine import halting as halting_lib
from heads import guard as guard_lib


def report(trainer, full: bool) -> dict:
  """The tensors the host needs after a loop; the loop's state is reset after reading."""
  t = trainer
  t.trace_counts["report"] += 1
  gradient_norm, norm_steps = t.measurements.gradient_norm()
  scalars = {**t.balancing.summaries(t.global_step),
             "learning_rate": tf.cast(t.optimizer.learning_rate, tf.float32),
             "gradient_norm": gradient_norm,
             "gradient_norm_steps": norm_steps,
             "examples": t.measurements.examples(),
             "skipped_steps": tf.cast(t.skipped_steps, tf.float32)}
  for i, head in enumerate(t.heads):
    scalars[f"{head.name}/nonfinite_steps"] = tf.cast(t.nonfinite_losses[i], tf.float32)
  if t.update.loss_scaled:
    scalars["loss_scale"] = tf.cast(t.optimizer.dynamic_scale, tf.float32)
  values = {"results": t.measurements.results(t.global_step, full), "scalars": scalars,
            "step": tf.identity(t.global_step),
            "halting": t.halting.read()}
  if full:  # The reliability diagrams' bins: the heads' metrics are reset below.
    values["reliability"] = t.pictures.reliability_sums()
  with tf.control_dependencies(tf.nest.flatten(values)):
    # The heads' Keras metrics change in training only with the full set;
    # `evaluate` resets them before it starts.
    trainer.measurements.reset(with_metrics=full)
    trainer.halting.reset()
  return values


def reset(trainer, guard: bool):
  """Before a `train` or `evaluate` call: zeroes the sums, metrics, pictures and
  halting record; `guard`: the next step runs the double-softmax guard."""
  trainer.measurements.reset()
  trainer.halting.reset(guard)
  for metric in trainer.pictures.metrics:  # Written after `report`, so reset here only.
    metric.reset_state()


def to_numpy(values) -> dict:
  """The report as NumPy values, results and scalars as floats."""
  values = tf.nest.map_structure(lambda tensor: tensor.numpy(), values)
  for key in ("results", "scalars"):
    values[key] = {name: float(value) for name, value in values[key].items()}
  return values


def train_scalars(values, steps_done: int, seconds: float, diagnosed: bool) -> dict:
  """A training loop's TensorBoard scalars: results, counters, speed, and the per-head
  diagnostics if the loop's last step computed them; the gradient norm if a step
  measured it."""
  scalars = {**values["results"], **values["scalars"],
             "steps_per_second": steps_done / seconds,
             "examples_per_second": values["scalars"]["examples"] / seconds}
  if not scalars.pop("gradient_norm_steps"):  # No step of the loop measured it.
    del scalars["gradient_norm"]
  return {key.removeprefix("diagnostics/"): value for key, value in scalars.items()
          if diagnosed or not key.startswith("diagnostics/")}


def warn_about_probabilities(heads, flags):
  """Warns once per head with double_softmax="warn" whose input or logits looked normalised."""
  for head, row in zip(heads, flags):
    for what, flagged in zip(guard_lib.WHAT, row):
      if flagged and getattr(head, "double_softmax", "ignore") == "warn":
        head.report(what)
        break


def raise_if_halted(trainer, values, labels_spec, evaluation=False):
  """Raises the error the halting record stands for, if any."""
  record = values["halting"]
  reason = record["reason"]
  if reason == halting_lib.NONE:
    return
  at = (f"In the evaluation at step {record['step']}" if evaluation
        else f"At step {record['step']}")
  stopped = ("" if evaluation else
             f" The step was not applied and training stopped at step {trainer.step} (saved).")
  if reason == halting_lib.BAD_BATCH:
    row = int(np.flatnonzero(record["checks"][:, 0])[0])
    count, low, high = record["checks"][row]
    detail = trainer.checks.message(row, count, low, high, labels_spec)
    raise ValueError(f"{at}, a batch failed a check: {detail}.{stopped}")
  if reason == halting_lib.PROBABILITIES:
    for head, row in zip(trainer.heads, record["probabilities"]):
      for what, flagged in zip(guard_lib.WHAT, row):
        if flagged and getattr(head, "double_softmax", "") == "raise":
          head.report(what)  # Raises, naming the head.
  bad = [head.name for head, flag in zip(trainer.heads, record["heads"]) if flag]
  what = (f"the loss of head(s) {bad}" if bad
          else "the gradients (every head's loss was finite)")
  if reason == halting_lib.TOO_MANY_SKIPS:
    raise ValueError(
        f"{at}, {trainer.config.max_consecutive_skips} steps in a row had been skipped as NaN "
        f"or infinite (the last: {what}). Training stopped at step {trainer.step} (saved). "
        "Look at the data, lower the learning rate or clip gradients (--clip_norm); "
        "--max_consecutive_skips sets the limit.")
  raise ValueError(
      f"{at}, {what} became NaN or infinite.{stopped} Look at that batch, or lower the "
      "learning rate; --nonfinite=skip skips such steps instead.")
