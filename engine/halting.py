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
  """The first stop of a loop: its step and reason, and what the checks saw then.

  Create under the strategy's scope. `reset` before each loop, `record` in
  the step (values already reduced over replicas, so every replica writes
  the same), `read` on the host.
  """

  def __init__(self, check_rows: int, num_heads: int):
    first = tf.VariableAggregation.ONLY_FIRST_REPLICA
    def variable(value, name):
      return tf.Variable(value, trainable=False, name=name, aggregation=first)
    self.step = variable(tf.constant(0, tf.int64), "halt_step")
    self.reason = variable(tf.constant(NONE, tf.int64), "halt_reason")
    self.checks = variable(tf.zeros([check_rows, 3]), "halt_checks")
    self.heads = variable(tf.zeros([num_heads], tf.bool), "halt_heads")
    self.probabilities = variable(tf.zeros([num_heads, 2], tf.bool), "halt_probabilities")

  @property
  def variables(self):
    return [self.step, self.reason, self.checks, self.heads, self.probabilities]

  def running(self):
    return tf.equal(self.reason, NONE)

  def record(self, stop, step, reason, checks, heads):
    """Where `stop` (a bool) and none is recorded yet: this step, reason and evidence."""
    first = stop & self.running()
    self.reason.assign(tf.where(first, tf.cast(reason, tf.int64), self.reason))
    self.checks.assign(tf.where(first, checks, self.checks))
    self.heads.assign(tf.where(first, heads, self.heads))
    self.step.assign(tf.where(first, step, self.step))

  def reset(self):
    for variable in self.variables:
      variable.assign(tf.zeros_like(variable))
