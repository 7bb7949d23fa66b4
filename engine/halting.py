"""Why a training loop stopped applying steps, recorded in the compiled step.

A loop never asks the host, step by step, whether to go on: on a GPU or TPU
that is a device-to-host sync per step. Instead the step records the first
reason to stop in these variables and from then on applies nothing; the
loop runs to its end, and the host reads the record once, after the loop,
and raises (`Trainer` names the heads and the step).

Reasons: a batch failed a check (`BatchChecks`), a head fed probabilities
with `double_softmax="raise"`, or (with `nonfinite="raise"`) a head's loss,
or the gradients, became NaN or infinite; or `max_consecutive_skips` steps
in a row were skipped as not finite.
"""

import tensorflow as tf

NONE, BAD_BATCH, PROBABILITIES, NONFINITE_LOSS, NONFINITE_GRADIENTS, TOO_MANY_SKIPS = range(6)


class Halting:
  """The first stop of a loop: its step and reason, and what the checks saw then;
  and whether the next step runs the double-softmax guard, and what it saw.

  Create under the strategy's scope. `reset` before each loop, `record` in
  the step (values already reduced over replicas, so every replica writes
  the same), `read` in the report. Everything but the checks' values lives in
  one int64 vector, [step, reason, guard pending, bad heads, probability
  flags], so that a step writes two variables, not six: inside XLA every
  written variable is a kernel of its own to compile.
  """

  def __init__(self, check_rows: int, num_heads: int):
    first = tf.VariableAggregation.ONLY_FIRST_REPLICA
    self._heads = num_heads
    self.state = tf.Variable(tf.zeros([3 + 3 * num_heads], tf.int64), trainable=False,
                             name="halt_state", aggregation=first)
    self.checks = tf.Variable(tf.zeros([check_rows, 3]), trainable=False, name="halt_checks",
                              aggregation=first)

  def running(self):
    return tf.equal(self.state.read_value()[1], NONE)

  def guard_pending(self):
    return self.state.read_value()[2] > 0

  def record(self, stop, step, reason, checks, heads, guarded=None, probabilities=None):
    """Where `stop` (a bool) and none is recorded yet: this step, reason and evidence.
    Where `guarded` (a bool; None: False): the guard's `probabilities` ([heads, 2]
    bool), and the guard is no longer pending."""
    first = stop & self.running()
    state = self.state.read_value()
    as_int = lambda flags: tf.cast(tf.reshape(flags, [-1]), tf.int64)
    new = tf.concat([tf.stack([tf.cast(step, tf.int64), tf.cast(reason, tf.int64)]),
                     state[2:3], as_int(heads), state[3 + self._heads:]], axis=0)
    new = tf.where(first, new, state)
    if guarded is not None:
      new = tf.where(guarded, tf.concat([new[:2], tf.zeros([1], tf.int64), new[3:3 + self._heads],
                                         as_int(probabilities)], axis=0), new)
    self.state.assign(new)
    self.checks.assign(tf.where(first, checks, self.checks))

  def read(self):
    """The record as tensors: step, reason, checks, heads [H] bool, probabilities [H, 2]."""
    state, h = self.state.read_value(), self._heads
    return {"step": state[0], "reason": state[1], "checks": tf.identity(self.checks),
            "heads": state[3:3 + h] > 0, "probabilities": tf.reshape(state[3 + h:], [h, 2]) > 0}

  def reset(self, guard: bool = False):
    """Nothing recorded; `guard`: the next step runs the double-softmax guard."""
    self.state.assign(tf.tensor_scatter_nd_update(
        tf.zeros_like(self.state), [[2]], [tf.cast(guard, tf.int64)]))
    self.checks.assign(tf.zeros_like(self.checks))
